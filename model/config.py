"""Typed architecture and loss config. Unknown keys and wrong types are rejected by pydantic
(strict mode, ``extra='forbid'``), so a typo in ``--set model.dpeth=2`` fails before training."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class StudentIO(Strict):
    """Input/output dims a student is built for; checked against the shard manifest before training."""

    frames: int = Field(3, ge=1)
    clip_dim: int = Field(512, ge=1)
    audio_dim: int = Field(128, ge=1)
    out_dim: int = Field(1024, ge=1)
    normalize_output: bool = True


class MLPStudentConfig(StudentIO):
    """Late fusion: flattened frames + audio (+ a has-audio flag) -> MLP -> teacher space."""

    kind: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [1024, 2048, 1024], min_length=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TransformerStudentConfig(StudentIO):
    """Cross-modal fusion: [CLS][frame...][audio] tokens through a pre-LN encoder of ``depth`` layers."""

    kind: Literal["transformer"] = "transformer"
    width: int = Field(256, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerStudentConfig:
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        return self


class ZeroShotStudentConfig(StudentIO):
    """The floor a trained student must beat: the middle sampled CLIP frame through a fixed random
    projection (seeded Gaussian) into the teacher's space. Nothing is learned; audio is ignored."""

    kind: Literal["zero_shot"] = "zero_shot"
    seed: int = 0


STUDENT_CONFIGS = (MLPStudentConfig, TransformerStudentConfig, ZeroShotStudentConfig)
StudentConfig = Annotated[MLPStudentConfig | TransformerStudentConfig | ZeroShotStudentConfig, Field(discriminator="kind")]


class LossConfig(Strict):
    """``infonce`` | ``cosine`` | ``joint`` = (1-alpha)*cosine + alpha*InfoNCE | ``hnac`` (see model.losses)."""

    kind: Literal["infonce", "cosine", "joint", "hnac"] = "infonce"
    temperature: float = Field(0.05, gt=0)
    learn_temperature: bool = True
    max_logit_scale: float = Field(100.0, gt=1)
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    hnac_threshold: float = Field(0.8, ge=-1.0, le=1.0)
    hnac_sharpness: float = Field(0.05, gt=0)
