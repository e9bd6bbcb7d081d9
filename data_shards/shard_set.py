"""A shard set on local disk, found and verified against its manifest: what a job's ``--check`` opens. numpy-free and
torch-free (decoding lives in ``data_shards.reader``), so a check never pays for torch."""
from __future__ import annotations

from pathlib import Path

from data_shards.errors import ShardError
from data_shards.manifest import MANIFEST_NAME, Manifest, sha256_file
from data_shards.schema import Dims


class ShardSet:
    """A verified shard set on local disk; ``splits`` limits what this process may read (None: all).
    ``sources`` is set on a set checked by its manifests alone, whose shards stay in Kaggle kernels' outputs."""

    def __init__(self, root: Path, manifest: Manifest, splits: tuple[str, ...] | None = None, sources: list[dict] | None = None):
        self.root = root
        self.manifest = manifest
        self.splits = splits
        self.sources = sources

    @property
    def dims(self) -> Dims:
        return self.manifest.dims

    def digest(self) -> str:
        return self.manifest.digest()

    def paths(self, split: str) -> list[str]:
        if self.splits is not None and split not in self.splits:
            raise ShardError(f"{self.root}: split {split!r} is withheld from this process (it may read {', '.join(self.splits)} only).")
        entries = self.manifest.shards_of(split)
        if not entries:
            raise ShardError(
                f"{self.root / MANIFEST_NAME}: no shards for split {split!r} (splits present: {sorted(self.manifest.splits)})."
            )
        return [str(self.root / entry.name) for entry in entries]

    def verify(self) -> None:
        """Check every readable shard's presence, size and sha256 against the manifest."""
        for entry in self.manifest.shards:
            if self.splits is not None and entry.split not in self.splits:
                continue
            path = self.root / entry.name
            if not path.is_file():
                raise ShardError(f"{path}: shard listed in manifest.json is missing; re-copy or regenerate the shard set.")
            size = path.stat().st_size
            if size != entry.bytes:
                raise ShardError(
                    f"{path}: {size} bytes, manifest.json says {entry.bytes} (truncated or partly copied?); "
                    "re-copy the shard or regenerate the set."
                )
            if sha256_file(path) != entry.sha256:
                raise ShardError(
                    f"{path}: sha256 does not match manifest.json (corrupted shard); re-copy the shard or regenerate the set."
                )


def open_root(root: Path, verify: bool = True, splits: tuple[str, ...] | None = None, partial: bool = False) -> ShardSet:
    """Open the shard set in ``root`` (a folder here) and verify its digests.

    With ``splits``, only those splits are verified and readable: a sweep's trials open the set this
    way, so the test split cannot influence model selection. An unfinished extraction (one worker's
    slice) opens only with ``partial`` (for merging): nobody trains on part of a dataset by mistake."""
    if not root.is_dir():
        raise ShardError(f"{root}: shard directory not found. Generate one with `data_shards synthetic --out {root}` "
                         "or point data.shards at an existing set.")
    manifest = Manifest.read(root)
    if not partial and not manifest.source.get("complete", True):
        done, planned = len(manifest.source["done"]), len(manifest.source["plan"]["shards"])
        raise ShardError(f"{root}: an unfinished extraction ({done} of {planned} planned shards). Finish it by rerunning the same "
                         "extract command (or the missing workers), or join slices written apart with `data_shards merge`.")
    shards = ShardSet(root, manifest, splits)
    if verify:
        shards.verify()
    return shards
