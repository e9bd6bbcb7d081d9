"""Resumable, sharded extraction output: a plan, one atomically written tar per planned shard, and a
ledger that says which shards are finished.

The plan cuts the sorted video list into fixed shards (``train-000003.tar`` holds the same videos
whoever writes it), so worker i of N simply takes every N-th shard, a rerun skips the shards whose
ledger record matches the file on disk, and slices written on different machines join by name.
The directory becomes a shard set (``manifest.json``) once the ledger covers the whole plan; a worker
that finishes its own slice in a directory of its own writes a manifest marked incomplete, for
``data_shards merge``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from data_shards.errors import ShardError
from data_shards.files import atomic_destination, atomic_write_text, hash_file
from data_shards.manifest import Manifest, ShardEntry
from data_shards.schema import Dims
from data_shards.sources import VideoEntry

PLAN_NAME, LEDGER_DIR = "plan.json", ".ledger"
FIXED_MTIME = 1_600_000_000  # tar member times: the same inputs give byte-identical shards


@dataclass(frozen=True)
class PlannedShard:
    name: str
    split: str
    videos: tuple[VideoEntry, ...]


@dataclass(frozen=True)
class Plan:
    shards: tuple[PlannedShard, ...]
    settings: dict  # everything that changes the bytes: config, encoders, sampling

    @classmethod
    def build(cls, entries: list[VideoEntry], samples_per_shard: int, settings: dict) -> Plan:
        shards = []
        for split in dict.fromkeys(e.split for e in entries):
            videos = [e for e in entries if e.split == split]
            for number, start in enumerate(range(0, len(videos), samples_per_shard)):
                shards.append(PlannedShard(f"{split}-{number:06d}.tar", split, tuple(videos[start:start + samples_per_shard])))
        return cls(tuple(shards), settings)

    def to_dict(self) -> dict:
        return {"settings": self.settings,
                "shards": [{"name": s.name, "split": s.split, "videos": [v.video_id for v in s.videos]} for s in self.shards]}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def summary(self) -> dict:
        return {"digest": self.digest(), "videos": sum(len(s.videos) for s in self.shards),
                "shards": {s.name: len(s.videos) for s in self.shards}}

    def for_worker(self, index: int, count: int) -> list[PlannedShard]:
        return [shard for number, shard in enumerate(self.shards) if number % count == index]


class Ledger:
    """The output directory of one extraction (all workers, or one slice)."""

    def __init__(self, root: str | Path, plan: Plan):
        self.root, self.plan = Path(root), plan
        self.records_dir = self.root / LEDGER_DIR
        self.records_dir.mkdir(parents=True, exist_ok=True)
        plan_path = self.root / PLAN_NAME
        if plan_path.is_file():
            recorded = json.loads(plan_path.read_text())
            if recorded != json.loads(json.dumps(plan.to_dict())):
                raise ShardError(
                    f"{plan_path}: this directory holds an extraction with other videos or settings; "
                    "extract into a new directory (or delete this one to start over)"
                )
        else:
            atomic_write_text(plan_path, json.dumps(plan.to_dict(), indent=1, sort_keys=True) + "\n")

    def record(self, shard: PlannedShard) -> dict | None:
        """The finished record of ``shard``, if its file is on disk with the recorded size and digest."""
        path = self.records_dir / f"{shard.name}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record["samples"]:
            tar = self.root / shard.name
            if not tar.is_file() or hash_file(tar, "sha256") != (record["bytes"], [record["sha256"]]):
                return None
        return record

    def write(self, shard: PlannedShard, samples: list[dict], failures: list[dict]) -> dict:
        """Write the shard's tar atomically, then its ledger record (the record is the commit point)."""
        record = {"name": shard.name, "split": shard.split, "samples": len(samples), "bytes": 0, "sha256": None,
                  "failures": failures, "silent": sum(not s["meta.json"]["has_audio"] for s in samples)}
        tar = self.root / shard.name
        for stale in self.root.glob(f".{shard.name}.*.partial"):
            stale.unlink(missing_ok=True)  # left by a killed writer of this shard; only its owner gets here
        if samples:
            with atomic_destination(tar) as handle:
                with wds.TarWriter(handle, mtime=FIXED_MTIME) as writer:
                    for sample in samples:
                        writer.write(sample)
            record["bytes"], (record["sha256"],) = hash_file(tar, "sha256")
        else:
            tar.unlink(missing_ok=True)
        atomic_write_text(self.records_dir / f"{shard.name}.json", json.dumps(record, sort_keys=True) + "\n")
        return record

    def finish(self, dims: Dims, encoders: dict, source: dict) -> Manifest:
        """Write ``manifest.json`` over every finished shard here; complete when that is the whole plan."""
        records = {s.name: r for s in self.plan.shards if (r := self.record(s)) is not None}
        manifest = Manifest(
            dims=dims,
            shards=[ShardEntry(r["name"], r["split"], r["samples"], r["bytes"], r["sha256"]) for r in records.values() if r["samples"]],
            encoders=encoders,
            source={**source, "plan": self.plan.summary(), "done": sorted(records),
                    "complete": len(records) == len(self.plan.shards),
                    "failures": sorted((f for r in records.values() for f in r["failures"]), key=lambda f: f["video_id"]),
                    "silent": sum(r["silent"] for r in records.values())},
        )
        manifest.write(self.root)
        return manifest

