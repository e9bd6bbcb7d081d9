"""Storage URL -> store."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from sync.base import Store, SyncError
from sync.local import LocalStore


def open_store(url: str, endpoint_url: str | None = None) -> Store:
    """Plain path or ``file://`` | ``s3://bucket/prefix`` | ``kaggle://OWNER/KERNEL[/FOLDER]`` | ``kaggle-dataset://OWNER/SLUG``
    | ``ssh://HOST/ABS/PATH`` (read-only)."""
    text = str(url)
    if "://" not in text:
        return LocalStore(text, Path(text).expanduser())
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return LocalStore(text, Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise SyncError(f"{url}: an S3 URL names a bucket: s3://BUCKET/PREFIX")
        from sync.s3 import S3Store

        return S3Store(text, parsed.netloc, parsed.path, endpoint_url)
    if parsed.scheme in ("kaggle", "kaggle-dataset"):
        from sync.kaggle import KaggleDatasetStore, KaggleKernelOutputStore

        parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
        if parsed.scheme == "kaggle" and len(parts) >= 2:
            return KaggleKernelOutputStore(text, parts[0], parts[1], "/".join(parts[2:]))
        if len(parts) != 2:
            form = "kaggle://OWNER/KERNEL[/FOLDER]" if parsed.scheme == "kaggle" else "kaggle-dataset://OWNER/SLUG"
            raise SyncError(f"{url}: expected {form}")
        return KaggleDatasetStore(text, *parts)
    if parsed.scheme == "ssh":
        from sync.ssh import SshStore

        if not parsed.netloc or not parsed.path.startswith("/"):
            raise SyncError(f"{url}: expected ssh://HOST/ABSOLUTE/PATH (HOST as ssh takes it: alias, user@host, host:port)")
        return SshStore(text, parsed.netloc, parsed.path)
    raise SyncError(f"{url}: unknown storage scheme {parsed.scheme!r} (use a path, file://, s3://, kaggle://, kaggle-dataset:// or ssh://)")
