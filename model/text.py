"""Text query encoders for search: text lands in the same spaces as the index's vectors.

Videos are indexed by the student's output, which lives in the teacher's space, so a text query for
videos goes through the teacher's own text tower: ImageBind's (the official checkpoint's text keys)
for an ImageBind teacher, CLIP's for a dense-CLIP teacher. Frames are indexed by their CLIP image
embeddings, so frame-level text queries go through that CLIP's text tower.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from model.config import Strict
from model.encoders import ClipConfig, EncoderError, create_clip, weights_digest
from model.teachers import ImageBindTeacherConfig, build_imagebind


class QueryEncodersConfig(Strict):
    """Which text towers answer queries. ``search`` fills it from the shard set's extraction record."""

    video_text: Literal["imagebind", "clip"] = "imagebind"  # the teacher's family: its text tower embeds video queries
    imagebind: ImageBindTeacherConfig = Field(default_factory=ImageBindTeacherConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)  # the student's frame CLIP
    video_clip: ClipConfig | None = None  # a dense-CLIP teacher's own CLIP, when it is not the student's
    random_init: bool = False  # seeded random weights: for tests only, results are meaningless
    seed: int = 0


class ImageBindTextEncoder:
    """ImageBind's text tower: texts -> unit vectors in ImageBind's joint space."""

    def __init__(self, config: ImageBindTeacherConfig, random_init: bool = False, seed: int = 0):
        self.config, self.random_init = config, random_init
        self.model, self.weights = build_imagebind(config, ("text",), random_init, seed)
        self.dim = self.model.config.out_embed_dim
        self.context_length = self.model.config.text.context_length

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        from model.imagebind_inputs import text_tokens

        embedding = self.model({"text": text_tokens(texts, self.context_length)})["text"]
        return torch.nn.functional.normalize(embedding.float(), dim=-1).numpy()  # undo the logit scale

    def describe(self) -> dict:
        return {"tower": "imagebind.text", "architecture": self.config.architecture, "dim": self.dim,
                "weights": str(self.weights) if self.weights else None,
                "weights_sha256": weights_digest(self.weights), "random_init": self.random_init}


class ClipTextEncoder:
    """open_clip's text tower with the model's own tokenizer: texts -> unit vectors in CLIP's image space."""

    def __init__(self, config: ClipConfig, random_init: bool = False, seed: int = 0):
        import open_clip

        self.config, self.random_init = config, random_init
        self.model, _, self.version, self.weights = create_clip(config, random_init, seed)
        self.tokenizer = open_clip.get_tokenizer(config.model)
        self.dim = int(self.model.visual.output_dim)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("text queries must be a non-empty list of non-empty strings")
        embedding = self.model.encode_text(self.tokenizer(texts))
        return torch.nn.functional.normalize(embedding.float(), dim=-1).numpy()

    def describe(self) -> dict:
        return {"tower": "open_clip.text", "model": self.config.model, "dim": self.dim,
                "pretrained": None if self.random_init else (self.config.weights or self.config.pretrained),
                "weights_sha256": weights_digest(self.weights), "random_init": self.random_init}


TextEncoder = ImageBindTextEncoder | ClipTextEncoder


class QueryEncoders:
    """The text towers a search service needs, built once: one for video queries and, with ``frames``, CLIP's
    for frame queries (evaluation ranks videos only and builds no frame tower)."""

    def __init__(self, config: QueryEncodersConfig, frames: bool = True):
        self.config = config
        self.frames = ClipTextEncoder(config.clip, config.random_init, config.seed) if frames else None
        self.videos: TextEncoder
        if config.video_text == "imagebind":
            self.videos = ImageBindTextEncoder(config.imagebind, config.random_init, config.seed)
        elif self.frames is not None and config.video_clip in (None, config.clip):
            self.videos = self.frames
        else:
            self.videos = ClipTextEncoder(config.video_clip or config.clip, config.random_init, config.seed)

    def towers(self) -> dict[str, TextEncoder]:
        return {what: encoder for what, encoder in (("videos", self.videos), ("frames", self.frames)) if encoder is not None}

    def check_dims(self, video_dim: int, frame_dim: int | None = None) -> None:
        """An index and text towers of different sizes cannot be compared: say which and how to fix it."""
        dims = {"videos": video_dim, "frames": frame_dim}
        for what, encoder in self.towers().items():
            if encoder.dim != dims[what]:
                raise EncoderError(f"the {what[:-1]} text tower ({encoder.describe()['tower']}) outputs {encoder.dim} dims but the "
                                   f"index's {what[:-1]} vectors have {dims[what]}; choose the encoders the shard set was extracted with")

    def describe(self) -> dict:
        return {what: encoder.describe() for what, encoder in self.towers().items()}
