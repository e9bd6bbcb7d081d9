"""Distillation losses. Student and teacher embeddings are compared on the unit sphere.

- ``cosine``: mean(1 - cos(s_i, t_i)).
- ``infonce``: symmetric InfoNCE, logits = scale * <s_i, t_j>, scale = exp(log_scale) with the
  log-scale fixed (1/temperature) or learned and clamped to [0, log(max_logit_scale)].
- ``joint``: (1 - alpha) * cosine + alpha * InfoNCE.
- ``hnac`` (hard-negative-aware contrastive): InfoNCE whose negatives are weighted by how unlikely
  they are to be false negatives. For anchor i and negative j, with c_ij = <t_i, t_j> the teachers'
  similarity, w_ij = sigmoid((threshold - c_ij) / sharpness) and
      L_i = -log( e^{z_ii} / (e^{z_ii} + sum_{j != i} w_ij e^{z_ij}) ),  z = scale * <s, t>.
  Negatives whose teacher is closer than ``threshold`` to the positive's (near-duplicate videos)
  barely count; far negatives count fully. The weights carry no gradient. threshold -> 1 with
  sharpness -> 0 recovers InfoNCE. Both directions are averaged, as for InfoNCE.

With several processes the contrastive terms gather embeddings from every rank *with gradients*
(as open_clip's ClipLoss does), so the negatives are the global batch; each rank scores its own
rows against all columns and DDP's gradient averaging yields the gradient of the global loss.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn

from model.config import LossConfig


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows (autograd flows back to each rank's own rows) and this rank's row offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(dist_nn.all_gather(x), dim=0), dist.get_rank() * x.shape[0]


def contrastive_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    scale: torch.Tensor,
    negative_log_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of local rows against the global batch; ``negative_log_weight`` [B, N]
    is added to the logits (0 = plain InfoNCE)."""
    all_student, offset = gather_with_grad(student)
    all_teacher, _ = gather_with_grad(teacher)
    labels = torch.arange(student.shape[0], device=student.device) + offset
    s2t = scale * student @ all_teacher.T
    t2s = scale * teacher @ all_student.T
    if negative_log_weight is not None:
        s2t = s2t + negative_log_weight
        t2s = t2s + negative_log_weight
    return 0.5 * (F.cross_entropy(s2t, labels) + F.cross_entropy(t2s, labels))


def false_negative_log_weights(teacher: torch.Tensor, threshold: float, sharpness: float) -> torch.Tensor:
    """log w_ij for H-NAC: 0 on the positive, log sigmoid((threshold - c_ij) / sharpness) elsewhere."""
    with torch.no_grad():
        all_teacher, offset = gather_with_grad(teacher)
        similarity = teacher @ all_teacher.T
        log_weight = F.logsigmoid((threshold - similarity) / sharpness)
        rows = torch.arange(teacher.shape[0], device=teacher.device)
        log_weight[rows, rows + offset] = 0.0
    return log_weight


class DistillLoss(nn.Module):
    """Loss by config; owns the (learnable) logit scale so DDP keeps it identical on every rank."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        initial = torch.tensor([math.log(1.0 / cfg.temperature)])  # shape [1]: DeepSpeed cannot broadcast 0-d params
        if cfg.kind != "cosine" and cfg.learn_temperature:
            self.log_scale = nn.Parameter(initial)
        else:
            self.register_buffer("log_scale", initial)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        student = F.normalize(student.float(), dim=-1)
        teacher = F.normalize(teacher.float(), dim=-1)
        cfg, terms = self.cfg, {}
        if cfg.kind in ("cosine", "joint"):
            terms["cosine"] = (1.0 - (student * teacher).sum(-1)).mean()
        if cfg.kind in ("infonce", "joint"):
            terms["infonce"] = contrastive_loss(student, teacher, self.scale())
        if cfg.kind == "hnac":
            log_weight = false_negative_log_weights(teacher, cfg.hnac_threshold, cfg.hnac_sharpness)
            terms["hnac"] = contrastive_loss(student, teacher, self.scale(), log_weight)
        if cfg.kind == "joint":
            terms["loss"] = (1 - cfg.alpha) * terms["cosine"] + cfg.alpha * terms["infonce"]
        else:
            terms["loss"] = terms[cfg.kind]
        return terms


def build_loss(cfg: LossConfig) -> DistillLoss:
    return DistillLoss(cfg)
