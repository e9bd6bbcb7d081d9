"""One file named by where it lives -- a local path, ``https://...`` (optionally ``#sha256=HEX``), ``s3://BUCKET/KEY``,
``kaggle://datasets/OWNER/SLUG/PATH`` or ``ssh://HOST/ABS/PATH`` (through this machine's ssh) -- made a local file on
the machine that asks, once: a fetched file is kept in the cache (``$STREAMAPPROX_CACHE/files``) beside a record of
where it came from and its sha256, so a second use of the same URL sends no request. A ``#sha256=`` the bytes do not
match keeps nothing and says so."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from data_shards.files import atomic_write_text, cache_root, hash_file
from sync.base import Entry, Store, SyncError
from sync.http import fetch, ranged, retry_policy, session
from sync.kaggle import KaggleDatasetStore
from sync.progress import TransferProgress
from sync.s3 import S3Store

SCHEMES = ("https", "http", "s3", "kaggle", "ssh")
RECORD = "record.json"


@dataclass(frozen=True)
class FileLocation:
    """Where a file lives, as a user writes it. ``sha256`` is the digest the user pinned (``#sha256=``), if any."""

    text: str  # as given, fragment included
    url: str  # without the fragment
    scheme: str  # "" for a local path
    sha256: str | None

    @classmethod
    def parse(cls, text: str) -> FileLocation:
        url, _, fragment = text.partition("#")
        sha256 = None
        if fragment:
            name, _, value = fragment.partition("=")
            if name != "sha256" or len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
                raise SyncError(f"{text}: the only fragment understood is #sha256=<64 hex digits>")
            sha256 = value.lower()
        scheme = urlparse(url).scheme if "://" in url else ""
        if scheme and scheme not in SCHEMES:
            raise SyncError(f"{text}: unknown scheme {scheme!r}: give a path, https://..., s3://BUCKET/KEY, kaggle://datasets/OWNER/SLUG/PATH "
                            "or ssh://HOST/ABS/PATH")
        location = cls(text, url, scheme, sha256)
        if scheme == "kaggle":
            location.kaggle_parts(folder=True)  # a file's form is checked where a file is wanted
        return location

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def needs_internet(self) -> bool:
        """Whether a machine must reach the internet to get it (a Kaggle kernel mounts kaggle:// instead)."""
        return self.scheme in ("https", "http", "s3")

    def kaggle_parts(self, folder: bool = False) -> tuple[str, str, str, str]:
        """("datasets" | "models", OWNER, the dataset slug or model handle, the path inside it: a file's, or with
        ``folder`` a folder's, '' for the whole dataset)."""
        parsed = urlparse(self.url)
        parts = [p for p in (parsed.netloc + parsed.path).split("/") if p]
        if folder and len(parts) == 3 and parts[0] == "datasets":
            return "datasets", parts[1], parts[2], ""
        if len(parts) >= 4 and parts[0] == "datasets":
            return "datasets", parts[1], parts[2], "/".join(parts[3:])
        if len(parts) >= 6 and parts[0] == "models":  # models/OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/PATH
            handle_length = 5 if len(parts) >= 7 and parts[5].isdigit() else 4
            return "models", parts[1], "/".join(parts[2:1 + handle_length]), "/".join(parts[1 + handle_length:])
        raise SyncError(f"{self.text}: expected kaggle://datasets/OWNER/SLUG/PATH or "
                        "kaggle://models/OWNER/MODEL/FRAMEWORK/VARIATION[/VERSION]/PATH (the file inside)")


@dataclass(frozen=True)
class LocalFile:
    """A located file made local: ``path`` here, ``sha256`` of its bytes, ``location`` as the user gave it."""

    location: str
    path: Path
    sha256: str
    size: int
    fetched: bool  # False: it was here already (a local path, or the cache)


def cache_dir(location: FileLocation) -> Path:
    return cache_root() / "files" / hashlib.sha256(location.url.encode()).hexdigest()[:16]


def _cached(location: FileLocation, folder: Path, source: Entry | None) -> LocalFile | None:
    """The cached copy, when its record says it is this URL's whole file (and the pinned or listed digest agrees)."""
    record_path = folder / RECORD
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    path = folder / record["name"]
    if record["url"] != location.url or not path.is_file() or path.stat().st_size != record["size"]:
        return None
    if location.sha256 and record["sha256"] != location.sha256:
        return None
    if source is not None and not Entry(record["size"], record["sha256"], record.get("md5"), record.get("etag")).same_content(source):
        return None
    return LocalFile(location.text, path, record["sha256"], record["size"], False)


def _store_and_name(location: FileLocation, folder: bool = False) -> tuple[Store, str]:
    """The store that holds the file (or, with ``folder``, the folder) and its name there."""
    parsed = urlparse(location.url)
    if location.scheme == "s3":
        key = parsed.path.lstrip("/")
        if folder:
            if not parsed.netloc:
                raise SyncError(f"{location.text}: expected s3://BUCKET/PREFIX")
            return S3Store(location.url.rstrip("/"), parsed.netloc, key.rstrip("/")), ""
        if not parsed.netloc or not key or key.endswith("/"):
            raise SyncError(f"{location.text}: expected s3://BUCKET/KEY (a file)")
        prefix, _, name = key.rpartition("/")
        return S3Store(f"s3://{parsed.netloc}/{prefix}", parsed.netloc, prefix), name
    if location.scheme == "ssh":
        from sync.ssh import SshStore

        path = parsed.path.rstrip("/")
        if not parsed.netloc or not path:
            raise SyncError(f"{location.text}: expected ssh://HOST/ABSOLUTE/PATH (HOST as ssh takes it: alias, user@host, host:port)")
        if folder:
            return SshStore(location.url.rstrip("/"), parsed.netloc, path, checksums=False), ""
        parent, _, name = path.rpartition("/")
        return SshStore(f"ssh://{parsed.netloc}{parent}", parsed.netloc, parent or "/", checksums=False), name
    if location.scheme != "kaggle":
        raise SyncError(f"{location.text}: listed and read through a store only for s3://, kaggle://datasets/ and ssh:// locations")
    kind, owner, handle, inside = location.kaggle_parts(folder)
    if kind == "models":
        raise SyncError(f"{location.text}: Kaggle models are mounted on Kaggle kernels (launch kaggle); elsewhere download the model "
                        "with `kaggle models variations versions download` and give the file's path")
    return KaggleDatasetStore(f"kaggle-dataset://{owner}/{handle}", owner, handle), inside


def list_folder(text: str) -> dict[str, Entry]:
    """The files under an ``s3://BUCKET/PREFIX``, ``kaggle://datasets/OWNER/SLUG[/FOLDER]`` or ``ssh://HOST/ABS/FOLDER``
    (relative path -> entry)."""
    store, inside = _store_and_name(FileLocation.parse(text), folder=True)
    prefix = f"{inside.strip('/')}/" if inside.strip("/") else ""
    return {rel[len(prefix):]: entry for rel, entry in store.list().items() if rel.startswith(prefix)}


def download(text: str, dest: Path) -> Entry:
    """One remote file (a URL, ``s3://``, ``kaggle://datasets/...``, ``ssh://``) to ``dest``, not cached: a video read once."""
    location = FileLocation.parse(text)
    if location.scheme in ("https", "http"):
        with session() as http:
            return fetch(location.url, ranged(http, location.url), dest, Entry(None), lambda n: None, retry_policy("STREAMAPPROX_HTTP"))
    store, name = _store_and_name(location)
    return store.download(name, dest, Entry(None), lambda n: None)


def local_file(text: str) -> LocalFile:
    """``text`` (a path or a URL, see the module) as a file here, fetched into the cache if it is not here yet."""
    location = FileLocation.parse(text)
    if not location.remote:
        path = Path(location.url).expanduser()
        if not path.is_file():
            raise SyncError(f"{path}: file not found")
        size, (digest,) = hash_file(path, "sha256")
        if location.sha256 and digest != location.sha256:
            raise SyncError(f"{path}: sha256 {digest[:12]}... is not the #sha256={location.sha256[:12]}... asked for")
        return LocalFile(text, path, digest, size, False)
    folder = cache_dir(location)
    if location.scheme in ("https", "http"):
        found = _cached(location, folder, None)
        if found:
            return found
        name = Path(urlparse(location.url).path).name or "download"
        progress = TransferProgress(0, 1, f"fetching {location.url}")
        with session() as http:
            got = fetch(location.url, ranged(http, location.url), folder / name, Entry(None), progress.add_bytes,
                        retry_policy("STREAMAPPROX_HTTP"))
        progress.close()
        return _record(location, folder, name, got)
    store, inside = _store_and_name(location)
    listed = store.list()
    if inside not in listed:
        raise SyncError(f"{location.text}: no such file there ({len(listed)} files listed, e.g. {sorted(listed)[:3]})")
    source = listed[inside]
    found = _cached(location, folder, source)
    if found:
        return found
    name = Path(inside).name
    progress = TransferProgress(source.size or 0, 1, f"fetching {location.url}")
    got = store.download(inside, folder / name, source, progress.add_bytes)
    progress.close()
    return _record(location, folder, name, Entry(got.size, got.sha256, source.md5, source.etag))


def _record(location: FileLocation, folder: Path, name: str, got: Entry) -> LocalFile:
    """Keep the fetched file with its record, or -- when its bytes are not the pinned ones -- nothing."""
    assert got.sha256 is not None and got.size is not None  # a download always hashes what it wrote
    if location.sha256 and got.sha256 != location.sha256:
        (folder / name).unlink()
        raise SyncError(f"{location.text}: the bytes fetched have sha256 {got.sha256[:12]}..., not the #sha256={location.sha256[:12]}... "
                        "pinned; nothing was kept (check the URL, or pin the new digest if the file changed on purpose)")
    atomic_write_text(folder / RECORD, json.dumps({"url": location.url, "name": name, "size": got.size, "sha256": got.sha256,
                                                   "md5": got.md5, "etag": got.etag}, indent=1) + "\n")
    return LocalFile(location.text, folder / name, got.sha256, got.size, True)
