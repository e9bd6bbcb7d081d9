"""``launch sync SRC DST`` and ``launch pull RUN``: the sync engine with the run-directory policy.

A run directory (it has ``run.json``) moves best + last checkpoint, metrics and run.json (for a
sweep: its trials table, plot and best/ run) unless ``--only`` says otherwise; any other tree (a
shard set) moves whole.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import PurePosixPath

from sync import SyncError, sync
from sync.engine import include

RUN_PARTS = {
    "best": ["checkpoints/best.pt", "best/*"],  # a sweep's best/ is its winning run, whole
    "last": ["checkpoints/last.pt"],
    "metrics": ["metrics.jsonl", "tensorboard/*", "eval/*", "trials.csv", "trials.json", "*.png", "space.yaml"],
    "all": ["*"],  # a sweep's tune/ (every trial's state, what --resume needs) moves only with this
}
DEFAULT_RUN_PARTS = ("best", "last", "metrics")


def parts(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in RUN_PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"--only takes {', '.join(RUN_PARTS)} (comma-separated), got {text!r}")
    return chosen


def run_policy(only: list[str] | None):
    def select(entries):
        if "run.json" not in entries and only is None:
            return entries  # not a run directory: everything
        patterns = ["run.json"] + [p for name in (only or DEFAULT_RUN_PARTS) for p in RUN_PARTS[name]]
        return include(patterns)(entries)

    return select


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", type=parts, metavar="PARTS",
                        help="for run directories: best,last,metrics or all (default: best,last,metrics + run.json)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS, or AWS_ENDPOINT_URL)")
    parser.add_argument("--dry-run", action="store_true", help="print what would move; move nothing")


def add_sync_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="path, file://, s3://BUCKET/PREFIX, kaggle://OWNER/KERNEL, kaggle-dataset://OWNER/SLUG")
    parser.add_argument("destination", metavar="DST", help="path, file:// or s3://BUCKET/PREFIX")
    parser.add_argument("--delete", action="store_true", help="remove destination files the source does not have (within --only)")
    add_common(parser)


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run started by a remote backend (its directory or run id), "
                        "or a run directory URL, e.g. s3://bucket/runs/<run-id>")
    parser.add_argument("--runs-dir", default="runs", help="local parent directory (default: ./runs)")
    add_common(parser)


def _report(report) -> int:
    print(report.summary())
    if report.dry_run:
        for rel in report.copied:
            print(f"  copy   {rel}")
        for rel in report.deleted:
            print(f"  delete {rel}")
    return 0


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)  # no "found credentials in ..." chatter


def run_sync(args: argparse.Namespace) -> int:
    _logging()
    report = sync(args.source, args.destination, select=run_policy(args.only), delete=args.delete,
                  dry_run=args.dry_run, endpoint_url=args.endpoint_url)
    return _report(report)


def run_pull(args: argparse.Namespace) -> int:
    _logging()
    name = PurePosixPath(args.run.rstrip("/").split("://", 1)[-1]).name
    if not name:
        raise SyncError(f"{args.run}: cannot tell the run's name from this URL")
    report = sync(args.run, f"{args.runs_dir}/{name}", select=run_policy(args.only), dry_run=args.dry_run,
                  endpoint_url=args.endpoint_url)
    return _report(report)
