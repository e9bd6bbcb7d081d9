"""``--storage URL`` (``s3://...`` or a path every node mounts): where a sweep, or a training run across a
Ray cluster's nodes, persists.

Two layers, each the tool made for it: Ray's own storage (``ray_storage``: Tune's and Train's ``storage_path``)
takes trial results and checkpoints straight from whichever node writes them -- since Ray 2.7 nothing is
synced to the head, so on a cluster this is the only place they survive -- and ``Mirror`` copies the rest of
the sweep directory (run.json, the trials table, ``best/``, logs) there through ``sync``, after every
finished trial and at most every ``interval_s`` otherwise, so an interrupted sweep resumes from another
machine and ``launch pull`` finds it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jobs.config import ConfigError
from sync import SyncError, sync

log = logging.getLogger("streamapprox.sweep")
LIVE = ("trials/", ".best.partial/")  # trials' working copies and an export in progress
RAY_OWNED = ("tune/", "ray-train/")  # written by Ray itself, straight to storage: the mirror leaves them alone


def durable(entries: dict) -> dict:
    return {rel: entry for rel, entry in entries.items() if not rel.startswith(LIVE + RAY_OWNED)}


def without_ray_owned(entries: dict) -> dict:
    """A run's storage without what Ray keeps there itself: the launcher and the nodes copy the run directory without
    it, since Ray restores it on its own terms."""
    return {rel: entry for rel, entry in entries.items() if not rel.startswith(RAY_OWNED)}


@dataclass(frozen=True)
class RayStorage:
    """A location as Ray's storage layer takes it: ``storage_path`` plus, for an S3-compatible endpoint, a pyarrow
    filesystem (built from the endpoint and the node's own credential chain: no key is pickled into Ray's state)."""

    path: str
    filesystem: object | None = None

    def child(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"


def ray_storage(url: str, endpoint_url: str | None = None) -> RayStorage:
    if url.startswith("s3://"):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            return RayStorage(url.rstrip("/"))
        import pyarrow.fs

        parsed = urlparse(endpoint)
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return RayStorage(url[len("s3://"):].rstrip("/"),
                          pyarrow.fs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https", region=region))
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or not Path(path).is_absolute():
        raise ConfigError(f"--storage {url}: Ray persists to s3://BUCKET/PREFIX or an absolute path every node mounts")
    return RayStorage(path.rstrip("/"))


class Mirror:
    def __init__(self, sweep_dir: Path, url: str, endpoint_url: str | None = None, interval_s: float = 60.0):
        self.sweep_dir, self.url, self.endpoint_url, self.interval_s = sweep_dir, url, endpoint_url, interval_s
        self.last_push = 0.0

    def push(self, strict: bool = True) -> None:
        """Make the storage copy equal the sweep directory; ``strict=False`` (mid-sweep, while trials
        write) logs a failure instead of raising: the next push repairs it."""
        try:
            report = sync(str(self.sweep_dir), self.url, select=durable, delete=True, endpoint_url=self.endpoint_url)
            log.info("storage: %s", report.summary())
        except (SyncError, OSError) as exc:
            if strict:
                raise
            log.warning("storage: mirroring to %s failed this time (%s); retrying later", self.url, exc)
        self.last_push = time.monotonic()

    def pull(self) -> None:
        report = sync(self.url, str(self.sweep_dir), select=durable, endpoint_url=self.endpoint_url)
        log.info("storage: %s", report.summary())

    def callback(self):
        """A Tune callback pushing after each finished trial, and on results once ``interval_s`` passed."""
        from ray.tune import Callback

        mirror = self

        class PushToStorage(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                mirror.push(strict=False)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if time.monotonic() - mirror.last_push >= mirror.interval_s:
                    mirror.push(strict=False)

        return PushToStorage()
