"""Sweep overhead: the wall time of N trials run by ``jobs.sweep`` (Ray Tune, no early stopping)
against N sequential trainings of the same configs (``python -m jobs.train_mlp``, one after the
other), measured side by side in one run. Target: ratio <= 1.3 at N = 8 on CPU.

    .venv/bin/python bench/sweep_overhead.py [--trials 8] [--epochs 4]

Both sides train the same configs for the same epochs on the same synthetic shards; the sequential
side skips the test evaluation, the sweep evaluates its winner once (included in its time).
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


def timed(command: list[str], cwd: Path) -> float:
    began = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    temperatures = [float(t) for t in np.geomspace(0.02, 0.2, args.trials)]
    fixed = {"train.epochs": args.epochs, "model.hidden": [512, 512], "data.batch_size": 256, "data.shards": SHARDS,
             "loss.learn_temperature": False, "train.evaluate_test": False}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(yaml.safe_dump({"preset": "train_mlp", "set": fixed, "space": {"loss.temperature": f"grid({temperatures})"}}))
        sets = [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in fixed.items()]
        # Shards generated once, outside both timings.
        timed([sys.executable, "-c", f"from data_shards import open_shards; open_shards({SHARDS!r})"], work)

        sequential = sum(timed([sys.executable, "-m", "jobs.train_mlp", "--set", *sets, f"loss.temperature={t}",
                                "--run-dir", str(work / "seq" / str(i))], work) for i, t in enumerate(temperatures))
        sweep = [sys.executable, "-m", "jobs.sweep", "--space", str(space), "--num-samples", "1", "--scheduler", "none"]
        one_at_a_time = timed([*sweep, "--max-concurrent", "1", "--run-dir", str(work / "sweep1")], work)
        shared = timed([*sweep, "--run-dir", str(work / "sweep")], work)
        trials = json.loads((work / "sweep" / "trials.json").read_text())
        assert len(trials) == args.trials and all(row["epochs_run"] == args.epochs for row in trials)

    cpus = os.cpu_count()
    print(f"{args.trials} trials x {args.epochs} epochs, MLP [512, 512], {SHARDS}, {cpus} CPUs")
    print(f"  sequential trainings (python -m jobs.train_mlp, one at a time): {sequential:7.1f} s")
    print(f"  sweep, --max-concurrent 1 (each trial gets all {cpus} CPUs):       {one_at_a_time:7.1f} s   ratio {one_at_a_time / sequential:.2f}")
    print(f"  sweep, default (trials share the CPUs, 1 each):                {shared:7.1f} s   ratio {shared / sequential:.2f}")
    ratio = shared / sequential
    print(f"sweep / sequential = {ratio:.2f} (target <= 1.3 at N = 8): {'PASS' if ratio <= 1.3 else 'FAIL'}")


if __name__ == "__main__":
    main()
