"""The vector index: Qdrant through ``qdrant-client``, embedded on disk (a directory) or a server (a URL), is the
record the index job writes; queries read a ``Snapshot`` of it as arrays.

Three collections share a name prefix:
- ``<name>_videos``: one point per video, named vectors ``student`` (what the cheap pipeline indexes)
  and ``teacher`` (the dense embedding, kept so users can measure what the cheap index costs them);
  payload video_id, split, has_audio, duration_s, source, shard.
- ``<name>_frames``: one point per sampled frame, its CLIP image embedding; payload video_id, frame, t (s), shard.
- ``<name>_state``: one point whose payload says which student built the index and which shards are
  in it: the record that makes re-indexing a no-op and an interrupted index resumable, wherever the
  index lives.
Point ids are UUIDs derived from the video id (and frame number), so re-upserting a shard after an
interruption overwrites rather than duplicates.

Why a snapshot: the embedded mode reads every point back when it opens (a minute at 100k videos) and
answers a frame lookup by one video with a filtered scan of every frame, so a request cost one scan
per result. The index job therefore also writes ``DIR/arrays/<name>/``: memory-mapped numpy arrays
(vectors, frame offsets per video) and the payloads, committed by an atomic pointer; a server opens
them in a second and ranks exactly (brute force) in a few matrix products per request.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

STATE_FORMAT = 1
SNAPSHOT_FORMAT = 1
UPSERT_BATCH = 256
_NAMESPACE = uuid.UUID("6f1c9a52-3f0e-4b7e-9a55-2d1b5c1e0a11")


class SearchIndexError(RuntimeError):
    """A missing, locked or mismatched index; the message says which and what to do."""


def video_point_id(video_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"video/{video_id}"))


def frame_point_id(video_id: str, frame: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"frame/{video_id}/{frame}"))


def is_server(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class VectorIndex:
    """One open index. Embedded mode locks its directory: one process (indexer or server) at a time."""

    def __init__(self, location: str | Path, name: str = "streamapprox", create: bool = False):
        from qdrant_client import QdrantClient

        self.location, self.name = str(location), name
        self.videos, self.frames, self._state = f"{name}_videos", f"{name}_frames", f"{name}_state"
        if is_server(self.location):
            import os

            self.client = QdrantClient(url=self.location, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60)
        else:
            path = Path(self.location).expanduser()
            if not create and not path.is_dir():
                raise SearchIndexError(f"{path}: no index there; build one with `launch local index --run RUN --shards PATH --index {path}`")
            path.mkdir(parents=True, exist_ok=True)
            try:
                self.client = QdrantClient(path=str(path))
            except RuntimeError as exc:
                raise SearchIndexError(f"{path}: the index is open in another process (an indexer or `launch serve`); stop it first, "
                                  f"or serve the index from a Qdrant server ({exc})") from None
        if not create and not self.client.collection_exists(self._state):
            raise SearchIndexError(f"{self.location}: no StreamApprox index named {name!r} there; build one with `launch local index`")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # state ----------------------------------------------------------------------------------------
    def state(self) -> dict | None:
        if not self.client.collection_exists(self._state):
            return None
        points = self.client.retrieve(self._state, ids=[video_point_id("__state__")], with_payload=True)
        return points[0].payload if points else None

    def save_state(self, state: dict) -> None:
        from qdrant_client import models

        self.client.upsert(self._state, points=[models.PointStruct(id=video_point_id("__state__"), vector=[1.0], payload=state)],
                           wait=True)

    def create(self, video_dim: int, frame_dim: int) -> None:
        """The three collections. Vectors and queries are unit-normalised here and compared by dot product,
        so scores are cosines; Qdrant's own cosine does the same on a server, but its embedded mode
        re-normalises every stored vector on every query (23x slower than this at 10k vectors)."""
        from qdrant_client import models

        dot = models.Distance.DOT
        self.client.create_collection(self.videos, vectors_config={
            "student": models.VectorParams(size=video_dim, distance=dot),
            "teacher": models.VectorParams(size=video_dim, distance=dot)})
        self.client.create_collection(self.frames, vectors_config={"clip": models.VectorParams(size=frame_dim, distance=dot)})
        self.client.create_collection(self._state, vectors_config=models.VectorParams(size=1, distance=dot))
        if is_server(self.location):  # filtered frame lookups by video; the embedded mode scans anyway
            for collection in (self.videos, self.frames):
                for key in ("video_id", "shard"):
                    self.client.create_payload_index(collection, key, models.PayloadSchemaType.KEYWORD)

    def drop(self) -> None:
        for collection in (self.videos, self.frames, self._state):
            if self.client.collection_exists(collection):
                self.client.delete_collection(collection)

    # writes ---------------------------------------------------------------------------------------
    def upsert_videos(self, rows: list[dict], student: np.ndarray, teacher: np.ndarray) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=video_point_id(row["video_id"]), payload=row,
                                     vector={"student": s.tolist(), "teacher": t.tolist()})
                  for row, s, t in zip(rows, unit(student), unit(teacher))]
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(self.videos, points=points[start : start + UPSERT_BATCH], wait=True)

    def upsert_frames(self, rows: list[dict], clip: np.ndarray) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=frame_point_id(row["video_id"], row["frame"]), payload=row, vector={"clip": c.tolist()})
                  for row, c in zip(rows, unit(clip))]
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(self.frames, points=points[start : start + UPSERT_BATCH], wait=True)

    def delete_shard(self, shard: str) -> None:
        """Remove a shard's videos and their frames (the shard left or changed in the shard set)."""
        from qdrant_client import models

        for collection in (self.videos, self.frames):
            self.client.delete(collection, points_selector=models.FilterSelector(filter=_match("shard", shard)), wait=True)

    # reads ----------------------------------------------------------------------------------------
    def count(self) -> dict:
        return {"videos": self.client.count(self.videos, exact=True).count,
                "frames": self.client.count(self.frames, exact=True).count}

    def _scroll(self, collection: str, vectors, batch: int = 1024) -> Iterator:
        offset = None
        while True:
            points, offset = self.client.scroll(collection, limit=batch, offset=offset, with_payload=True, with_vectors=vectors)
            yield from points
            if offset is None:
                return

    def export(self) -> Snapshot:
        """Everything queries need, read back once: what the index job writes next to an embedded index, and what
        ``launch serve`` loads from a server at start."""
        state = self.state() or {}
        dims = state.get("dims") or {}
        videos = sorted(self._scroll(self.videos, ["student", "teacher"]), key=lambda p: p.payload["video_id"])
        rows = [dict(p.payload) for p in videos]
        position = {row["video_id"]: i for i, row in enumerate(rows)}
        student = np.array([p.vector["student"] for p in videos], np.float32).reshape(len(rows), dims.get("video", 0))
        teacher = np.array([p.vector["teacher"] for p in videos], np.float32).reshape(len(rows), dims.get("video", 0))
        del videos
        owner, number, times, blocks, block = [], [], [], [], []
        for point in self._scroll(self.frames, ["clip"], batch=4096):
            if point.payload["video_id"] in position:
                owner.append(position[point.payload["video_id"]])
                number.append(point.payload["frame"])
                times.append(np.nan if point.payload.get("t") is None else point.payload["t"])
                block.append(point.vector["clip"])
            if len(block) == 4096:
                blocks.append(np.array(block, np.float32))
                block = []
        blocks.append(np.array(block, np.float32).reshape(len(block), dims.get("frame", 0)))
        order = np.lexsort((np.array(number, np.int64), np.array(owner, np.int64)))
        offsets = np.searchsorted(np.array(owner, np.int64)[order], np.arange(len(rows) + 1)).astype(np.int64)
        return Snapshot(state, rows, student, teacher, np.concatenate(blocks)[order], np.array(number, np.int32)[order],
                        np.array(times, np.float64)[order], offsets)


class Snapshot:
    """What queries read, as arrays: per video (sorted by id) its payload and unit student and teacher vectors;
    per frame, grouped by video in frame order, its unit CLIP vector, number and time (``offsets[i]:offsets[i + 1]``
    are video i's). Read-only, so concurrent requests need no lock. Memory-mapped from an index directory, where
    the index job writes it (start-up reads no points); loaded from a Qdrant server once at start."""

    def __init__(self, state: dict, rows: list[dict], student: np.ndarray, teacher: np.ndarray, clip: np.ndarray,
                 frame_numbers: np.ndarray, frame_times: np.ndarray, offsets: np.ndarray):
        self._state, self.rows, self.student, self.teacher = state, rows, student, teacher
        self.clip, self.frame_numbers, self.frame_times, self.offsets = clip, frame_numbers, frame_times, offsets
        self.ids = [row["video_id"] for row in rows]
        self.position = {video_id: i for i, video_id in enumerate(self.ids)}

    @classmethod
    def open(cls, location: str | Path, name: str = "streamapprox") -> Snapshot:
        if is_server(str(location)):
            with VectorIndex(location, name) as index:
                return index.export()
        path = Path(location).expanduser()
        if not path.is_dir():
            raise SearchIndexError(f"{path}: no index there; build one with `launch local index --run RUN --shards PATH --index {path}`")
        pointer = read_pointer(path, name)
        if pointer is None:
            raise SearchIndexError(f"{path}: no complete StreamApprox index named {name!r} there (none was built, or an index run "
                                   "is under way or was interrupted); build or finish it with `launch local index`")
        folder = snapshot_root(path, name) / pointer["generation"]
        try:
            arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in ARRAYS}
            rows = json.loads((folder / "videos.json").read_text())
            state = json.loads((folder / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise SearchIndexError(f"{folder}: unreadable index snapshot ({exc}); rerun `launch local index` to rewrite it") from None
        return cls(state, rows, **arrays)

    def state(self) -> dict:
        return self._state

    def count(self) -> dict:
        return {"videos": len(self.rows), "frames": len(self.clip)}

    def close(self) -> None:
        """Nothing to release: the maps go with the object."""

    def top_videos(self, vector: np.ndarray, k: int, space: str = "student", exclude: int | None = None) -> list[tuple[int, float]]:
        """Exact top-k by cosine: (row, score), best first, ties by row (as a stable sort of all scores)."""
        scores = (self.student if space == "student" else self.teacher) @ unit(vector)
        if exclude is not None:
            scores[exclude] = -np.inf
        k = min(k, len(scores) - (exclude is not None))
        if k <= 0:
            return []
        candidates = np.arange(len(scores))
        if k < len(scores):
            candidates = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
        best = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [(int(row), float(scores[row])) for row in best]

    def frames(self, row: int) -> slice:
        return slice(int(self.offsets[row]), int(self.offsets[row + 1]))

    def best_frames(self, vector: np.ndarray, row: int, n: int) -> list[dict]:
        span = self.frames(row)
        scores = self.clip[span] @ vector
        best = np.lexsort((np.arange(len(scores)), -scores))[:n]
        return [{"frame": int(self.frame_numbers[span.start + i]), "t": self.frame_time(span.start + i), "score": float(scores[i])}
                for i in best]

    def frame_time(self, i: int) -> float | None:
        t = float(self.frame_times[i])
        return None if np.isnan(t) else t

    def mean_frame(self, row: int) -> np.ndarray | None:
        span = self.frames(row)
        return None if span.start == span.stop else unit(np.asarray(self.clip[span]).mean(axis=0))


ARRAYS = ("student", "teacher", "clip", "frame_numbers", "frame_times", "offsets")


def snapshot_root(index: str | Path, name: str) -> Path:
    return Path(index).expanduser() / "arrays" / name


def read_pointer(index: str | Path, name: str) -> dict | None:
    """The committed snapshot's record (generation, shards in it), or None: none written, or one being replaced."""
    try:
        return json.loads((snapshot_root(index, name) / "CURRENT").read_text())
    except (OSError, ValueError):
        return None


def retract_snapshot(index: str | Path, name: str) -> None:
    """Before the index changes: no server may start on a snapshot that no longer matches it."""
    (snapshot_root(index, name) / "CURRENT").unlink(missing_ok=True)


def write_snapshot(index: str | Path, name: str, snapshot: Snapshot) -> None:
    """Write the arrays into a new generation folder, then commit it by replacing CURRENT atomically; older
    generations go after (a running server keeps reading the maps it holds). A write that fails (a full disk) removes
    the new folder and raises the OSError naming the file it was writing; CURRENT, and what it points at, stay as they
    were."""
    from data_shards.files import atomic_destination

    root = snapshot_root(index, name)
    generation = f"{time.time_ns():x}"
    folder = root / generation
    state = snapshot.state()
    pointer = {"format": SNAPSHOT_FORMAT, "generation": generation, "done": state.get("done"),
               "student": (state.get("student") or {}).get("checkpoint_sha256")}
    files: list[tuple[Path, np.ndarray | bytes]] = [(folder / f"{key}.npy", getattr(snapshot, key)) for key in ARRAYS]
    files += [(folder / "videos.json", json.dumps(snapshot.rows).encode()), (folder / "state.json", json.dumps(state).encode()),
              (root / "CURRENT", json.dumps(pointer).encode())]  # last: the commit
    for path, content in files:
        try:
            with atomic_destination(path) as handle:  # its temp file goes if the write fails
                if isinstance(content, bytes):
                    handle.write(content)
                else:
                    _save_npy(handle, content)
        except BaseException as exc:  # a full disk, or Ctrl-C: no part of this generation stays
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, OSError):
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise
    for old in root.iterdir():
        if old.is_dir() and old.name != generation:
            shutil.rmtree(old, ignore_errors=True)


def _save_npy(handle: BinaryIO, array: np.ndarray) -> None:
    """``np.save``'s bytes (a format 1.0 header, then the C-order data) written through the handle's own ``write``: numpy
    writes to a real file with ``tofile``, whose short write on a full disk raises an OSError without its errno."""
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
    if array.size:
        handle.write(array.data.cast("B"))


def _match(key: str, value: str):
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])


def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
