"""The vector index: Qdrant through ``qdrant-client``, embedded on disk (a directory) or a server (a URL).

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
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STATE_FORMAT = 1
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

    def __enter__(self) -> "VectorIndex":
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
                  for row, s, t in zip(rows, _unit(student), _unit(teacher))]
        for start in range(0, len(points), UPSERT_BATCH):
            self.client.upsert(self.videos, points=points[start : start + UPSERT_BATCH], wait=True)

    def upsert_frames(self, rows: list[dict], clip: np.ndarray) -> None:
        from qdrant_client import models

        points = [models.PointStruct(id=frame_point_id(row["video_id"], row["frame"]), payload=row, vector={"clip": c.tolist()})
                  for row, c in zip(rows, _unit(clip))]
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

    def search_videos(self, vector: np.ndarray, k: int, using: str = "student", exclude: str | None = None) -> list:
        from qdrant_client import models

        flt = models.Filter(must_not=[models.HasIdCondition(has_id=[video_point_id(exclude)])]) if exclude else None
        return self.client.query_points(self.videos, query=_unit(vector).tolist(), using=using, limit=k,
                                        query_filter=flt, with_payload=True).points

    def best_frames(self, vector: np.ndarray, video_id: str, n: int) -> list:
        return self.client.query_points(self.frames, query=_unit(vector).tolist(), using="clip", limit=n,
                                        query_filter=_match("video_id", video_id), with_payload=True).points

    def video(self, video_id: str, vectors: bool = False):
        points = self.client.retrieve(self.videos, ids=[video_point_id(video_id)], with_payload=True,
                                      with_vectors=["student", "teacher"] if vectors else False)
        return points[0] if points else None

    def frames_of(self, video_id: str, vectors: bool = False) -> list:
        """A video's frame points in time order (payload frame, t; vector ``clip`` when asked)."""
        points, _ = self.client.scroll(self.frames, scroll_filter=_match("video_id", video_id), limit=10_000, with_payload=True,
                                       with_vectors=vectors)
        return sorted(points, key=lambda p: p.payload["frame"])

    def scroll_videos(self, batch: int = 1024) -> Iterator:
        offset = None
        while True:
            points, offset = self.client.scroll(self.videos, limit=batch, offset=offset, with_payload=True,
                                                with_vectors=["student", "teacher"])
            yield from points
            if offset is None:
                return

    def matrices(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every video's id and (unit) student and teacher vectors, sorted by id: for exact evaluation."""
        points = sorted(self.scroll_videos(), key=lambda p: p.payload["video_id"])
        ids = [p.payload["video_id"] for p in points]
        student = np.array([p.vector["student"] for p in points], np.float32)
        teacher = np.array([p.vector["teacher"] for p in points], np.float32)
        return ids, student, teacher


def _match(key: str, value: str):
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key=key, match=models.MatchValue(value=value))])


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
