"""Student networks: sparse CLIP frames + VGGish audio -> the teacher's embedding space.

Both take the modality-keyed batch ``{"clip": [B,F,Dc], "audio": [B,Da], "has_audio": [B]}``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MLPStudentConfig, TransformerStudentConfig, ZeroShotStudentConfig


class MLPStudent(nn.Module):
    """Late fusion. Silent audio enters as zeros *and* a has-audio flag, never as zeros alone."""

    def __init__(self, cfg: MLPStudentConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = cfg.frames * cfg.clip_dim + cfg.audio_dim + 1
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = hidden
        layers.append(nn.Linear(width, cfg.out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        clip = batch["clip"].flatten(1)
        present = batch["has_audio"].to(clip.dtype).unsqueeze(1)
        audio = batch["audio"] * present
        out = self.net(torch.cat([clip, audio, present], dim=1))
        return F.normalize(out, dim=-1) if self.cfg.normalize_output else out


class TransformerStudent(nn.Module):
    """Tokens [CLS][frame_1..F][audio] with modality and frame-position embeddings; silent audio is
    removed through the key-padding mask; in training whole modalities are dropped at random."""

    def __init__(self, cfg: TransformerStudentConfig):
        super().__init__()
        self.cfg = cfg
        self.frame_proj = nn.Linear(cfg.clip_dim, cfg.width)
        self.audio_proj = nn.Linear(cfg.audio_dim, cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.modality = nn.Parameter(torch.zeros(3, cfg.width))  # cls, frame, audio
        self.frame_pos = nn.Parameter(torch.zeros(cfg.frames, cfg.width))
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.width,
            nhead=cfg.heads,
            dim_feedforward=int(cfg.width * cfg.mlp_ratio),
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.out_dim)
        for p in (self.cls, self.modality, self.frame_pos):
            nn.init.normal_(p, std=0.02)

    def _keep_masks(self, batch_size: int, frames: int, has_audio: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        keep_frames = torch.ones(batch_size, frames, dtype=torch.bool, device=device)
        keep_audio = has_audio.bool().clone()
        p = self.cfg.modality_dropout
        if self.training and p > 0:
            # Drop the audio token, or all frames but one (never everything) -- one modality at a time.
            drop_audio = torch.rand(batch_size, device=device) < p
            drop_frames = (torch.rand(batch_size, device=device) < p) & ~drop_audio & keep_audio
            keep_audio &= ~drop_audio
            survivor = torch.randint(frames, (batch_size,), device=device)
            only_survivor = F.one_hot(survivor, frames).bool()
            keep_frames = torch.where(drop_frames.unsqueeze(1), only_survivor, keep_frames)
        return keep_frames, keep_audio

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        clip, audio = batch["clip"], batch["audio"]
        b, f, _ = clip.shape
        frames = self.frame_proj(clip) + self.frame_pos[:f] + self.modality[1]
        sound = self.audio_proj(audio).unsqueeze(1) + self.modality[2]
        cls = self.cls.expand(b, -1, -1) + self.modality[0]
        tokens = torch.cat([cls, frames, sound], dim=1)
        keep_frames, keep_audio = self._keep_masks(b, f, batch["has_audio"], clip.device)
        keep = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=clip.device), keep_frames, keep_audio.unsqueeze(1)], dim=1)
        encoded = self.encoder(tokens, src_key_padding_mask=~keep)
        out = self.head(self.norm(encoded[:, 0]))
        return F.normalize(out, dim=-1) if self.cfg.normalize_output else out


class ZeroShotStudent(nn.Module):
    """A random projection keeps CLIP's geometry (Johnson-Lindenstrauss), so this scores what CLIP's
    own similarities already agree with the teacher's. The projection is a buffer: saved, never trained."""

    projection: torch.Tensor  # registered as a buffer in __init__

    def __init__(self, cfg: ZeroShotStudentConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("projection", torch.randn(cfg.clip_dim, cfg.out_dim, generator=generator) / cfg.out_dim ** 0.5)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        clip = batch["clip"]
        out = clip[:, clip.shape[1] // 2] @ self.projection.to(clip.dtype)
        return F.normalize(out, dim=-1) if self.cfg.normalize_output else out


Student = MLPStudent | TransformerStudent | ZeroShotStudent  # each keeps its config as ``cfg``


def build_student(cfg: MLPStudentConfig | TransformerStudentConfig | ZeroShotStudentConfig) -> Student:
    if isinstance(cfg, MLPStudentConfig):
        return MLPStudent(cfg)
    if isinstance(cfg, ZeroShotStudentConfig):
        return ZeroShotStudent(cfg)
    if isinstance(cfg, TransformerStudentConfig):
        return TransformerStudent(cfg)
    raise TypeError(f"unknown student config {type(cfg).__name__}")
