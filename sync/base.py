"""What every store offers, and the one error type callers turn into a clean message."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import hash_file

SYNC_MANIFEST = ".streamapprox-sync.json"  # kept at the root of remote (S3) trees


class SyncError(RuntimeError):
    """A sync problem; the message names the URL (never a credential) and what to do."""


@dataclass(frozen=True)
class Entry:
    """One file as a store knows it. ``size`` is None where a store does not list sizes (Kaggle
    kernel outputs); ``sha256`` may be unknown (files put by other tools); ``md5`` is set where the
    store has a plain MD5 (single-part S3 ETag)."""

    size: int | None
    sha256: str | None = None
    md5: str | None = None

    def same_content(self, other: "Entry") -> bool:
        if self.size is None or self.size != other.size:
            return False
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        if self.md5 and other.md5:
            return self.md5 == other.md5
        return False  # cannot tell: move it again rather than guess


Progress = Callable[[int], None]  # called with byte counts as they move


def file_digests(path: Path, md5: bool = False) -> Entry:
    """Size and sha256 of a file (and md5 only on request: it is the slow one), in one read."""
    size, digests = hash_file(path, "sha256", *(["md5"] if md5 else []))
    return Entry(size, digests[0], digests[1] if md5 else None)


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

    def complete(self, rel: str, entry: Entry, md5: bool = False) -> Entry:
        """``entry`` with the digests this store can supply (local files are hashed only when a
        comparison needs it; md5 only when the other side has nothing better)."""
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
