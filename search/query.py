"""Queries over an index: text or an indexed video in, top-k videos with scores and, for each, the
best-matching frames with their timestamps out.

Text: the teacher family's text tower ranks videos by their student vectors (the cheap index); CLIP's
text tower ranks each result's frames. A video: its stored student vector ranks the others; its mean
frame embedding ranks each result's frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.config import deep_merge
from model.text import QueryEncoders, QueryEncodersConfig
from search.store import VectorIndex

MAX_K = 100
MAX_FRAMES = 20
SPACES = ("student", "teacher")


class QueryError(ValueError):
    """A query the index cannot answer (empty text, k out of range, unknown video); HTTP 4xx."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def encoders_config(state: dict, overrides: dict) -> QueryEncodersConfig:
    """The text towers that match the index: those the shard set was extracted with, then ``overrides``."""
    extracted = (state.get("shards") or {}).get("encoders_config") or {}
    data: dict = {}
    teacher = extracted.get("teacher") or {}
    if teacher.get("kind") == "dense_clip":
        data["video_text"] = "clip"
        if teacher.get("clip"):
            data["video_clip"] = teacher["clip"]
    if teacher.get("imagebind"):
        data["imagebind"] = teacher["imagebind"]
    clip = (extracted.get("student") or {}).get("clip")
    if clip:
        data["clip"] = clip
    if (state.get("shards") or {}).get("encoders", {}).get("random_init"):
        data["random_init"] = True  # random-init features: only random-init towers have anything to do with them
    deep_merge(data, overrides)
    return QueryEncodersConfig.model_validate(data)


class SearchEngine:
    def __init__(self, index: VectorIndex, encoders: QueryEncoders | None, sources: dict[str, str] | None = None):
        """``encoders`` None: video queries only (no text towers, e.g. synthetic shards or no weights here).
        ``sources``: video id -> file here, overriding where the indexing machine found them (thumbnails)."""
        self.index, self.encoders, self.sources = index, encoders, sources or {}
        self.state = index.state() or {}
        dims = self.state.get("dims", {})
        if encoders is not None:
            encoders.check_dims(dims.get("video"), dims.get("frame"))

    def search_text(self, text: str, k: int = 10, frames: int = 3, space: str = "student") -> dict:
        text = (text or "").strip()
        if not text:
            raise QueryError("empty query: give q=some text, or video=ID to search by an indexed video")
        _check_range(k, frames, space)
        if self.encoders is None:
            raise QueryError("text search is off: this service runs without text towers (--no-text); query by video=ID", status=400)
        video_query = self.encoders.videos.encode([text])[0]
        frame_query = self.encoders.frames.encode([text])[0]
        hits = self.index.search_videos(video_query, k, using=space)
        return {"query": {"text": text, "k": k, "space": space}, "results": [self._result(h, frame_query, frames) for h in hits]}

    def search_video(self, video_id: str, k: int = 10, frames: int = 3, space: str = "student") -> dict:
        _check_range(k, frames, space)
        point = self.index.video(video_id, vectors=True)
        if point is None:
            raise QueryError(f"video {video_id!r} is not in the index", status=404)
        frame_points = self.index.frames_of(video_id, vectors=True)
        frame_query = np.mean([p.vector["clip"] for p in frame_points], axis=0) if frame_points else None
        hits = self.index.search_videos(np.array(point.vector[space]), k, using=space, exclude=video_id)
        return {"query": {"video": video_id, "k": k, "space": space}, "results": [self._result(h, frame_query, frames) for h in hits]}

    def _result(self, hit, frame_query: np.ndarray | None, frames: int) -> dict:
        payload = dict(hit.payload)
        best = [] if frame_query is None or frames == 0 else self.index.best_frames(frame_query, payload["video_id"], frames)
        payload.pop("shard", None)
        source = self.sources.get(payload["video_id"], payload.get("source"))
        payload["source"] = bool(source) and Path(source).is_file()  # whether a thumbnail can be made here
        return {**payload, "score": float(hit.score),
                "frames": [{"frame": f.payload["frame"], "t": f.payload["t"], "score": float(f.score)} for f in best]}

    def video(self, video_id: str) -> dict:
        point = self.index.video(video_id)
        if point is None:
            raise QueryError(f"video {video_id!r} is not in the index", status=404)
        payload = dict(point.payload)
        payload["frames"] = [p.payload for p in self.index.frames_of(video_id)]
        return payload

    def source(self, video_id: str) -> str | None:
        point = self.index.video(video_id)
        if point is None:
            raise QueryError(f"video {video_id!r} is not in the index", status=404)
        return self.sources.get(video_id, point.payload.get("source"))


def _check_range(k: int, frames: int, space: str) -> None:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k={k} is out of range: 1 <= k <= {MAX_K}")
    if not 0 <= frames <= MAX_FRAMES:
        raise QueryError(f"frames={frames} is out of range: 0 <= frames <= {MAX_FRAMES}")
    if space not in SPACES:
        raise QueryError(f"space={space!r}: one of {', '.join(SPACES)}")
