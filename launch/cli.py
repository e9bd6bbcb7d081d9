"""``launch BACKEND JOB [backend options] [job options]``."""
from __future__ import annotations

import argparse
import sys

from jobs import JOBS
from launch import bundle, kaggle, kaggle_quota, local, ray, runs, ssh, transfer
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
    "quota": (kaggle_quota.add_arguments, kaggle_quota.run, "this week's Kaggle GPU hours used by launch kaggle (Kaggle's API does not say)"),
}
# Commands that are whole programs of their own (every option theirs, --help included), run in their own process.
PROGRAMS = {
    "report": ("jobs.report", "report.md over runs from any backend: metrics both ways, plots, measured params/FLOPs/latency "
                              "(--help: its options)"),
    "serve": ("search.serve", "the search service over an index (--index DIR|URL): /search, /videos/{id}, /health, /metrics, "
                              "/docs and a web page (--help: its options)"),
}


def build_parser() -> argparse.ArgumentParser:
    jobs_text = "\n".join(f"  {name:<18} {spec.summary}" for name, spec in JOBS.items())
    backends_text = "\n".join(f"  {name:<18} {BACKEND_HELP[name]}" for name in BACKENDS)
    helps = {**{name: help_text for name, (_, _, help_text) in COMMANDS.items()},
             **{name: help_text for name, (_, help_text) in PROGRAMS.items()}}
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
        # no abbreviations: a job's own option (index --run) must never be taken for a backend's (--runs-dir)
        backend = sub.add_parser(name, help=BACKEND_HELP[name], description=BACKEND_HELP[name], allow_abbrev=False,
                                 epilog=f"jobs:\n{jobs_text}", formatter_class=argparse.RawDescriptionHelpFormatter)
        backend.add_argument("job", type=lambda name: name.replace("-", "_"), choices=sorted(JOBS), metavar="JOB",
                             help="one of: " + ", ".join(JOBS) + " (- and _ alike: evaluate-search)")
        module.add_arguments(backend)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    for name, (_, help_text) in PROGRAMS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here; main() hands their arguments over
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in PROGRAMS:
        return local.run_program(PROGRAMS[argv[0]][0], argv[1:])
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
