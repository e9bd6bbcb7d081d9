"""Byte and file progress: a tqdm bar on a terminal, periodic log lines otherwise."""
from __future__ import annotations

import logging
import sys
import threading
import time

from tqdm import tqdm

log = logging.getLogger("streamapprox.sync")


class TransferProgress:
    def __init__(self, total_bytes: int, total_files: int, label: str, interval_s: float = 5.0):
        self.total_bytes, self.total_files, self.label, self.interval_s = total_bytes, total_files, label, interval_s
        self.moved, self.files = 0, 0
        self._lock = threading.Lock()
        self._last_log = time.monotonic()
        self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label) if sys.stderr.isatty() else None

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.moved += count
            if self._bar is not None:
                self._bar.update(count)
            elif time.monotonic() - self._last_log >= self.interval_s:
                self._last_log = time.monotonic()
                self._log()

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def _log(self) -> None:
        log.info("%s: %d/%d files, %.1f/%.1f MB", self.label, self.files, self.total_files, self.moved / 1e6, self.total_bytes / 1e6)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
