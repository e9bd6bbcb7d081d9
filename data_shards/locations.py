"""Where a shard set is: a path, ``file://``, ``s3://`` or ``kaggle://`` (mirrored into the cache) or ``synthetic://``;
``open_shards`` brings it here, opens and verifies it (torch-free: decoding is ``data_shards.reader``'s)."""
from __future__ import annotations

from pathlib import Path

from data_shards.errors import ShardError
from data_shards.kaggle_outputs import is_kaggle, mirror, remote_manifests
from data_shards.shard_set import ShardSet, open_root


def _resolve_root(location: str | Path) -> Path:
    text = str(location)
    if text.startswith("synthetic://"):
        from data_shards.synthetic import ensure_synthetic

        return ensure_synthetic(text)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if text.startswith("s3://"):
        return _fetched(text)
    if is_kaggle(text):
        return mirror(text)
    if "://" in text:
        raise ShardError(f"{location}: shard sets are read from a path, file://, s3://, kaggle:// or synthetic://; bring others "
                         "here with `launch sync` first.")
    return Path(text).expanduser()


def _fetched(url: str) -> Path:
    """An S3 shard set, mirrored into the cache through sync (incremental and sha256-verified; only
    changed shards move again); readers then verify it against its manifest like any local set."""
    import hashlib

    from data_shards.files import cache_root
    from sync import SyncError, sync

    local = cache_root() / "s3" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    try:
        sync(url, str(local), delete=True)
    except SyncError as exc:
        raise ShardError(f"{url}: cannot fetch the shard set: {exc}") from None
    if not (local / "manifest.json").is_file():
        raise ShardError(f"{url}: no manifest.json under that prefix; point data.shards at the shard set's own prefix")
    return local


def open_shards(location: str | Path, verify: bool = True, splits: tuple[str, ...] | None = None,
                partial: bool = False) -> ShardSet:
    """Open a shard set wherever it is (see the module) and verify its digests; ``splits`` and ``partial`` as in ``open_root``."""
    return open_root(_resolve_root(location), verify, splits, partial)


def check_shards(location: str | Path, splits: tuple[str, ...] | None = None) -> ShardSet:
    """What a job's ``--check`` opens: the shard set, verified -- except one that stays in Kaggle kernels' outputs
    (``kaggle://``), which is checked by its manifests alone and verified where it is read, on the kernel."""
    if is_kaggle(str(location)):
        root, manifest, sources = remote_manifests(str(location))
        return ShardSet(root, manifest, splits, sources=sources)
    return open_shards(location, splits=splits)
