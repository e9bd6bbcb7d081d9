"""Which videos to extract: a directory, a CSV/JSON list (id, path, split), or MSR-VTT's split files.

Every source becomes the same sorted list of ``VideoEntry``; that list, cut into fixed shards, is
the extraction plan every worker derives alike. A listed file that does not exist is not dropped:
extraction records it as a failure, so a manifest always accounts for every listed video.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from data_shards.errors import ShardError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg"}
SPLITS = ("train", "val", "test")
# MSR-VTT as CLIP4Clip ships it: 7k training ids and the 1k-A ("JSFusion") test ids.
MSRVTT_TRAIN, MSRVTT_TEST = "MSRVTT_train.7k.csv", "MSRVTT_JSFUSION_test.csv"


@dataclass(frozen=True)
class VideoEntry:
    video_id: str
    path: str
    split: str

    def to_dict(self) -> dict:
        return asdict(self)


def _checked(entries: list[VideoEntry], origin: str) -> list[VideoEntry]:
    seen: dict[str, VideoEntry] = {}
    for entry in entries:
        if not entry.video_id:
            raise ShardError(f"{origin}: a video with an empty id ({entry.path})")
        if entry.video_id in seen:
            raise ShardError(f"{origin}: video id {entry.video_id!r} listed twice ({seen[entry.video_id].path}, {entry.path})")
        seen[entry.video_id] = entry
    if not entries:
        raise ShardError(f"{origin}: no videos found (looked for {', '.join(sorted(VIDEO_SUFFIXES))})")
    return sorted(entries, key=lambda e: (SPLITS.index(e.split) if e.split in SPLITS else len(SPLITS), e.split, e.video_id))


def from_names(root: str, names: list[str], default_split: str) -> list[VideoEntry]:
    """The video files among ``names`` (relative to ``root``: a directory here, or a folder's URL); a file inside a
    ``train``/``val``/``test`` folder takes that split."""
    entries = []
    for name in sorted(n for n in names if PurePosixPath(n).suffix.lower() in VIDEO_SUFFIXES):
        rel = PurePosixPath(name)
        split = next((part for part in rel.parts[:-1] if part in SPLITS), default_split)
        entries.append(VideoEntry(rel.stem, f"{root.rstrip('/')}/{name}", split))
    return _checked(entries, root)


def from_directory(root: Path, default_split: str) -> list[VideoEntry]:
    """Video files under ``root`` (see ``from_names``)."""
    return from_names(str(root), [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()], default_split)


def _rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        rows = data.get("videos") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ShardError(f"{path}: expected a list of {{id, path, split}} objects (or {{\"videos\": [...]}})")
        return rows
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def from_list(path: Path, default_split: str, base: str | None = None, origin: str | None = None) -> list[VideoEntry]:
    """CSV or JSON rows with ``id`` (or ``video_id``), ``path`` (relative to the list, absolute, or a URL) and optional
    ``split``. ``base``: where relative paths start when the list was fetched from elsewhere (its folder's URL)."""
    origin = origin or str(path)
    entries = []
    for number, row in enumerate(_rows(path), start=2 if path.suffix.lower() == ".csv" else 0):
        video_id = row.get("id") or row.get("video_id")
        if not video_id or not row.get("path"):
            where = f"line {number}" if path.suffix.lower() == ".csv" else f"entry {number}"
            raise ShardError(f"{origin} {where}: needs 'id' (or 'video_id') and 'path' fields, got {sorted(row)}")
        given = str(row["path"])
        if "://" in given or Path(given).is_absolute():
            located = given
        else:
            located = f"{base.rstrip('/')}/{given}" if base is not None else str(path.parent / given)
        entries.append(VideoEntry(str(video_id), located, row.get("split") or default_split))
    return _checked(entries, origin)


def _msrvtt_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise ShardError(f"{path}: MSR-VTT split file missing; --msrvtt-splits DIR must hold {MSRVTT_TRAIN} and {MSRVTT_TEST}")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "video_id" not in rows[0]:
        raise ShardError(f"{path}: expected a 'video_id' column")
    return sorted({row["video_id"] for row in rows})


def from_msrvtt(videos: str, names: list[str], splits_dir: Path, val_count: int = 500, seed: int = 0) -> list[VideoEntry]:
    """MSR-VTT: train 7k (``val_count`` of them carved out as validation, seeded) and test 1k-A; ``names`` are the
    files in the folder ``videos`` (a directory here, or a folder's URL)."""
    train, test = _msrvtt_ids(splits_dir / MSRVTT_TRAIN), _msrvtt_ids(splits_dir / MSRVTT_TEST)
    val = set(np.random.default_rng(seed).choice(train, size=min(val_count, len(train)), replace=False).tolist())
    files = {PurePosixPath(n).stem: n for n in names if "/" not in n and PurePosixPath(n).suffix.lower() in VIDEO_SUFFIXES}

    def entry(video_id: str, split: str) -> VideoEntry:
        return VideoEntry(video_id, f"{videos.rstrip('/')}/{files.get(video_id, f'{video_id}.mp4')}", split)

    entries = [entry(v, "val" if v in val else "train") for v in train] + [entry(v, "test") for v in test]
    return _checked(entries, f"{splits_dir} + {videos}")


def list_videos(source: str, msrvtt_splits: str | None = None, default_split: str = "train") -> list[VideoEntry]:
    path = Path(source)
    if not path.exists():
        raise ShardError(f"{source}: no such video directory or list")
    if msrvtt_splits:
        if not path.is_dir():
            raise ShardError(f"{source}: with --msrvtt-splits the input must be the directory of MSR-VTT videos")
        return from_msrvtt(str(path), [p.name for p in path.iterdir()], Path(msrvtt_splits))
    if path.is_dir():
        return from_directory(path, default_split)
    if path.suffix.lower() in {".csv", ".json"}:
        return from_list(path, default_split)
    raise ShardError(f"{source}: expected a directory of videos, a .csv or a .json list")
