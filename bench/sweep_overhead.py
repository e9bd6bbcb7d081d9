"""Sweep overhead: the wall time of N trials run by ``jobs.sweep`` one at a time (Ray Tune,
``--max-concurrent 1``, no early stopping) against the same N trainings as sequential processes
(``python -m jobs.train_mlp``, one after the other), measured side by side in one run: like for like,
each trial and each process has every core to itself, so the ratio is what Ray/Tune costs.
Target: ratio <= 1.3 at N = 8 on CPU. The last line is PASS or FAIL; exit 1 on FAIL.

    .venv/bin/python bench/sweep_overhead.py [--trials 8] [--epochs 4] [--rounds 2] [--shared]

Each side is timed ``--rounds`` times, the order alternating, and the fastest of each is judged: on a
shared machine other work only ever slows a side down. Both sides train the same configs for the same
epochs on the same synthetic shards; the sequential
side skips the test evaluation, the sweep evaluates its winner once (included in its time).
``--shared`` also times the default sweep (trials run concurrently, sharing the cores), for
information only: concurrency against sequential processes is not a measure of overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
SHARDS = "synthetic://msrvtt?train=3000&val=500&test=500"
TARGET = 1.3


def timed(command: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2,
                        help="each side timed this many times, the order alternating; the fastest of each is judged (a busy machine "
                        "only ever slows a side down)")
    parser.add_argument("--shared", action="store_true", help="also time the default sweep (concurrent trials), not judged")
    args = parser.parse_args()
    temperatures = [float(t) for t in np.geomspace(0.02, 0.2, args.trials)]
    fixed = {"train.epochs": args.epochs, "model.hidden": [512, 512], "data.batch_size": 256, "data.shards": SHARDS,
             "loss.learn_temperature": False, "train.evaluate_test": False}
    cpus = os.cpu_count()
    print(f"{args.trials} trials x {args.epochs} epochs, MLP [512, 512], {SHARDS}, {cpus} CPUs; load average at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    times: dict[str, list[float]] = {"sequential": [], "sweep": []}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(yaml.safe_dump({"preset": "train_mlp", "set": fixed, "space": {"loss.temperature": f"grid({temperatures})"}}))
        sets = [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in fixed.items()]
        # Shards generated once, outside both timings.
        timed([sys.executable, "-c", f"from data_shards import open_shards; open_shards({SHARDS!r})"], work)
        sweep = [sys.executable, "-m", "jobs.sweep", "--space", str(space), "--num-samples", "1", "--scheduler", "none"]

        def sequential(run: int) -> float:
            return sum(timed([sys.executable, "-m", "jobs.train_mlp", "--set", *sets, f"loss.temperature={t}",
                              "--run-dir", str(work / f"seq{run}" / str(i))], work) for i, t in enumerate(temperatures))

        def one_at_a_time(run: int) -> float:
            seconds = timed([*sweep, "--max-concurrent", "1", "--run-dir", str(work / f"sweep{run}")], work)
            check_trials(work / f"sweep{run}", args.trials, args.epochs)
            return seconds

        for run in range(args.rounds):
            for side in (["sequential", "sweep"] if run % 2 == 0 else ["sweep", "sequential"]):
                times[side].append((sequential if side == "sequential" else one_at_a_time)(run))
                print(f"  round {run + 1}: {side} {times[side][-1]:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
        if args.shared:
            shared = timed([*sweep, "--run-dir", str(work / "sweep-shared")], work)
            check_trials(work / "sweep-shared", args.trials, args.epochs)

    best_sequential, best_sweep = min(times["sequential"]), min(times["sweep"])
    ratio = best_sweep / best_sequential
    print(f"  sequential processes (python -m jobs.train_mlp, one at a time, all {cpus} CPUs each): {best_sequential:7.1f} s "
          f"({best_sequential / args.trials:.1f} s a trial)")
    print(f"  sweep --max-concurrent 1 (one trial at a time, all {cpus} CPUs each):            {best_sweep:7.1f} s "
          f"({best_sweep / args.trials:.1f} s a trial, {(best_sweep - best_sequential) / args.trials:+.1f} s)")
    if args.shared:
        print(f"  (not judged) sweep, default (concurrent trials share the CPUs): {shared:7.1f} s, {shared / best_sequential:.2f}x sequential")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"sweep --max-concurrent 1 / sequential = {best_sweep:.1f} s / {best_sequential:.1f} s = {ratio:.2f} "
          f"(fastest of {args.rounds}; target <= {TARGET} at N = 8): {verdict}")
    return 0 if verdict == "PASS" else 1


def check_trials(run: Path, trials: int, epochs: int) -> None:
    rows = json.loads((run / "trials.json").read_text())
    if len(rows) != trials or any(row["epochs_run"] != epochs for row in rows):
        sys.exit(f"{run}: expected {trials} trials of {epochs} epochs, got {[row['epochs_run'] for row in rows]}")


if __name__ == "__main__":
    sys.exit(main())
