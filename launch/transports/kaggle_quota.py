"""Kaggle's weekly GPU quota: about 30 hours (it varies by account), reset every Saturday 00:00 UTC; an hour
of a T4 x2 or P100 session costs an hour. Kaggle's API does not report it, so ``launch kaggle`` keeps a ledger
on this machine: one file per kernel it ran on a GPU, with the hours that kernel's session lasted as the
kernel measured them (or, for a kernel whose record never came back, from its push to its end as the launcher
saw them: an upper bound). Sessions started elsewhere (the web editor, another machine) are not in it.

``launch quota`` shows this week's ledger; every ``launch kaggle JOB`` (and its ``--dry-run``) says what the launch is
expected to use -- the median of the job's earlier runs in the ledger -- beside the most it could use, and Kaggle's own
figures where Kaggle answers its (undocumented) quota call; ``--quota-hours H`` refuses a launch that could take the
week past H, before anything is pushed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
from dataclasses import dataclass
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


@dataclass
class Expected:
    """What a launch is expected to use, and what that expectation rests on."""

    hours: float
    basis: str


def record_kernel(owner: str, kernel: dict, run_id: str, job: str, accelerator: str, kernel_record: dict | None) -> float:
    """Write a finished GPU kernel's hours into the ledger (once per kernel); returns them."""
    if kernel_record and kernel_record.get("seconds") is not None:
        hours, started, measured = kernel_record["seconds"] / 3600, kernel_record.get("started_at") or kernel["pushed_at"], "kernel"
    else:
        began = dt.datetime.fromisoformat(kernel["pushed_at"])
        ended = dt.datetime.fromisoformat(kernel.get("finished_at") or kernel["pushed_at"])
        hours, started, measured = (ended - began).total_seconds() / 3600, kernel["pushed_at"], "launcher"
    entry = {"kernel": f"{owner}/{kernel['slug']}", "run_id": run_id, "job": job, "part": kernel.get("part", 0), "accelerator": accelerator,
             "hours": round(hours, 4),
             "started_at": started, "measured_by": measured}
    atomic_write_text(ledger(owner) / f"{kernel['slug']}.json", json.dumps(entry, sort_keys=True) + "\n")
    return hours


def entries(owner: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(ledger(owner).glob("*.json"))] if ledger(owner).is_dir() else []


def this_week(owner: str, now: dt.datetime | None = None) -> list[dict]:
    since = week_start(now)
    return [e for e in entries(owner) if dt.datetime.fromisoformat(e["started_at"]) >= since]


def expected_hours(owner: str, job: str, kernels: int, worst: float) -> Expected | None:
    """The median GPU hours of the job's earlier runs in the ledger (every kernel of a run, continuations included),
    per kernel of a fan-out times the kernels, never above the worst case; None without an earlier run to go by."""
    runs: dict[str, list[dict]] = {}
    for entry in entries(owner):
        if entry.get("job") == job:
            runs.setdefault(entry["run_id"], []).append(entry)
    if not runs:
        return None
    per_kernel = statistics.median(sum(e["hours"] for e in of_run) / len({e.get("part", 0) for e in of_run}) for of_run in runs.values())
    return Expected(min(per_kernel * kernels, worst), f"the median of {len(runs)} earlier {job} run{'s' if len(runs) > 1 else ''}")


def used_hours(owner: str) -> float:
    return sum(e["hours"] for e in this_week(owner))


def usage_line(owner: str, planned: float | None, limit: float | None, expected: Expected | None = None, job: str = "",
               kaggle: tuple[float, float] | None = None) -> str:
    """This week's GPU hours and, for a launch, what it is expected to use beside the most it could (every kernel to its
    budget, every continuation); Kaggle's own figures (used, allowed) where it answered."""
    used = used_hours(owner)
    since = week_start().strftime("%a %Y-%m-%d %H:%M UTC")
    text = f"GPU quota: {used:.2f} h used this week by launch kaggle (since {since})"
    if planned == 0:
        text += "; this launch: CPU kernels, no GPU quota"
    elif planned is not None:
        guess = f"expected about {expected.hours:.2f} h ({expected.basis})" if expected else \
            f"expected: no estimate yet (no earlier {job} run in the ledger)"
        text += f"; this launch {guess}, worst case {planned:.2f} h (every kernel to its budget, every continuation)"
        text += f"; with this week's, at most {used + planned:.2f} h"
    text += f" of --quota-hours {limit:g}" if limit is not None else f" (Kaggle allows about {WEEKLY_HOURS:g} h a week)"
    if kaggle is not None:
        text += f"; Kaggle reports {kaggle[0]:.2f} h used of {kaggle[1]:.2f} h this week"
    return text


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
    print(f"{owner}: {used:.2f} h of GPU used this week by launch kaggle ({len(entries)} kernel{'' if len(entries) == 1 else 's'} since "
          f"{week_start().strftime('%a %Y-%m-%d %H:%M UTC')}); {max(args.quota_hours - used, 0):.2f} h left of {args.quota_hours:g}. "
          "Sessions started outside launch kaggle are not counted.")
    return 0
