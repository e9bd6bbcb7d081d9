"""An extraction's videos wherever they live: a directory or CSV/JSON list here (``data_shards.sources``), a folder
``s3://BUCKET/PREFIX``, ``kaggle://datasets/OWNER/SLUG[/FOLDER]`` or ``ssh://HOST/ABS/FOLDER`` listed through its
store, or a list whose paths are URLs. A video that is not here is read on the machine that extracts it, one at a
time, into scratch space."""
from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from data_shards.sources import MSRVTT_TEST, MSRVTT_TRAIN, VideoEntry, from_list, from_msrvtt, from_names, list_videos
from data_shards.errors import ShardError
from jobs.contract import LocatedVideosInput
from sync import SyncError
from sync.remote_file import download, list_folder

LIST_SUFFIXES = (".csv", ".json")


def is_remote(location: str) -> bool:
    return "://" in location


def listed_videos(location: str, msrvtt_splits: str | None, default_split: str) -> list[VideoEntry]:
    """The videos of ``location`` (see the module), sorted as the plan wants them. MSR-VTT's split files may live
    elsewhere too (beside the videos in a Kaggle dataset, say): then those two files are read into scratch space."""
    if msrvtt_splits and is_remote(msrvtt_splits):
        with tempfile.TemporaryDirectory(prefix="streamapprox-splits-") as tmp:
            for name in (MSRVTT_TRAIN, MSRVTT_TEST):
                try:
                    download(f"{msrvtt_splits.rstrip('/')}/{name}", Path(tmp) / name)
                except SyncError as exc:
                    raise ShardError(f"--msrvtt-splits {msrvtt_splits}: cannot read {name} there ({exc}); the folder must hold "
                                     f"{MSRVTT_TRAIN} and {MSRVTT_TEST}") from None
            return listed_videos(location, tmp, default_split)
    if not is_remote(location):
        return list_videos(location, msrvtt_splits, default_split)
    if urlparse(location).scheme in ("http", "https") or location.lower().endswith(LIST_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="streamapprox-list-") as tmp:
            local = Path(tmp) / (PurePosixPath(urlparse(location).path).name or "videos.csv")
            download(location, local)
            return from_list(local, default_split, base=location.rsplit("/", 1)[0], origin=location)
    names = list(list_folder(location))
    if msrvtt_splits:
        return from_msrvtt(location, names, Path(msrvtt_splits))
    return from_names(location, names, default_split)


def video_sizes(location: str, entries: list[VideoEntry]) -> dict[str, int | None]:
    """Bytes of each listed video by its path: from the disk here, or as its store lists it (None where unknown)."""
    if not is_remote(location):
        return {e.path: Path(e.path).stat().st_size if Path(e.path).is_file() else None for e in entries}
    root = location.rsplit("/", 1)[0] if location.lower().endswith(LIST_SUFFIXES) else location.rstrip("/")
    listed = list_folder(root) if urlparse(root).scheme in ("s3", "kaggle", "ssh") else {}
    sizes = {}
    for entry in entries:
        found = listed.get(entry.path[len(root) + 1:]) if entry.path.startswith(root + "/") else None
        sizes[entry.path] = found.size if found is not None else None
    return sizes


def located_input(location: str, entries: list[VideoEntry], sizes: dict[str, int | None]) -> LocatedVideosInput:
    """What ``--check`` reports for a collection that stays where it is: how many videos, and their bytes where the
    store lists sizes (for the plan)."""
    known = [size for size in sizes.values() if size is not None]
    return LocatedVideosInput(location=location, videos=len(entries), bytes=sum(known) if known else None)


def fetch_video(entry: VideoEntry, scratch: Path) -> Path:
    """A video that is not here, read into ``scratch`` (the caller removes it after decoding)."""
    dest = scratch / f"{entry.video_id}{PurePosixPath(urlparse(entry.path).path).suffix}"
    try:
        download(entry.path, dest)
    except SyncError as exc:
        raise FileNotFoundError(f"cannot fetch {entry.path}: {exc}") from None
    return dest
