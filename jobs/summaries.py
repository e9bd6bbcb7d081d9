"""What each job says about a finished run directory, in a few lines (``JobSpec.summary`` names the function).
Torch-free: the launcher prints these when a job ends, wherever it ran."""
from __future__ import annotations

import json
from pathlib import Path


def _results(path: Path) -> list[str]:
    if not path.is_file():
        return []
    m = json.loads(path.read_text())["metrics"]
    return [f"test ({int(m['n'])} videos): student->teacher R@1 {m['s2t_r1']:.2f}  R@5 {m['s2t_r5']:.2f}  R@10 {m['s2t_r10']:.2f}  "
            f"MedR {m['s2t_medr']:.1f} | teacher->student R@1 {m['t2s_r1']:.2f}"]


def training(run_dir: Path, info: dict) -> list[str]:
    """The best validation value the run selected on, an early stop if it made one, and the test figures of best.pt."""
    best = info.get("best") or {}
    lines = [f"best validation {best['metric']}: {best['value']:.2f}"] if best.get("value") is not None else []
    stop = info.get("early_stop")
    if stop:
        lines.append(f"early stop after epoch {stop['after_epoch']}: no better {best.get('metric')} for {stop['patience']} epochs "
                     f"(train.patience); best.pt is epoch {best.get('epoch')}")
    return lines + _results(run_dir / "eval" / "results.json")


def sweep(run_dir: Path, info: dict) -> list[str]:
    """The winner chosen on validation (its params), and its test figures."""
    lines = training(run_dir, {"best": info.get("best")})[:1]
    best = info.get("best") or {}
    if best.get("run"):
        lines.append(f"best run: {run_dir / best['run']} {json.dumps((info.get('winner') or {}).get('params', {}))}")
        lines += _results(run_dir / best["run"] / "eval" / "results.json")
    errored = info.get("errored_trials") or []
    if errored:
        lines.append(f"errored trials: {', '.join(t['trial_id'] + ' (' + t['error'] + ')' for t in errored)}")
    return lines


def index(run_dir: Path, info: dict) -> list[str]:
    found = info.get("index")
    if not found:
        return []
    return [f"index: {found['index']}: {found['videos']} videos, {found['frames']} frames ({found['shards_indexed']} shards indexed, "
            f"{found['shards_unchanged']} unchanged); search it with: launch serve --index {found['index']}"]


def shards(run_dir: Path, info: dict) -> list[str]:
    """A job that writes a shard set (extract, synthesize): its splits and failures."""
    lines = []
    if info.get("splits"):
        lines.append(f"shards: {run_dir / 'shards'} {info['splits']}" + (f", {info['failures']} videos failed" if info.get("failures") else ""))
    return lines


def nothing(run_dir: Path, info: dict) -> list[str]:
    return []
