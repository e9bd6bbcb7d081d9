"""Shard sets that extraction kernels left in their outputs on Kaggle: ``kaggle://OWNER/KERNEL[/PATH]``, or
several such URLs joined by commas (the slices of a fan-out extraction, one kernel each). PATH is the shard
set's folder in the kernel's outputs (``<run-id>/shards``); without it, the one folder holding a
``manifest.json`` is taken.

``launch kaggle`` trains on them where they are: a job's ``--check`` reads only their manifests
(``remote_manifests``), and the kernel mounts the extraction kernels as sources. Anywhere else they are
mirrored into the cache through sync and merged (``mirror``), like an ``s3://`` set.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from data_shards.errors import ShardError
from data_shards.files import cache_root
from data_shards.manifest import MANIFEST_NAME, Manifest, sha256_file

SCHEME = "kaggle://"


def is_kaggle(location: str) -> bool:
    return str(location).startswith(SCHEME)


def _sources(location: str) -> list[tuple[str, str, str]]:
    """(owner, kernel, folder or '') of every URL in ``location``."""
    sources = []
    for url in (part.strip() for part in str(location).split(",")):
        owner, _, rest = url[len(SCHEME):].partition("/") if url.startswith(SCHEME) else ("", "", "")
        kernel, _, folder = rest.partition("/")
        if not owner or not kernel:
            raise ShardError(f"{url}: a Kaggle shard set is kaggle://OWNER/KERNEL[/PATH] (several joined by commas)")
        sources.append((owner, kernel, folder.strip("/")))
    return sources


def _store(owner: str, kernel: str, folder: str):
    from sync.kaggle import KaggleKernelOutputStore

    return KaggleKernelOutputStore(f"{SCHEME}{owner}/{kernel}" + (f"/{folder}" if folder else ""), owner, kernel, folder)


def _folder(owner: str, kernel: str, folder: str) -> str:
    """The shard set's folder in the kernel's outputs: as given, or the one that holds a manifest."""
    from sync import SyncError

    try:
        listed = _store(owner, kernel, "").list()
    except SyncError as exc:
        raise ShardError(f"{SCHEME}{owner}/{kernel}: {exc}") from None
    if folder:
        if f"{folder}/{MANIFEST_NAME}" not in listed:
            raise ShardError(f"{SCHEME}{owner}/{kernel}/{folder}: no {MANIFEST_NAME} there in the kernel's outputs")
        return folder
    found = sorted(rel[: -len(MANIFEST_NAME)].rstrip("/") for rel in listed if rel == MANIFEST_NAME or rel.endswith("/" + MANIFEST_NAME))
    if len(found) != 1:
        raise ShardError(f"{SCHEME}{owner}/{kernel}: {'no shard set' if not found else 'several shard sets'} in the kernel's outputs "
                         f"{found if found else ''}; name one: {SCHEME}{owner}/{kernel}/PATH")
    return found[0]


def _cache(location: str) -> Path:
    return cache_root() / "kaggle-shards" / hashlib.sha256(location.encode()).hexdigest()[:16]


def remote_manifests(location: str) -> tuple[Path, Manifest, list[dict]]:
    """The manifests alone (fetched into the cache): the merged manifest's folder, the manifest, and each
    source as ``{kernel, url, path, manifest_sha256}``. Nothing but manifests is read."""
    from data_shards.merge import merge_manifests
    from sync import SyncError

    manifests, sources = [], []
    for i, (owner, kernel, folder) in enumerate(_sources(location)):
        folder = _folder(owner, kernel, folder)
        local = _cache(location) / "manifests" / str(i)
        store = _store(owner, kernel, folder)
        try:
            store.download(MANIFEST_NAME, local / MANIFEST_NAME, store.list()[MANIFEST_NAME], lambda n: None)
        except SyncError as exc:
            raise ShardError(f"{store.url}: {exc}") from None
        manifests.append(Manifest.read(local))
        sources.append({"kernel": f"{owner}/{kernel}", "url": store.url, "path": folder,
                        "manifest_sha256": sha256_file(local / MANIFEST_NAME)})
    if len(manifests) == 1:
        merged, root = manifests[0], _cache(location) / "manifests" / "0"
    else:
        merged = merge_manifests(manifests, [s["url"] for s in sources])[0]
        root = _cache(location) / "manifests" / "merged"
        merged.write(root)
    if not merged.source.get("complete", True):
        done, planned = len(merged.source["done"]), len(merged.source["plan"]["shards"])
        raise ShardError(f"{location}: an unfinished extraction ({done} of {planned} planned shards); list every slice's kernel, "
                         "joined by commas")
    return root, merged, sources


def mirror(location: str) -> Path:
    """The whole shard set here: every source synced into the cache (incremental, sha256-checked), merged if several."""
    from data_shards.merge import merge_shard_sets
    from sync import SyncError, sync

    parts = []
    for i, (owner, kernel, folder) in enumerate(_sources(location)):
        folder = _folder(owner, kernel, folder)
        local = _cache(location) / "parts" / str(i)
        try:
            sync(f"{SCHEME}{owner}/{kernel}/{folder}", str(local), delete=True)
        except SyncError as exc:
            raise ShardError(f"{location}: cannot fetch the shard set: {exc}") from None
        parts.append(local)
    if len(parts) == 1:
        return parts[0]
    merged = _cache(location) / "merged"
    merge_shard_sets(parts, merged)
    return merged
