"""Plan (compare the two sides' content manifests) and execute (copy in parallel, verified)."""
from __future__ import annotations

import fnmatch
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sync.base import Entry, Store, SyncError, is_internal
from sync.progress import TransferProgress
from sync.stores import open_store

Selector = Callable[[dict[str, Entry]], dict[str, Entry]]


def include(patterns: list[str]) -> Selector:
    """Keep paths matching any glob (``*`` crosses ``/``)."""
    return lambda entries: {rel: e for rel, e in entries.items() if any(fnmatch.fnmatch(rel, p) for p in patterns)}


@dataclass
class SyncReport:
    source: str
    destination: str
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        gone = "would delete" if self.dry_run else "deleted"
        return (f"{self.source} -> {self.destination}: {verb} {len(self.copied)} files ({self.bytes_moved / 1e6:.1f} MB), "
                f"{len(self.unchanged)} unchanged, {gone} {len(self.deleted)}")


def _copy(src: Store, dst: Store, rel: str, entry: Entry, progress: TransferProgress) -> Entry:
    """One file across; returns its entry with digests (for the destination's manifest)."""
    dst_root, src_root = dst.local_path(), src.local_path()
    if dst_root is not None:
        arrived = src.download(rel, dst_root / rel, entry, progress.add_bytes)
    elif src_root is not None:
        arrived = dst.upload(rel, src_root / rel, entry, progress.add_bytes)
    else:  # remote -> remote through a verified local copy
        with tempfile.TemporaryDirectory(prefix="streamapprox-sync-") as tmp:
            staged = src.download(rel, Path(tmp) / "file", entry, lambda n: None)
            arrived = dst.upload(rel, Path(tmp) / "file", staged, progress.add_bytes)
    progress.file_done()
    return arrived


def _unchanged(src: Store, dst: Store, rel: str, entry: Entry, present: Entry | None) -> Entry | None:
    """The completed source entry if the destination already holds the same bytes, else None.
    Digests are computed only here, for files whose sizes already match."""
    if present is None or entry.size is None or entry.size != present.size:
        return None
    present, entry = dst.complete(rel, present), src.complete(rel, entry)
    if present.sha256 is None or entry.sha256 is None:  # an object put by another tool: compare its MD5 or multipart ETag
        present, entry = dst.complete(rel, present, like=entry), src.complete(rel, entry, like=present)
    return entry if entry.same_content(present) else None


def sync(
    source: str,
    destination: str,
    *,
    select: Selector | None = None,
    delete: bool = False,
    dry_run: bool = False,
    endpoint_url: str | None = None,
    workers: int = 8,
) -> SyncReport:
    """Make ``destination`` hold what ``source`` holds (the selected part of it). Unchanged files
    move no bytes; ``delete`` removes destination files the source does not have."""
    src, dst = open_store(source, endpoint_url), open_store(destination, endpoint_url)
    if not dst.writable:
        raise SyncError(f"{destination}: read-only; it can be a sync source, not a destination")
    wanted = {rel: entry for rel, entry in src.list().items() if not is_internal(rel)}
    if not wanted:  # a typo'd path or prefix must not become "make the destination empty" (aws s3 sync refuses too)
        raise SyncError(f"{source}: nothing there (no such directory or prefix, or it is empty); nothing was copied"
                        f"{' or deleted' if delete else ''}")
    if select is not None:
        wanted = select(wanted)
    present = dst.list()
    report = SyncReport(source, destination, dry_run=dry_run)
    final = dict(present)
    with ThreadPoolExecutor(workers) as pool:
        names = sorted(wanted)
        for rel, same in zip(names, pool.map(lambda rel: _unchanged(src, dst, rel, wanted[rel], present.get(rel)), names)):
            if same is not None:
                report.unchanged.append(rel)
                final[rel] = same
            else:
                report.copied.append(rel)
                report.bytes_moved += wanted[rel].size or 0
        if delete:
            in_scope = select(present) if select is not None else present
            report.deleted = sorted(rel for rel in in_scope if rel not in wanted)
        if dry_run:
            return report
        progress = TransferProgress(report.bytes_moved, len(report.copied), f"sync {destination}")
        try:
            futures = {rel: pool.submit(_copy, src, dst, rel, wanted[rel], progress) for rel in report.copied}
            for rel, future in futures.items():
                final[rel] = future.result()
        finally:
            progress.close()
            report.bytes_moved = progress.moved  # what was sent, not what was planned (a resumed upload sends less)
    for rel in report.deleted:
        dst.delete(rel)
        final.pop(rel, None)
    dst.commit(final)
    return report
