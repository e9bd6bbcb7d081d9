"""Teachers: the dense embedding a student learns to predict, one unit vector per video.

``ImageBindTeacher``: ImageBind-huge's vision tower over 5 two-frame clips x 3 crops and its audio
tower over 3 two-second clips, fused as normalize(mean(normalize(vision), normalize(audio))), or
normalize(vision) for a video without audio -- never an unnormalized vector.
``DenseClipTeacher``: the mean of CLIP image embeddings over N frames (CLIP4Clip's mean pooling),
for users without ImageBind weights.
Each teacher's ``inputs`` (no model: a decode worker's part) says which frames it needs (``frame_groups``), so the
decoder seeks to exactly those, whether it hears a video's audio (``audio_status``), and ``prepare``s them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from data_shards.sampling import Groups, sample_frames
from data_shards.video import Audio, VideoInfo
from model.config import Strict
from model.encoders import ClipConfig, ClipImageEncoder, ClipPixels, EncoderError, weights_digest

IMAGEBIND_CLIPS, IMAGEBIND_CLIP_S = 5, 2.0


class ImageBindTeacherConfig(Strict):
    weights: str | None = None  # default: .checkpoints/imagebind_huge.pth, where the official code keeps it
    architecture: str = "huge"  # "huge", or a JSON file of ImageBindConfig fields (reduced sizes for tests)


class TeacherConfig(Strict):
    kind: Literal["imagebind", "dense_clip"] = "imagebind"
    sampling: str = "imagebind"  # "imagebind": its own 5 clips x 2 frames; or any frame strategy (data_shards.sampling)
    frames: int = Field(10, ge=1)  # frames a frame strategy picks (ImageBind pairs them into clips of 2)
    imagebind: ImageBindTeacherConfig = Field(default_factory=ImageBindTeacherConfig)
    clip: ClipConfig | None = None  # dense_clip's image model; default: the student's CLIP


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vector.double(), dim=-1).float()


@dataclass(frozen=True)
class DenseClipInputs:
    """What dense_clip needs of a video, apart from the model (a decode worker's part): frames by a frame strategy,
    CLIP's preprocessing of them, no audio."""

    config: TeacherConfig
    pixels: ClipPixels

    def frame_groups(self, info: VideoInfo, rng: np.random.Generator) -> Groups:
        return sample_frames(self.config.sampling, info.frame_count, self.config.frames, rng)

    def audio_status(self, audio: Audio | None) -> str | None:
        """None: this teacher takes no audio, so it has nothing to say about a video's."""
        return None

    def prepare(self, frames: list[np.ndarray], audio: Audio | None) -> torch.Tensor:
        return self.pixels(frames)


class DenseClipTeacher:
    def __init__(self, config: TeacherConfig, encoder: ClipImageEncoder):
        if config.sampling == "imagebind":
            raise EncoderError("teacher.sampling=imagebind belongs to the ImageBind teacher; dense_clip takes a frame strategy (e.g. uniform)")
        self.config, self.encoder, self.dim = config, encoder, encoder.dim
        self.inputs = DenseClipInputs(config, encoder.pixels)

    def embed(self, frames: list[np.ndarray], audio: Audio | None) -> np.ndarray:
        return self.embed_prepared([self.inputs.prepare(frames, audio)])[0]

    def embed_prepared(self, prepared: list[torch.Tensor]) -> list[np.ndarray]:
        """Several videos' frames in one encoder call; each video's embedding is the unit mean of its frames'."""
        features = torch.from_numpy(self.encoder.embed(torch.cat(prepared)))
        return [_unit(part.mean(0)).numpy() for part in features.split([len(p) for p in prepared])]

    def describe(self) -> dict:
        return {"kind": "dense_clip", "sampling": self.config.sampling, "frames": self.config.frames, "clip": self.encoder.describe()}


def build_imagebind(config: ImageBindTeacherConfig, modalities: tuple[str, ...], random_init: bool, seed: int = 0):
    """ImageBind's ``modalities`` towers (eval mode) and the checkpoint they came from (None: random init)."""
    from model.imagebind import ImageBind, ImageBindConfig, load_imagebind_checkpoint

    arch = config.architecture
    if arch == "huge":
        architecture = ImageBindConfig.huge()
    elif Path(arch).is_file():
        architecture = ImageBindConfig.model_validate_json(Path(arch).read_text())
    else:
        raise EncoderError(f"imagebind.architecture={arch!r}: 'huge' or a JSON file of ImageBindConfig fields")
    if random_init:
        torch.manual_seed(seed)
        return ImageBind(architecture, modalities=modalities).eval(), None
    weights = Path(config.weights or Path(".checkpoints") / "imagebind_huge.pth")
    if not weights.is_file():
        raise EncoderError(
            f"{weights}: ImageBind checkpoint not found. Download imagebind_huge.pth (see README), pass "
            "imagebind.weights=PATH (extraction: --set teacher.imagebind.weights=PATH), use a dense_clip teacher, "
            "or --random-init (tests only)"
        )
    with torch.device("meta"):  # no random init of 700 M parameters that the checkpoint replaces
        model = ImageBind(architecture, modalities=modalities)
    try:
        load_imagebind_checkpoint(model, weights)
    except ValueError as exc:
        raise EncoderError(str(exc)) from None
    return model.eval(), weights


@dataclass(frozen=True)
class ImageBindInputs:
    """What ImageBind needs of a video, apart from the model (a decode worker's part): its clips' frames, its views of
    them and its fbank clips of the audio it hears."""

    config: TeacherConfig

    def frame_groups(self, info: VideoInfo, rng: np.random.Generator) -> Groups:
        from model.imagebind_inputs import video_frame_indices

        if self.config.sampling != "imagebind":
            return sample_frames(self.config.sampling, info.frame_count, self.config.frames, rng)
        clips = video_frame_indices(info.frame_count, info.fps, IMAGEBIND_CLIP_S, IMAGEBIND_CLIPS)
        return [[index] for clip in clips for index in clip]

    def audio_status(self, audio: Audio | None) -> str:
        """Whether the teacher hears this audio: "ok" (pass it to ``prepare``), or why not. Its own rule, not the
        student's: official ImageBind embeds any audio of at least one 25 ms fbank frame, so audio shorter than one
        0.96 s VGGish example is heard here though the student gets none. An all-zero track is not heard (official
        ImageBind would embed the zeros: one fixed vector for every silent video, which says nothing about it)."""
        from model.imagebind_inputs import audio_too_short

        if audio is None:
            return "no audio stream"
        if not np.any(audio.samples):
            return "silent: every sample is zero"
        too_short = audio_too_short(audio.samples.shape[1], audio.rate)
        return f"audio too short: {too_short}" if too_short else "ok"

    def prepare(self, frames: list[np.ndarray], audio: Audio | None) -> dict[str, torch.Tensor]:
        """ImageBind's views of the frames and, with audio, its fbank clips."""
        from model.imagebind_inputs import audio_clips, vision_views

        clips = torch.from_numpy(np.stack(frames)).reshape(IMAGEBIND_CLIPS, 2, *frames[0].shape)
        inputs = {"vision": vision_views(clips)}
        if audio is not None:
            # every channel at the file's rate, as official ImageBind loads it: audio_clips resamples with torchaudio
            # and makes the fbank of channel 0
            inputs["audio"] = audio_clips(torch.from_numpy(audio.samples), audio.rate, IMAGEBIND_CLIP_S)
        return inputs


class ImageBindTeacher:
    def __init__(self, config: TeacherConfig, random_init: bool, device: torch.device, seed: int = 0):
        if config.sampling != "imagebind" and config.frames != 2 * IMAGEBIND_CLIPS:
            raise EncoderError(f"teacher.frames={config.frames}: ImageBind takes {IMAGEBIND_CLIPS} clips of 2 frames, set teacher.frames=10")
        self.config, self.random_init, self.device = config, random_init, device
        self.inputs = ImageBindInputs(config)
        self.model, self.weights = build_imagebind(config.imagebind, ("vision", "audio"), random_init, seed)
        self.model.to(device)
        self.dim = self.model.config.out_embed_dim

    def embed(self, frames: list[np.ndarray], audio: Audio | None) -> np.ndarray:
        return self.embed_prepared([self.inputs.prepare(frames, audio)])[0]

    @torch.inference_mode()
    def embed_prepared(self, prepared: list[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """Several videos in one call per modality (one video: both in one call, as before batching existed)."""
        if len(prepared) == 1:
            outputs = self.model({name: x[None].to(self.device, non_blocking=True) for name, x in prepared[0].items()})
            per_video = [{name: value[0] for name, value in outputs.items()}]
        else:
            per_video = [{} for _ in prepared]
            for modality in ("vision", "audio"):
                having = [i for i, inputs in enumerate(prepared) if modality in inputs]
                if having:
                    batch = torch.stack([prepared[i][modality] for i in having]).to(self.device, non_blocking=True)
                    for i, value in zip(having, self.model({modality: batch})[modality]):
                        per_video[i][modality] = value
        return [_unit(torch.stack([_unit(out[m].cpu()) for m in ("vision", "audio") if m in out]).mean(0)).numpy() for out in per_video]

    def describe(self) -> dict:
        return {"kind": "imagebind", "architecture": self.config.imagebind.architecture, "sampling": self.config.sampling,
                "weights": str(self.weights) if self.weights else None,
                "weights_sha256": weights_digest(self.weights), "random_init": self.random_init,
                "fusion": "normalize(mean(normalize(vision), normalize(audio))); normalize(vision) without audio"}


TeacherInputs = DenseClipInputs | ImageBindInputs


def build_teacher(config: TeacherConfig, student_clip: ClipImageEncoder, random_init: bool, device: torch.device, seed: int = 0):
    if config.kind == "dense_clip":
        encoder = student_clip if config.clip in (None, student_clip.config) else ClipImageEncoder(config.clip, random_init, device, seed)
        return DenseClipTeacher(config, encoder)
    return ImageBindTeacher(config, random_init, device, seed)
