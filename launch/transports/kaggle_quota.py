"""Kaggle's weekly GPU quota: about 30 hours (it varies by account), reset every Saturday 00:00 UTC; an hour
of a T4 x2 or P100 session costs an hour. Kaggle's API does not report it, so ``launch kaggle`` keeps a ledger
on this machine: one file per kernel it ran on a GPU, with the hours that kernel's session lasted as the
kernel measured them (or, for a kernel whose record never came back, from its push to its end as the launcher
saw them: an upper bound). Sessions started elsewhere (the web editor, another machine) are not in it.

``launch quota`` shows this week's ledger; ``launch kaggle JOB --dry-run`` adds what a launch would use at
most; ``--quota-hours H`` refuses a launch that could take the week past H, before anything is pushed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from data_shards.files import atomic_write_text, cache_root

WEEKLY_HOURS = 30.0  # Kaggle's usual weekly GPU allowance (about; it varies)


def week_start(now: dt.datetime | None = None) -> dt.datetime:
    """The last Saturday 00:00 UTC, when Kaggle's quota resets."""
    now = now or dt.datetime.now(dt.timezone.utc)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - dt.timedelta(days=(midnight.weekday() - 5) % 7)


def ledger(owner: str) -> Path:
    return cache_root() / "kaggle" / owner / "gpu-usage"


def record_kernel(owner: str, kernel: dict, run_id: str, accelerator: str, kernel_record: dict | None) -> float:
    """Write a finished GPU kernel's hours into the ledger (once per kernel); returns them."""
    if kernel_record and kernel_record.get("seconds") is not None:
        hours, started, measured = kernel_record["seconds"] / 3600, kernel_record.get("started_at") or kernel["pushed_at"], "kernel"
    else:
        began = dt.datetime.fromisoformat(kernel["pushed_at"])
        ended = dt.datetime.fromisoformat(kernel.get("finished_at") or kernel["pushed_at"])
        hours, started, measured = (ended - began).total_seconds() / 3600, kernel["pushed_at"], "launcher"
    entry = {"kernel": f"{owner}/{kernel['slug']}", "run_id": run_id, "accelerator": accelerator, "hours": round(hours, 4),
             "started_at": started, "measured_by": measured}
    atomic_write_text(ledger(owner) / f"{kernel['slug']}.json", json.dumps(entry, sort_keys=True) + "\n")
    return hours


def this_week(owner: str, now: dt.datetime | None = None) -> list[dict]:
    since = week_start(now)
    entries = [json.loads(path.read_text()) for path in sorted(ledger(owner).glob("*.json"))] if ledger(owner).is_dir() else []
    return [e for e in entries if dt.datetime.fromisoformat(e["started_at"]) >= since]


def used_hours(owner: str) -> float:
    return sum(e["hours"] for e in this_week(owner))


def usage_line(owner: str, planned: float | None, limit: float | None) -> str:
    used = used_hours(owner)
    since = week_start().strftime("%a %Y-%m-%d %H:%M UTC")
    text = f"GPU quota: {used:.2f} h used this week by launch kaggle (since {since})"
    if planned is not None:
        text += f"; this launch at most {planned:.2f} h; together at most {used + planned:.2f} h"
    return text + (f" of --quota-hours {limit:g}" if limit is not None else f" (Kaggle allows about {WEEKLY_HOURS:g} h a week)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", help="Kaggle user whose ledger to show (default: your username, from the kaggle credentials)")
    parser.add_argument("--quota-hours", type=float, default=WEEKLY_HOURS, help=f"your weekly allowance (default {WEEKLY_HOURS:g})")


def run(args: argparse.Namespace) -> int:
    """``launch quota``: this week's GPU hours, kernel by kernel, from the ledger."""
    owner = args.owner
    if owner is None:
        from launch.transports.kaggle_api import KaggleService

        owner = KaggleService().owner
    entries = this_week(owner)
    for e in entries:
        print(f"  {e['started_at']}  {e['hours']:7.2f} h  {e['accelerator']:<5} {e['kernel']}  (run {e['run_id']}; measured by the "
              f"{e['measured_by']})")
    used = sum(e["hours"] for e in entries)
    print(f"{owner}: {used:.2f} h of GPU used this week by launch kaggle ({len(entries)} kernels since "
          f"{week_start().strftime('%a %Y-%m-%d %H:%M UTC')}); {max(args.quota_hours - used, 0):.2f} h left of {args.quota_hours:g}. "
          "Sessions started outside launch kaggle are not counted.")
    return 0
