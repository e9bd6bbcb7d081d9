"""File helpers shared by everything that writes or checks files: atomic writes (temp file in the
same directory + fsync + rename, so a reader never sees half a manifest, checkpoint, run.json or
synced file), chunked file hashing, and the project's cache directory. Light: no torch."""
from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PARTIAL_SUFFIX = ".partial"
CHUNK = 1 << 20


def cache_root() -> Path:
    """``$STREAMAPPROX_CACHE``, else ``~/.cache/streamapprox`` (synthetic shards, sync upload state)."""
    return Path(os.environ.get("STREAMAPPROX_CACHE", Path.home() / ".cache" / "streamapprox"))


def hash_file(path: str | Path, *algorithms: str) -> tuple[int, list[str]]:
    """Size and hex digests (``hashlib`` names, e.g. "sha256", "md5") of a file, in one read."""
    hashes = [hashlib.new(name) for name in algorithms]
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            size += len(block)
            for h in hashes:
                h.update(block)
    return size, [h.hexdigest() for h in hashes]


@contextmanager
def atomic_destination(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file beside ``path`` that replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_destination(path) as handle:
        handle.write(text.encode())


DISK_ADVICE = {errno.ENOSPC: "free space there", errno.EDQUOT: "free space there (quota)",
               errno.EROFS: "choose a writable --runs-dir/--run-dir", errno.EACCES: "choose a directory you may write"}


def disk_problem(error: OSError, where: str | Path) -> str:
    """One line for a disk that refused a write: where, what the system said, and what to do about it."""
    advice = DISK_ADVICE.get(error.errno, "fix the disk") if error.errno is not None else "fix the disk"
    return f"{error.filename or where}: {error.strerror} (errno {error.errno}); {advice}"
