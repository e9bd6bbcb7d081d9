"""Frame sampling strategies: which frames of a video an encoder sees.

A strategy maps (frames in the video, frames wanted, a seeded generator) to ``groups``: one list of
frame indices per output frame. An output frame is the pixel mean of its group, so "mean frame" is a
strategy like the others and every other strategy has one-element groups. Seeds come from the video
id (``video_rng``), never from the worker, so any worker picks the same frames for the same video.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

Groups = list[list[int]]


class TooShort(ValueError):
    """The video has fewer frames than the strategy needs; the message says how many of each."""


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{video_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _evenly(candidates: np.ndarray, count: int) -> list[int]:
    """``count`` indices spread evenly over ``candidates``: the centre of each of ``count`` equal segments."""
    positions = ((np.arange(count) + 0.5) * len(candidates) / count).astype(int)
    return [int(candidates[p]) for p in positions]


def _need(total: int, count: int, name: str) -> None:
    if total < count:
        raise TooShort(f"{total} decodable frames, sampling {name!r} needs {count}")


def uniform(total: int, count: int, rng: np.random.Generator) -> Groups:
    _need(total, count, "uniform")
    return [[i] for i in _evenly(np.arange(total), count)]


def middle(total: int, count: int, rng: np.random.Generator) -> Groups:
    """``count`` consecutive frames centred on the middle frame."""
    _need(total, count, "middle")
    start = total // 2 - count // 2
    return [[start + i] for i in range(count)]


def keyframes(total: int, count: int, rng: np.random.Generator) -> Groups:
    """Start, middle and end frame."""
    if count != 3:
        raise ValueError(f"sampling 'keyframes' gives 3 frames (start, middle, end), not {count}")
    _need(total, 3, "keyframes")
    return [[0], [total // 2], [total - 1]]


def original(total: int, count: int, rng: np.random.Generator) -> Groups:
    """The first StreamApprox scheme: second, middle and second-to-last frame."""
    if count != 3:
        raise ValueError(f"sampling 'original' gives 3 frames (second, middle, second-to-last), not {count}")
    _need(total, 4, "original")
    return [[1], [total // 2], [total - 2]]


def mean(total: int, count: int, rng: np.random.Generator, per_group: int = 8) -> Groups:
    """Each output frame is the mean of up to ``per_group`` frames spread over its 1/count of the video."""
    _need(total, count, "mean")
    bounds = np.linspace(0, total, count + 1).astype(int)
    return [_evenly(np.arange(lo, hi), min(per_group, hi - lo)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def weighted(total: int, count: int, rng: np.random.Generator) -> Groups:
    """Distinct frames drawn with probability proportional to their position: later frames favoured."""
    _need(total, count, "weighted")
    weights = np.arange(1, total + 1, dtype=np.float64)
    picked = rng.choice(total, size=count, replace=False, p=weights / weights.sum())
    return [[int(i)] for i in sorted(picked)]


def dropout(total: int, count: int, rng: np.random.Generator, rate: float = 0.3) -> Groups:
    """Drop ``rate`` of the frames at random, then spread ``count`` evenly over the survivors."""
    kept = np.sort(rng.permutation(total)[: total - int(rate * total)])
    _need(len(kept), count, "dropout")
    return [[i] for i in _evenly(kept, count)]


STRATEGIES: dict[str, Callable[[int, int, np.random.Generator], Groups]] = {
    "uniform": uniform,
    "middle": middle,
    "keyframes": keyframes,
    "original": original,
    "mean": mean,
    "weighted": weighted,
    "dropout": dropout,
}


def sample_frames(strategy: str, total: int, count: int, rng: np.random.Generator) -> Groups:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown frame sampling {strategy!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](total, count, rng)


def check_strategy(strategy: str, count: int) -> None:
    """Fail at config time, not on the first video, when a strategy cannot give ``count`` frames."""
    sample_frames(strategy, max(count, 4) * 16, count, np.random.default_rng(0))
