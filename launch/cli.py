"""``launch BACKEND JOB [backend options] [job options]``."""
from __future__ import annotations

import argparse
import sys

from jobs import JOBS
from launch import bundle, kaggle, local, ray, runs, ssh, transfer
from launch.bundle import BundleError
from launch.local import LaunchError
from sync import SyncError

BACKENDS = {"local": local, "kaggle": kaggle, "ssh": ssh, "ray": ray}
BACKEND_HELP = {"local": "this machine, under accelerate launch (the default: one CPU process)",
                "kaggle": "a Kaggle kernel (T4 x2 by default); the run directory comes back to ./runs",
                "ssh": "machines over SSH (--host, repeat for nodes), one accelerate launch per node; the run comes back to ./runs",
                "ray": "a Ray cluster through Ray Jobs (--address http://HEAD:8265 --storage URL); the run comes back to ./runs"}
COMMANDS = {
    "sync": (transfer.add_sync_arguments, transfer.run_sync,
             "copy a run or shard set between storage URLs, incrementally and verified"),
    "pull": (transfer.add_pull_arguments, runs.run_pull, "bring a remote run (or a run directory URL) into ./runs"),
    "status": (runs.add_arguments, runs.run_status, "where a run stands (asks its backend)"),
    "logs": (runs.add_arguments, runs.run_logs, "a run's logs (from its backend)"),
    "stop": (runs.add_arguments, runs.run_stop, "stop a running ssh or ray run"),
    "bundle": (bundle.add_arguments, bundle.run, "show (or write) the code bundle remote backends carry; uploads nothing"),
}
REPORT_HELP = "report.md over runs from any backend: metrics both ways, plots, measured params/FLOPs/latency (--help: its options)"


def build_parser() -> argparse.ArgumentParser:
    jobs_text = "\n".join(f"  {name:<18} {spec.summary}" for name, spec in JOBS.items())
    backends_text = "\n".join(f"  {name:<18} {BACKEND_HELP[name]}" for name in BACKENDS)
    helps = {**{name: help_text for name, (_, _, help_text) in COMMANDS.items()}, "report": REPORT_HELP}
    commands_text = "\n".join(f"  {name:<18} {help_text}" for name, help_text in helps.items())
    parser = argparse.ArgumentParser(
        prog="launch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run StreamApprox jobs on any compute.",
        epilog=f"backends:\n{backends_text}\n\njobs:\n{jobs_text}\n\ncommands:\n{commands_text}\n\n"
        "Job options (e.g. --set model.depth=2, --resume RUN, --time-budget S) pass through to the job.\n"
        "Example: launch local train_mlp --set train.epochs=5",
    )
    sub = parser.add_subparsers(dest="backend", required=True, metavar="BACKEND|COMMAND")
    for name, module in BACKENDS.items():
        backend = sub.add_parser(name, help=BACKEND_HELP[name], description=BACKEND_HELP[name],
                                 epilog=f"jobs:\n{jobs_text}", formatter_class=argparse.RawDescriptionHelpFormatter)
        backend.add_argument("job", choices=sorted(JOBS), metavar="JOB", help="one of: " + ", ".join(JOBS))
        module.add_arguments(backend)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    sub.add_parser("report", help=REPORT_HELP, add_help=False)  # listed here; main() hands its arguments to jobs.report
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # every option belongs to the report job, --help included
        return local.run_report(argv[1:])
    parser = build_parser()
    args, job_args = parser.parse_known_args(argv)
    try:
        if args.backend in COMMANDS:
            if job_args:
                parser.error(f"unrecognized arguments: {' '.join(job_args)}")
            return COMMANDS[args.backend][1](args)
        return BACKENDS[args.backend].run(args.job, JOBS[args.job], job_args, args)
    except (LaunchError, SyncError, BundleError) as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
