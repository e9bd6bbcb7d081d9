"""What every store offers, and the one error type callers turn into a clean message."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import PARTIAL_SUFFIX, hash_file

SYNC_MANIFEST = ".streamapprox-sync.json"  # kept at the root of remote (S3) trees


def is_internal(rel: str) -> bool:
    """Bookkeeping that never travels, wherever a store lists it: the content manifest, partial files, and a run
    directory's lock (held by whoever runs it, on that machine)."""
    name = rel.rsplit("/", 1)[-1]
    return name in (SYNC_MANIFEST, ".lock") or name.endswith(PARTIAL_SUFFIX)


class SyncError(RuntimeError):
    """A sync problem; the message names the URL (never a credential) and what to do."""


@dataclass(frozen=True)
class Entry:
    """One file as a store knows it. ``size`` is None where a store does not list sizes (Kaggle
    kernel outputs); ``sha256`` may be unknown (files put by other tools); ``md5`` is set where the
    store has a plain MD5 (single-part S3 ETag), ``etag`` where it has a multipart ETag
    (``md5(md5(part 1) || ...)-N``, what ``aws s3 sync`` leaves above 8 MiB)."""

    size: int | None
    sha256: str | None = None
    md5: str | None = None
    etag: str | None = None

    def same_content(self, other: Entry) -> bool:
        if self.size is None or self.size != other.size:
            return False
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        if self.md5 and other.md5:
            return self.md5 == other.md5
        if self.etag and other.etag:
            return self.etag == other.etag
        return False  # cannot tell: move it again rather than guess


Progress = Callable[[int], None]  # called with byte counts as they move


def file_digests(path: Path, md5: bool = False) -> Entry:
    """Size and sha256 of a file (and md5 only on request: it is the slow one), in one read."""
    size, digests = hash_file(path, "sha256", *(["md5"] if md5 else []))
    return Entry(size, digests[0], digests[1] if md5 else None)


MIB = 1024 * 1024
PART_SIZES_MIB = (8, 5, 16, 10, 15, 25, 32, 50, 64, 100, 128, 256, 512, 1024)  # aws s3's default (8 MiB) first


def multipart_etag(path: Path, etag: str) -> str | None:
    """This file's multipart ETag for the part count ``etag`` implies (``...-N``), trying the part sizes tools use
    (``aws s3`` uses 8 MiB), so an object another tool uploaded in parts is recognised without moving it again;
    None when no part size gives N parts."""
    parts, size = int(etag.rsplit("-", 1)[1]), path.stat().st_size
    for part in (mib * MIB for mib in PART_SIZES_MIB):
        if -(-size // part) != parts:
            continue
        digests = hashlib.md5()
        with open(path, "rb") as handle:
            while block := handle.read(part):
                digests.update(hashlib.md5(block).digest())
        computed = f"{digests.hexdigest()}-{parts}"
        if computed == etag:
            return computed
    return None


class Verifier:
    """Hashes bytes as they stream in, then checks them against what the source promised
    (sha256 always, for the record; md5 only where the source offers nothing better)."""

    def __init__(self, url: str, expected: Entry):
        self.url, self.expected = url, expected
        self.sha, self.size = hashlib.sha256(), 0
        self.md5 = hashlib.md5() if expected.md5 and not expected.sha256 else None

    def update(self, block: bytes) -> None:
        self.sha.update(block)
        if self.md5 is not None:
            self.md5.update(block)
        self.size += len(block)

    def check(self) -> Entry:
        got = Entry(self.size, self.sha.hexdigest(), self.md5.hexdigest() if self.md5 else self.expected.md5)
        e = self.expected
        if e.size is not None and got.size != e.size:
            raise SyncError(f"{self.url}: received {got.size} bytes, expected {e.size} (interrupted or error response); nothing was kept")
        if e.sha256 and got.sha256 != e.sha256:
            raise SyncError(f"{self.url}: sha256 of the received bytes does not match the source's digest (corrupted); nothing was kept")
        if self.md5 is not None and got.md5 != e.md5:
            raise SyncError(f"{self.url}: md5 of the received bytes does not match the source's ETag (corrupted); nothing was kept")
        return got


class Store(ABC):
    """A tree of files under one URL."""

    url: str
    writable: bool = True

    @abstractmethod
    def list(self) -> dict[str, Entry]:
        """Relative path -> Entry, for every file of the tree (cheap: digests may come later)."""

    def complete(self, rel: str, entry: Entry, like: Entry | None = None) -> Entry:
        """``entry`` with the digests this store can supply: sha256 where it can, and -- to compare with ``like``,
        the other side's entry, when that has no sha256 -- its md5 or multipart ETag (local files are hashed only when
        a comparison needs it)."""
        return entry

    @abstractmethod
    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        """Copy one file to local ``dest`` atomically, verified against ``expected``; returns what arrived."""

    def upload(self, rel: str, src: Path, entry: Entry, progress: Progress) -> Entry:
        """Copy local ``src`` here; returns the entry with the digests computed on the way."""
        raise SyncError(f"{self.url}: read-only; it can be a sync source, not a destination")

    def delete(self, rel: str) -> None:
        raise SyncError(f"{self.url}: read-only; nothing can be deleted there")

    def commit(self, entries: dict[str, Entry]) -> None:
        """Record the destination's content manifest after a sync (stores that need one)."""

    def local_path(self) -> Path | None:
        """The directory, for local stores."""
        return None
