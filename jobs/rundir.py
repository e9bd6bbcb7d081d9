"""The run directory, identical on every backend:

runs/<run-id>/run.json           run id, job, resolved config, git commit + dirty flag, shard digest,
                                 hardware, backend, start/end, status (running|complete|incomplete|failed),
                                 init_from (a fine-tuned run's source checkpoint and its sha256)
runs/<run-id>/metrics.jsonl      one JSON object per logged step / epoch (a fine-tuned run's step-0 validation: kind start)
runs/<run-id>/checkpoints/       best.pt (chosen on validation), last.pt (resumable)
runs/<run-id>/eval/              results.json, results.csv, embeddings.npz (a test sample, for plots),
                                 report.md + *.png (``launch report``)
runs/<run-id>/logs/              train.log, audit-rank*.jsonl
Status ``incomplete`` (or ``running`` after a crash) with a last.pt means "resume me".
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from data_shards.files import atomic_destination, atomic_write_text, disk_problem
from jobs import now
from jobs.contract import read_run, update_run
from jobs.hardware import check_gpus


def git_state(start: Path) -> dict:
    """Commit and dirty flag of the code that runs (None outside a git checkout, e.g. a bundle)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=start, capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware(accelerator) -> dict:
    import torch  # the torch of the training process that asks (this module stays torch-free for --check)

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpus": check_gpus(),
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
    }


def launched_by() -> str:
    """The backend that started this job (its launcher sets STREAMAPPROX_BACKEND); ``direct`` when run by hand."""
    return os.environ.get("STREAMAPPROX_BACKEND", "direct")


def new_run_record(run: RunDir, cfg, shards) -> dict:
    """What a new run's run.json starts with, whichever job made it (``cfg``: a ``JobConfig``)."""
    return {"run_id": run.path.name, "job": cfg.job, "config": cfg.model_dump(mode="json"), "started_at": now(),
            "git": git_state(Path(__file__).parent), "shards": shards_record(cfg.data.shards, shards)}


def shards_record(location: str, shards) -> dict:
    """What run.json says about the shard set a run read (``shards``: a ``data_shards.ShardSet``)."""
    manifest = shards.manifest
    return {"location": location, "root": str(shards.root), "manifest_digest": shards.digest(), "splits": manifest.splits,
            "source_kind": manifest.source.get("kind", "unknown"), "encoders": manifest.encoders,
            "encoders_config": manifest.source.get("encoders_config")}


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self) -> RunDir:
        for sub in ("checkpoints", "eval", "logs"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

    def read(self) -> dict:
        return read_run(self.path)

    def update(self, **fields: Any) -> dict:
        """run.json, merged with ``fields`` and checked against ``jobs.contract.RunRecord``."""
        return update_run(self.path, **fields)

    def log_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records logged after ``last_step`` (work a resumed run will redo)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def disk_cause(exc: BaseException | None) -> OSError | None:
    """The OSError (no space, read-only, permission...) at the root of a failure, if there is one: torch reports a
    full disk as "unexpected pos", with the OSError only in the exception's context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temp file: a crash never leaves half a checkpoint. A disk error names the checkpoint."""
    import torch  # the training process's own (this module stays torch-free for --check)

    try:
        with atomic_destination(path) as handle:
            torch.save(obj, handle)
    except Exception as exc:
        cause = disk_cause(exc)
        if cause is None or cause.filename:
            raise
        raise OSError(cause.errno, cause.strerror, str(path)) from exc


def is_rank_zero() -> bool:
    """The process that owns the run directory: rank 0 under accelerate launch or Ray Train, or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def disk_message(error: OSError, run: RunDir) -> str:
    resumable = (run.checkpoints / "last.pt").is_file()
    return disk_problem(error, run.path) + (f", then continue with --resume {run.path}" if resumable else ", then start the run again")
