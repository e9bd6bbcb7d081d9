"""Small synthetic videos for trying extraction without a dataset: moving shapes with a tone.

Each video is a coloured square moving across a gradient at 16 fps with a sine tone whose pitch
depends on the video; ``silent`` videos have no audio stream at all, ``short`` ones a few frames.
They are synthetic: extraction on them proves the pipeline, not the features.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from data_shards.video import AUDIO_RATE, write_video

FPS = 16


def moving_shapes(seconds: float, size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = max(int(round(seconds * FPS)), 1)
    colour = rng.integers(64, 256, size=3)
    side = size // 4
    y, x = np.mgrid[0:size, 0:size]
    background = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 64)], axis=-1).astype(np.uint8)
    frames = np.repeat(background[None], count, axis=0)
    for t in range(count):
        left = int((size - side) * t / max(count - 1, 1))
        top = int((size - side) * (0.5 + 0.4 * np.sin(2 * np.pi * t / count + seed)))
        frames[t, top:top + side, left:left + side] = colour
    return frames


def tone(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)).astype(np.float32)


def write_synthetic_video(path: str | Path, seconds: float = 4.0, seed: int = 0, silent: bool = False, size: int = 96) -> Path:
    write_video(path, moving_shapes(seconds, size, seed), FPS, None if silent else tone(seconds, seed))
    return Path(path)


def write_collection(out: str | Path, count: int, seconds: float = 4.0, splits=("train", "val", "test")) -> Path:
    """``count`` videos in ``out`` plus ``videos.csv`` (id, path, split); every 8th video is silent."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        video_id = f"video{i:04d}"
        write_synthetic_video(out / f"{video_id}.mp4", seconds, seed=i, silent=i % 8 == 7)
        rows.append({"id": video_id, "path": f"{video_id}.mp4", "split": splits[i % len(splits)]})
    with open(out / "videos.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "videos.csv"
