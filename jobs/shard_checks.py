"""What every job that reads a shard set checks before it starts, and reports to a launcher (``--check-report``):
the student fits the shards, a batch fits the split, random-init features are named as such."""
from __future__ import annotations

import sys
from pathlib import Path

from data_shards import ShardSet
from data_shards.manifest import MANIFEST_NAME, sha256_file
from data_shards.schema import Dims
from jobs.config import ConfigError, JobConfig
from jobs.contract import CheckReport, KaggleOutputsInput, ShardsInput


def check_batches(cfg: JobConfig, splits: dict[str, int]) -> None:
    """A batch larger than the training split could never make one step (the job's reader checks again per rank)."""
    have = splits.get(cfg.data.train_split, 0)
    if cfg.data.batch_size > have:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size}: larger than the {cfg.data.train_split!r} split ({have} videos); "
                          "lower it")


def check_dims(cfg: JobConfig, dims: Dims, where: str) -> None:
    """The student must be built for the shards it will read; say which key to change if not."""
    m = cfg.model
    expected = {"model.frames": (m.frames, dims.frames), "model.clip_dim": (m.clip_dim, dims.clip),
                "model.audio_dim": (m.audio_dim, dims.audio), "model.out_dim": (m.out_dim, dims.teacher)}
    wrong = [f"{key}={have} but the shards have {need} (--set {key}={need})" for key, (have, need) in expected.items() if have != need]
    if wrong:
        raise ConfigError(f"model dims do not match {where}: " + "; ".join(wrong))


def check_fits(cfg: JobConfig, shards: ShardSet) -> None:
    """The student is built for the shards' features and one batch fits their training split."""
    check_dims(cfg, shards.dims, str(shards.root))
    check_batches(cfg, shards.manifest.splits)


def warn_random_init(shards: ShardSet) -> None:
    """Features from random-init encoders train a student of nothing: say so where it cannot be missed."""
    if shards.manifest.encoders.get("random_init"):
        print(f"WARNING: {shards.root} was extracted with RANDOM-INIT encoders (--random-init): its features are for tests "
              "and benchmarks only; a student trained on them learns nothing about real videos", file=sys.stderr)


def shards_input(location: str, shards: ShardSet) -> ShardsInput | KaggleOutputsInput:
    """A shard set as a remote launcher must carry it: where it is and how to recognise it there; a set that
    stays in Kaggle kernels' outputs names those kernels instead."""
    if shards.sources:
        return KaggleOutputsInput(location=location, sources=shards.sources)
    return ShardsInput(location=location, root=str(shards.root), manifest_sha256=sha256_file(shards.root / MANIFEST_NAME),
                       regenerable=location.startswith("synthetic://"))


def write_check_report(path: Path, job: str, location: str, shards: ShardSet) -> None:
    """What a remote launcher must carry: each input's config key, where it is, and how to recognise it there."""
    CheckReport(job=job, inputs={"data.shards": shards_input(location, shards)}).write(path)
