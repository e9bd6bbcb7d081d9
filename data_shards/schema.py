"""The sample schema: what one video looks like inside a shard.

``clip.npy``    float16 [F, Dc]   CLIP embeddings of F sampled frames
``audio.npy``   float16 [Da] (pooled) or [S, Da] (per 0.96 s VGGish example)
``teacher.npy`` float32 [Dt]      unit-norm teacher embedding of the whole video
``meta.json``   {video_id, split, has_audio, duration_s, frame_times_s, sampling}
A silent video is flagged by ``has_audio: false``; its zeros are never the only signal.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEMA_VERSION = 1
SAMPLE_FIELDS = ("clip.npy", "audio.npy", "teacher.npy", "meta.json")
META_FIELDS = ("video_id", "split", "has_audio", "duration_s", "frame_times_s", "sampling")
TEACHER_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Dims:
    """Feature dimensions shared by every sample of a shard set."""

    frames: int
    clip: int
    audio: int
    teacher: int
    audio_examples: int | None = None  # None: audio is pooled to [Da]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Dims:
        return cls(**data)

    def decoded_bytes_per_sample(self) -> int:
        """Bytes one sample takes in the in-memory cache (float16 inputs, float32 teacher)."""
        return 2 * self.frames * self.clip + 2 * self.audio + 4 * self.teacher + 1
