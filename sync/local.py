"""Local directories (plain paths and ``file://``): the embedded default."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from data_shards.files import CHUNK, atomic_destination, atomic_write_text
from sync.base import SYNC_MANIFEST, Entry, Progress, Store, SyncError, Verifier, file_digests, is_internal, multipart_etag


class LocalStore(Store):
    def __init__(self, url: str, root: Path):
        self.url, self.root = url, root

    def local_path(self) -> Path:
        return self.root

    def list(self) -> dict[str, Entry]:
        if not self.root.exists():
            return {}
        if not self.root.is_dir():
            raise SyncError(f"{self.url}: not a directory")
        entries = {}
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if not is_internal(name):
                    path = Path(dirpath) / name
                    entries[path.relative_to(self.root).as_posix()] = Entry(path.stat().st_size)
        return entries

    def complete(self, rel: str, entry: Entry, like: Entry | None = None) -> Entry:
        md5 = bool(like and like.md5 and not like.sha256)
        if entry.sha256 is None or (md5 and entry.md5 is None):
            entry = file_digests(self.root / rel, md5=md5)
        if like and like.etag and not like.sha256 and entry.etag is None:
            entry = replace(entry, etag=multipart_etag(self.root / rel, like.etag))
        return entry

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        verifier = Verifier(f"{self.url}/{rel}", expected)
        with open(self.root / rel, "rb") as source, atomic_destination(dest) as sink:
            while block := source.read(CHUNK):
                sink.write(block)
                verifier.update(block)
                progress(len(block))
            return verifier.check()

    def upload(self, rel: str, src: Path, entry: Entry, progress: Progress) -> Entry:
        return LocalStore(str(src.parent), src.parent).download(src.name, self.root / rel, entry, progress)

    def delete(self, rel: str) -> None:
        path = self.root / rel
        path.unlink(missing_ok=True)
        for parent in path.parents:  # prune directories the delete emptied
            if parent == self.root or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def write_content_manifest(root: Path) -> Path:
    """Record size + sha256 of every file under ``root`` in its ``.streamapprox-sync.json``, so a
    store that lists no digests (Kaggle kernel outputs) can still be pulled verified and incrementally."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not is_internal(p.name)):
        entry = file_digests(path)
        files[path.relative_to(root).as_posix()] = {"size": entry.size, "sha256": entry.sha256}
    target = root / SYNC_MANIFEST
    atomic_write_text(target, json.dumps({"version": 1, "files": files}, sort_keys=True) + "\n")
    return target
