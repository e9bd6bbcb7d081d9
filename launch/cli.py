"""``launch BACKEND JOB [backend options] [job options]`` and ``launch COMMAND ...``: the parser, and every error as
one line with the exit code the table in ``launch --help`` gives it."""
from __future__ import annotations

import argparse
import sys

from jobs import JOBS
from launch import bundle, driver, manage, transfer
from launch.backends import registry
from launch.bundle import BundleError
from launch.compute.unit import run_supervised
from launch.errors import LaunchError, exit_code_table
from launch.transports import kaggle_quota
from sync import SyncError

COMMANDS = {
    "status": (manage.add_arguments, manage.run_status, "where a run stands (asks the backend that runs it)"),
    "logs": (manage.add_logs_arguments, manage.run_logs, "a run's logs, from its backend (--follow: as they grow)"),
    "stop": (manage.add_arguments, manage.run_stop, "stop a run's running units"),
    "pull": (transfer.add_pull_arguments, manage.run_pull, "bring a run back into ./runs (or a run directory URL)"),
    "sync": (transfer.add_sync_arguments, transfer.run_sync, "copy a run or shard set between storage URLs, incrementally and verified"),
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
    backends = registry()
    jobs_text = "\n".join(f"  {name:<18} {spec.help}" for name, spec in JOBS.items())
    backends_text = "\n".join(f"  {name:<18} {backend.help}" for name, backend in backends.items())
    helps = {**{name: help_text for name, (_, _, help_text) in COMMANDS.items()},
             **{name: help_text for name, (_, help_text) in PROGRAMS.items()}}
    commands_text = "\n".join(f"  {name:<18} {help_text}" for name, help_text in helps.items())
    parser = argparse.ArgumentParser(
        prog="launch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run StreamApprox jobs on any compute; every backend runs the same lifecycle and makes the same run directory.",
        epilog=f"backends:\n{backends_text}\n\njobs:\n{jobs_text}\n\ncommands:\n{commands_text}\n\nexit codes:\n{exit_code_table()}\n\n"
        "Job options (e.g. --set model.depth=2, --run-dir DIR, --resume RUN, --time-budget S) pass through to the job;\n"
        "--resume RUN continues a run on any backend, whichever made it.\n"
        "Example: launch local train_mlp --set train.epochs=5",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="BACKEND|COMMAND")
    for name, backend in backends.items():
        # no abbreviations: a job's own option (index --run) must never be taken for a backend's (--runs-dir)
        parsed = sub.add_parser(name, help=backend.help, description=backend.help, allow_abbrev=False,
                                epilog=f"jobs:\n{jobs_text}\n\nexit codes:\n{exit_code_table()}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        parsed.add_argument("job", type=lambda name: name.replace("-", "_"), choices=sorted(JOBS), metavar="JOB",
                            help="one of: " + ", ".join(JOBS) + " (- and _ alike: evaluate-search)")
        backend.add_arguments(parsed)
        driver.add_arguments(parsed)
        if backend.sends_code:
            parsed.add_argument("--max-bundle-mb", type=float, default=bundle.DEFAULT_MAX_MB, help="code bundle size guard")
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    for name, (_, help_text) in PROGRAMS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed here; main() hands their arguments over
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in PROGRAMS:  # programs load models, which the launcher never imports: their own process
        return run_supervised([sys.executable, "-m", PROGRAMS[argv[0]][0], *argv[1:]])
    parser = build_parser()
    args, job_args = parser.parse_known_args(argv)
    try:
        if args.command in COMMANDS:
            if job_args:
                parser.error(f"unrecognized arguments: {' '.join(job_args)}")
            return COMMANDS[args.command][1](args)
        return driver.launch(args.command, args.job, job_args, args)
    except LaunchError as exc:
        if not exc.said:
            print(f"launch: error: {exc}", file=sys.stderr)
        return exc.code
    except (SyncError, BundleError) as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return LaunchError.code


if __name__ == "__main__":
    sys.exit(main())
