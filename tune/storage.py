"""``--storage URL``: the sweep directory mirrored to any sync URL (``s3://``, a path) while the sweep
runs -- after every finished trial and at most every ``interval_s`` otherwise -- so an interrupted
sweep can be resumed from another machine. Uses ``sync`` (incremental, verified), not Ray's storage
layer, so the same credentials, endpoints and manifests apply as for ``launch sync``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from sync import SyncError, sync

log = logging.getLogger("streamapprox.sweep")
LIVE = ("trials/", ".best.partial/")  # trials' working copies (their state is in tune/) and an export in progress


def durable(entries: dict) -> dict:
    return {rel: entry for rel, entry in entries.items() if not rel.startswith(LIVE)}


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
