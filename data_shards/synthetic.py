"""A deterministic, MSR-VTT-shaped synthetic shard set: the embedded default. It is synthetic.

Each video has hidden factors: a visual state z0 that drifts with motion dz over the clip, an audio
state za, and a factor zh that no input shows. The student's inputs are three noisy CLIP-like frame
embeddings (the frames sample the drifting visual state at the second, middle and second-to-last
frame) and a VGGish-like audio embedding (zeros plus ``has_audio: false`` for ~12 % silent videos).
The teacher mirrors ImageBind's fused target: normalize(normalize(v) + normalize(a)), with
v = MLP(z0, dz, zh) and a = MLP(za, za * g(z0)) -- non-linear in both modalities and with a
visual-audio interaction, so both inputs matter; zh and the frame noise keep it from being trivial.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import numpy as np
from tqdm import tqdm

from data_shards.errors import ShardError
from data_shards.files import cache_root
from data_shards.schema import Dims
from data_shards.writer import ShardSetWriter

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump on any change to the generated data: it names the cache
FIXED_MTIME = 1_600_000_000  # tar member times, so the same spec gives byte-identical shards
LATENT_VISUAL, LATENT_AUDIO, LATENT_HIDDEN = 64, 32, 16


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes follow MSR-VTT: 7,010 train videos (500 carved out as validation) and the 1k-A test split."""

    train: int = 6510
    val: int = 500
    test: int = 1000
    frames: int = 3
    clip_dim: int = 512
    audio_dim: int = 128
    teacher_dim: int = 1024
    silent_fraction: float = 0.12
    categories: int = 20
    sound_types: int = 4
    spread: float = 0.5
    frame_noise: float = 1.0
    hidden_scale: float = 2.0
    audio_spread: float = 0.4
    audio_noise: float = 2.0
    seed: int = 0
    samples_per_shard: int = 1000

    @classmethod
    def from_url(cls, url: str) -> SyntheticSpec:
        """``synthetic://msrvtt?train=600&val=100&test=200&seed=1`` -> spec (unknown keys are errors)."""
        parsed = urlparse(url)
        if parsed.netloc != "msrvtt":
            raise ShardError(f"{url}: the only synthetic dataset is synthetic://msrvtt")
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}  # each value parsed to its own field's type below; mypy cannot follow a type chosen by name
        for key, raw in parse_qsl(parsed.query):
            if key not in types:
                raise ShardError(f"{url}: unknown synthetic parameter {key!r} (known: {sorted(types)})")
            try:
                values[key] = float(raw) if types[key] == "float" else int(raw)
            except ValueError as exc:
                raise ShardError(f"{url}: parameter {key}={raw!r} is not a {types[key]}") from exc
        return cls(**values)

    def cache_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"synthetic-msrvtt-v{GENERATOR_VERSION}-{digest}"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _World:
    """The fixed random maps shared by every video (drawn from the seed)."""

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator):
        dv, da, dh = LATENT_VISUAL, LATENT_AUDIO, LATENT_HIDDEN
        self.centers = rng.standard_normal((spec.categories, dv))  # MSR-VTT has 20 categories
        self.audio_centers = rng.standard_normal((spec.sound_types, da))
        self.clip_map = rng.standard_normal((dv, spec.clip_dim)) / np.sqrt(dv)
        self.audio_map = rng.standard_normal((da, spec.audio_dim)) / np.sqrt(da)
        self.vision_in = rng.standard_normal((2 * dv + dh, 512)) / np.sqrt(2 * dv + dh) * 1.5
        self.vision_out = rng.standard_normal((512, spec.teacher_dim)) / np.sqrt(512)
        self.gate = rng.standard_normal((dv, da)) / np.sqrt(dv)
        self.audio_in = rng.standard_normal((2 * da, 256)) / np.sqrt(2 * da) * 1.5
        self.audio_out = rng.standard_normal((256, spec.teacher_dim)) / np.sqrt(256)


def _videos(spec: SyntheticSpec, world: _World, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    category = rng.integers(0, spec.categories, n)
    z0 = world.centers[category] + spec.spread * rng.standard_normal((n, LATENT_VISUAL))
    motion = 0.6 * rng.standard_normal((n, LATENT_VISUAL))
    hidden = spec.hidden_scale * rng.standard_normal((n, LATENT_HIDDEN))
    sound_type = rng.integers(0, spec.sound_types, n)  # what a video sounds like is not what it shows
    za = world.audio_centers[sound_type] + spec.audio_spread * rng.standard_normal((n, LATENT_AUDIO))
    has_audio = rng.random(n) >= spec.silent_fraction
    duration = rng.uniform(8.0, 32.0, n)

    # The original three-frame scheme: second, middle and second-to-last frame of the clip.
    times = np.linspace(0.05, 0.95, spec.frames)
    states = z0[:, None, :] + (times[None, :, None] - 0.5) * motion[:, None, :]
    states = states + spec.frame_noise * rng.standard_normal(states.shape)
    clip = _unit(states @ world.clip_map + 0.05 * rng.standard_normal((n, spec.frames, spec.clip_dim)))

    audio = za @ world.audio_map + spec.audio_noise * rng.standard_normal((n, spec.audio_dim))
    audio[~has_audio] = 0.0

    vision = np.tanh(np.concatenate([z0, motion, hidden], axis=1) @ world.vision_in) @ world.vision_out
    gated = za * np.tanh(z0 @ world.gate)
    sound = np.tanh(np.concatenate([za, gated], axis=1) @ world.audio_in) @ world.audio_out
    fused = _unit(_unit(vision) + _unit(sound))
    teacher = np.where(has_audio[:, None], fused, _unit(vision))
    return {
        "clip": clip,
        "audio": audio,
        "has_audio": has_audio,
        "teacher": _unit(teacher).astype(np.float32),
        "duration": duration,
        "frame_times": times[None, :] * duration[:, None],
    }


def generate(spec: SyntheticSpec, out: str | Path, *, progress: bool = True, part: tuple[int, int] = (0, 1)) -> Path:
    """Write the synthetic shard set for ``spec`` to ``out`` (same spec -> byte-identical shards).
    ``part=(i, n)`` writes only the i-th of n interleaved slices of every split (the same samples
    the whole set holds there), so n workers can each write one and ``merge_shard_sets`` joins them."""
    index, count = part
    rng = np.random.default_rng(spec.seed)
    world = _World(spec, rng)
    dims = Dims(frames=spec.frames, clip=spec.clip_dim, audio=spec.audio_dim, teacher=spec.teacher_dim)
    train_pool = spec.train + spec.val
    val_ids = set(rng.permutation(train_pool)[: spec.val].tolist())
    plan = [
        ("train", [i for i in range(train_pool) if i not in val_ids]),
        ("val", sorted(val_ids)),
        ("test", list(range(train_pool, train_pool + spec.test))),
    ]
    source = {"kind": "synthetic", "dataset": "msrvtt-shaped", "generator_version": GENERATOR_VERSION, "spec": asdict(spec)}
    encoders = {name: {"name": "synthetic", "real": False} for name in ("clip", "audio", "teacher")}
    total = train_pool + spec.test
    prefix = f"part{index:03d}-" if count > 1 else ""
    with ShardSetWriter(out, dims, encoders=encoders, source=source, samples_per_shard=spec.samples_per_shard, overwrite=True,
                        mtime=FIXED_MTIME, name_prefix=prefix) as writer, tqdm(
        total=total, desc="synthetic shards", unit="video", disable=not progress, mininterval=2.0
    ) as bar:
        for split, ids in plan:
            videos = _videos(spec, world, len(ids), rng)
            for row, video_number in enumerate(ids):
                if row % count != index:
                    continue
                video_id = f"video{video_number}"
                meta = {
                    "video_id": video_id,
                    "split": split,
                    "has_audio": bool(videos["has_audio"][row]),
                    "duration_s": round(float(videos["duration"][row]), 3),
                    "frame_times_s": [round(float(t), 3) for t in videos["frame_times"][row]],
                    "sampling": "three_frame" if spec.frames == 3 else "uniform",
                    "synthetic": True,
                }
                writer.write(split, video_id, videos["clip"][row], videos["audio"][row], videos["teacher"][row], meta)
                bar.update(1)
    return Path(out)


def ensure_synthetic(url: str) -> Path:
    """Resolve a ``synthetic://`` URL to a local shard set, generating it once (under a lock, so
    several processes of one job wait for a single writer)."""
    spec = SyntheticSpec.from_url(url)
    root = cache_root() / "shards" / spec.cache_name()
    if (root / "manifest.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "manifest.json").is_file():
            log.info("generating the synthetic shard set %s into %s (once)", url, root)
            generate(spec, root, progress=False)
    return root
