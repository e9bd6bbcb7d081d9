"""``launch BACKEND JOB [backend options] [job options]``."""
from __future__ import annotations

import argparse
import sys

from jobs import JOBS
from launch import local
from launch.local import LaunchError

BACKENDS = {"local": local}
BACKEND_HELP = {"local": "this machine, under accelerate launch (the default: one CPU process)"}


def build_parser() -> argparse.ArgumentParser:
    jobs_text = "\n".join(f"  {name:<18} {spec.summary}" for name, spec in JOBS.items())
    backends_text = "\n".join(f"  {name:<18} {BACKEND_HELP[name]}" for name in BACKENDS)
    parser = argparse.ArgumentParser(
        prog="launch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run StreamApprox jobs on any compute.",
        epilog=f"backends:\n{backends_text}\n\njobs:\n{jobs_text}\n\n"
        "Job options (e.g. --set model.depth=2, --resume RUN, --time-budget S) pass through to the job.\n"
        "Example: launch local train_mlp --set train.epochs=5",
    )
    sub = parser.add_subparsers(dest="backend", required=True, metavar="BACKEND")
    for name, module in BACKENDS.items():
        backend = sub.add_parser(name, help=BACKEND_HELP[name], description=BACKEND_HELP[name],
                                 epilog=f"jobs:\n{jobs_text}", formatter_class=argparse.RawDescriptionHelpFormatter)
        backend.add_argument("job", choices=sorted(JOBS), metavar="JOB", help="one of: " + ", ".join(JOBS))
        module.add_arguments(backend)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, job_args = parser.parse_known_args(argv)
    try:
        return BACKENDS[args.backend].run(args.job, JOBS[args.job], job_args, args)
    except LaunchError as exc:
        print(f"launch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
