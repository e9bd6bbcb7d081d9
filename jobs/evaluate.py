"""``python -m jobs.evaluate RUN [RUN ...]``: each run's checkpoint on the test split.

Writes ``eval/results.json``, ``eval/results.csv`` and ``eval/embeddings.npz`` (student and teacher
embeddings of up to 2000 test videos, what ``report`` plots) in each run directory. This is the
only code that reads the test split.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from data_shards import ShardError, open_shards
from data_shards.reader import load_split
from data_shards.files import atomic_destination, atomic_write_text
from jobs.config import ConfigError, validate_config
from jobs import exit_job, now
from jobs.rundir import RunDir
from jobs.embedding import embed_indices
from jobs.shard_checks import check_dims
from model import build_student, retrieval_metrics

log = logging.getLogger("streamapprox.evaluate")
EMBEDDING_SAMPLE = 2000  # enough for distributions and a PCA; the metrics use every test video


def load_student(checkpoint_path: Path):
    """Rebuild the student from the config saved inside the checkpoint and load its weights."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    cfg = validate_config(state["config"])
    student = build_student(cfg.model)
    prefix = "student."
    student.load_state_dict({k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)})
    return student.eval(), cfg, state


def evaluate_run(run_dir: str | Path, checkpoint: str = "best", shards: str | None = None, split: str | None = None) -> dict:
    run = RunDir(run_dir)
    path = run.checkpoints / f"{checkpoint}.pt"
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint (a finished run has best.pt and last.pt)")
    student, cfg, state = load_student(path)
    shard_set = open_shards(shards or cfg.data.shards)
    check_dims(cfg, shard_set.dims, str(shard_set.root))
    if shard_set.digest() != state.get("shards_digest"):
        log.warning("evaluating on shards %s, not the set this checkpoint was trained on", shard_set.root)
    split = split or cfg.data.test_split
    tensors = load_split(shard_set, split)
    embeddings = embed_indices(student, tensors, torch.arange(len(tensors)), cfg.data.eval_batch_size, torch.device("cpu"))
    metrics = retrieval_metrics(embeddings, tensors.teacher)
    results = {
        "run_id": run.path.name,
        "checkpoint": checkpoint,
        "epoch": state.get("epoch"),
        "split": split,
        "shards": {"root": str(shard_set.root), "manifest_digest": shard_set.digest(), "source_kind": shard_set.manifest.source.get("kind")},
        "evaluated_at": now(),
        "metrics": metrics,
    }
    (run.path / "eval").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.path / "eval" / "results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["run_id", "checkpoint", "split", *metrics])
    writer.writeheader()
    writer.writerow({"run_id": run.path.name, "checkpoint": checkpoint, "split": split, **metrics})
    atomic_write_text(run.path / "eval" / "results.csv", table.getvalue())
    save_embeddings(run.path / "eval" / "embeddings.npz", tensors.keys, embeddings, tensors.teacher, tensors.has_audio)
    if (run.path / "run.json").is_file():
        run.update(eval={"checkpoint": checkpoint, "split": split, "s2t_r1": metrics["s2t_r1"], "t2s_r1": metrics["t2s_r1"],
                         "results": "eval/results.json"})
    return metrics


def save_embeddings(path: Path, keys: list[str], student: torch.Tensor, teacher: torch.Tensor, has_audio: torch.Tensor) -> None:
    """The first ``EMBEDDING_SAMPLE`` test videos' embeddings (float16), so a report needs no shards. Stored
    uncompressed: a zip of stored members can be rebuilt byte for byte if Kaggle unpacks it (``launch.unpacked``)."""
    n = min(len(keys), EMBEDDING_SAMPLE)
    with atomic_destination(path) as handle:
        np.savez(handle, keys=np.array(keys[:n]), student=student[:n].half().numpy(),
                            teacher=teacher[:n].half().numpy(), has_audio=has_audio[:n].bool().numpy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN", help="run directories (runs/<run-id>)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--shards", help="evaluate on another shard set (default: the one the run trained on)")
    parser.add_argument("--split", help="default: the config's test split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for run_dir in args.run_dirs:
        try:
            metrics = evaluate_run(run_dir, args.checkpoint, args.shards, args.split)
        except (ConfigError, ShardError, FileNotFoundError) as exc:
            print(f"error: {run_dir}: {exc}", file=sys.stderr)
            return 2
        print(f"{run_dir}: " + json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    exit_job(main())
