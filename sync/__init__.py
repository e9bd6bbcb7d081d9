"""Move directories between storage URLs -- local paths / ``file://``, ``s3://bucket/prefix``,
``kaggle://OWNER/KERNEL`` (outputs, read-only), ``kaggle-dataset://OWNER/SLUG`` (read-only) --
incrementally (a content manifest per side), checksummed, atomically and resumably.

Knows nothing about jobs: callers choose what to move with include globs.
"""
from sync.base import Entry, SyncError
from sync.engine import SyncReport, sync
from sync.stores import open_store

__all__ = ["Entry", "SyncError", "SyncReport", "open_store", "sync"]
