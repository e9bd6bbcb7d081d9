"""Queries over an index: text or an indexed video in, top-k videos with scores and, for each, the
best-matching frames with their timestamps out.

Text: the teacher family's text tower ranks videos by their student vectors (the cheap index); CLIP's
text tower ranks each result's frames. A video: its stored student vector ranks the others; its mean
frame embedding ranks each result's frames.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from search.store import Snapshot, unit

if TYPE_CHECKING:
    from model.text import QueryEncoders, QueryEncodersConfig

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
    from jobs.config import deep_merge
    from model.text import QueryEncodersConfig

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
    def __init__(self, index: Snapshot, encoders: QueryEncoders | None, sources: dict[str, str] | None = None):
        """``encoders`` None: video queries only (no text towers, e.g. synthetic shards or no weights here).
        ``sources``: video id -> file here, overriding where the indexing machine found them (thumbnails).
        Requests may run concurrently: the snapshot is read-only; the text towers take turns."""
        self.index, self.encoders, self.sources = index, encoders, sources or {}
        self.state = index.state() or {}
        self._towers = threading.Lock()
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
        with self._towers:
            video_query = self.encoders.videos.encode([text])[0]
            # without a frame tower (QueryEncoders(frames=False)) videos are still ranked, with no best frames
            frame_query = unit(self.encoders.frames.encode([text])[0]) if self.encoders.frames is not None else None
        hits = self.index.top_videos(video_query, k, space)
        return {"query": {"text": text, "k": k, "space": space}, "results": [self._result(h, frame_query, frames) for h in hits]}

    def search_video(self, video_id: str, k: int = 10, frames: int = 3, space: str = "student") -> dict:
        _check_range(k, frames, space)
        row = self._row(video_id)
        matrix = self.index.student if space == "student" else self.index.teacher
        hits = self.index.top_videos(matrix[row], k, space, exclude=row)
        frame_query = self.index.mean_frame(row)
        return {"query": {"video": video_id, "k": k, "space": space}, "results": [self._result(h, frame_query, frames) for h in hits]}

    def _row(self, video_id: str) -> int:
        row = self.index.position.get(video_id)
        if row is None:
            raise QueryError(f"video {video_id!r} is not in the index", status=404)
        return row

    def _result(self, hit: tuple[int, float], frame_query: np.ndarray | None, frames: int) -> dict:
        row, score = hit
        payload = dict(self.index.rows[row])
        best = [] if frame_query is None or frames == 0 else self.index.best_frames(frame_query, row, frames)
        payload.pop("shard", None)
        source = self.sources.get(payload["video_id"], payload.get("source"))
        payload["source"] = bool(source and Path(source).is_file())  # whether a thumbnail can be made here
        return {**payload, "score": score, "frames": best}

    def video(self, video_id: str) -> dict:
        row = self._row(video_id)
        payload = dict(self.index.rows[row])
        span = self.index.frames(row)
        payload["frames"] = [{"video_id": video_id, "frame": int(self.index.frame_numbers[i]), "t": self.index.frame_time(i),
                              "shard": payload.get("shard")} for i in range(span.start, span.stop)]
        return payload

    def source(self, video_id: str) -> str | None:
        return self.sources.get(video_id, self.index.rows[self._row(video_id)].get("source"))


def _check_range(k: int, frames: int, space: str) -> None:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k={k} is out of range: 1 <= k <= {MAX_K}")
    if not 0 <= frames <= MAX_FRAMES:
        raise QueryError(f"frames={frames} is out of range: 0 <= frames <= {MAX_FRAMES}")
    if space not in SPACES:
        raise QueryError(f"space={space!r}: one of {', '.join(SPACES)}")
