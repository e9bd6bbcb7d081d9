"""Plain HTTP downloads that keep nothing unless the whole, successful body arrived: a body that breaks off is
resumed with a Range request (or started again where the server ignores it), 429 / 5xx and dropped connections
are retried with exponential backoff. Kaggle's signed file URLs and weight files named by URL both come this way."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import requests

from data_shards.files import CHUNK, atomic_destination
from sync.base import Entry, Progress, SyncError, Verifier

DOWNLOAD_TIMEOUT_S = 60
RETRIED = {429, 500, 502, 503, 504}
log = logging.getLogger("streamapprox.http")

OpenAt = Callable[[int], AbstractContextManager[Any]]  # start byte -> a streamed response (a context manager)


def retry_policy(prefix: str) -> tuple[int, float]:
    """(attempts, first backoff in seconds) from ``PREFIX_ATTEMPTS`` (default 6) and ``PREFIX_BACKOFF_S`` (default 2)."""
    return int(os.environ.get(f"{prefix}_ATTEMPTS", "6")), float(os.environ.get(f"{prefix}_BACKOFF_S", "2"))


def delay(attempt: int, backoff: float, response: Any = None) -> float:
    """Seconds before the next attempt: the server's Retry-After where it sends one (at most 5 min), else exponential."""
    retry_after = response.headers.get("Retry-After") if response is not None else None
    if retry_after:
        try:
            return min(float(retry_after), 300.0)
        except ValueError:
            pass
    return min(backoff * 2 ** (attempt - 1), 60.0)


class _BrokenOff(Exception):
    """A body ended before its promised length."""


def session() -> requests.Session:
    return requests.Session()


def ranged(http: requests.Session, url: str) -> OpenAt:
    return lambda start: http.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT_S, headers={"Range": f"bytes={start}-"} if start else {})


def fetch(url: str, open_at: OpenAt, dest: Path, expected: Entry, progress: Progress, policy: tuple[int, float]) -> Entry:
    """Download to ``dest`` (atomically) the bytes ``open_at`` serves, checked against ``expected``; ``policy`` is
    (attempts, backoff) as ``retry_policy`` gives it."""
    attempts, backoff = policy
    with atomic_destination(dest) as sink:
        verifier, total = Verifier(url, expected), expected.size
        for attempt in range(1, attempts + 1):
            try:
                with open_at(verifier.size) as response:
                    if response.status_code == 206 and verifier.size:
                        total = int(response.headers["Content-Range"].rsplit("/", 1)[1])
                    elif response.status_code == 200:
                        if verifier.size:  # the server sent the whole file again
                            sink.seek(0)
                            sink.truncate()
                        length = response.headers.get("Content-Length")
                        total = int(length) if length is not None else expected.size
                        verifier = Verifier(url, Entry(total, expected.sha256, expected.md5))
                    elif response.status_code in RETRIED:
                        raise _BrokenOff(f"HTTP {response.status_code}")
                    else:
                        kind = response.headers.get("Content-Type", "unknown type")
                        raise SyncError(f"{url}: the file server answered HTTP {response.status_code} ({kind}) instead of the file; "
                                        "nothing was kept")
                    for block in response.iter_content(CHUNK):
                        sink.write(block)
                        verifier.update(block)
                        progress(len(block))
                if total is not None and verifier.size < total:
                    raise _BrokenOff("cut short")
                return verifier.check()
            except (_BrokenOff, requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout) as exc:
                if attempt == attempts:
                    reason = str(exc) if isinstance(exc, _BrokenOff) else type(exc).__name__
                    raise SyncError(f"{url}: the download broke off at {verifier.size} of {total} bytes, {attempts} times "
                                    f"({reason}); nothing was kept") from None
                wait = delay(attempt, backoff)
                log.warning("%s broke off at %d of %s bytes; resuming in %.1f s (attempt %d of %d)", url, verifier.size, total,
                            wait, attempt, attempts)
                time.sleep(wait)
    raise AssertionError("unreachable")
