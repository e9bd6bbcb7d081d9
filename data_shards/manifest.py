"""``manifest.json``: what a shard set holds, so readers can verify before they train."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from data_shards.errors import ShardError
from data_shards.files import atomic_write_text, hash_file
from data_shards.schema import SCHEMA_VERSION, Dims

MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | Path) -> str:
    return hash_file(path, "sha256")[1][0]


@dataclass
class ShardEntry:
    name: str
    split: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    dims: Dims
    shards: list[ShardEntry]
    encoders: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def splits(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self.shards:
            counts[shard.split] = counts.get(shard.split, 0) + shard.samples
        return counts

    def shards_of(self, split: str) -> list[ShardEntry]:
        return [shard for shard in self.shards if shard.split == split]

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "dims": self.dims.to_dict(),
            "encoders": self.encoders,
            "source": self.source,
            "splits": self.splits,
            "shards": [vars(shard) for shard in self.shards],
        }

    def digest(self) -> str:
        """Content digest of the manifest (and so of every shard's bytes): names a shard set in run.json."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def write(self, root: Path) -> Path:
        path = Path(root) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise ShardError(
                f"{path}: no manifest. A shard set is a directory with manifest.json beside its .tar "
                "shards; write one with `data_shards synthetic --out DIR` or the extract job."
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{path}: not valid JSON ({exc}); regenerate the shard set.") from exc
        if not isinstance(data, dict):
            raise ShardError(f"{path}: not a manifest (a JSON object is expected, this is a {type(data).__name__}); regenerate the "
                             "shard set.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ShardError(
                f"{path}: schema_version {version!r}, this reader understands {SCHEMA_VERSION}; "
                "regenerate the shards with this version of data_shards."
            )
        try:
            manifest = cls(
                dims=Dims.from_dict(data["dims"]),
                shards=[ShardEntry(**entry) for entry in data["shards"]],
                encoders=data.get("encoders", {}),
                source=data.get("source", {}),
            )
        except (KeyError, TypeError) as exc:
            raise ShardError(f"{path}: malformed manifest field {exc}; regenerate the shard set.") from exc
        declared = data.get("splits")
        if declared is not None and declared != manifest.splits:
            raise ShardError(
                f"{path}: 'splits' says {declared} but the shard entries add up to {manifest.splits}."
            )
        return manifest
