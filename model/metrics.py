"""Retrieval metrics between student and teacher embeddings of the same N videos.

Conventions (the tests check them against a naive reference):
- Both sides are L2-normalized; similarity is the cosine. Query i's positive is item i.
- ``s2t``: each student embedding queries all teacher embeddings; ``t2s`` the reverse.
- Rank is 1-based (1 = the positive is first). Ties are pessimistic: every other item scoring
  >= the positive ranks above it, so a constant embedding can never look good; a non-finite score
  (NaN from a diverged model) counts against the query too.
- ``r1``/``r5``/``r10``: percent of queries with rank <= K. ``medr``: median rank (mean of the two
  middle ranks for even N). ``meanr``: mean rank. Both in ranks, lower is better.
- ``mean_cos``: mean cosine of positive pairs. ``mse``: mean squared difference per element of the
  normalized embeddings. ``cos_gap``: mean over queries of (positive cosine - hardest negative cosine).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.selection import RECALL_AT


def _ranks_and_gaps(queries: torch.Tensor, items: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    ranks, gaps = [], []
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start : start + chunk] @ items.T
        rows = torch.arange(sims.shape[0])
        positive = sims[rows, rows + start]
        others = sims.clone()
        others[rows, rows + start] = float("-inf")
        # a non-finite score (a diverged model) never helps: a NaN positive ranks last, a NaN other ranks above
        above = (others >= positive[:, None]) | others.isnan() | positive.isnan()[:, None]
        above[rows, rows + start] = False
        ranks.append(1 + above.sum(1))
        gaps.append(positive - others.max(1).values)
    return torch.cat(ranks), torch.cat(gaps)


def _direction(ranks: torch.Tensor, gaps: torch.Tensor, prefix: str) -> dict[str, float]:
    ranks_f = ranks.double()
    out = {f"{prefix}_r{k}": 100.0 * float((ranks <= k).double().mean()) for k in RECALL_AT}
    out[f"{prefix}_medr"] = float(ranks_f.quantile(0.5))
    out[f"{prefix}_meanr"] = float(ranks_f.mean())
    out[f"{prefix}_cos_gap"] = float(gaps.double().mean())
    return out


@torch.no_grad()
def retrieval_metrics(student: torch.Tensor, teacher: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must both be [N, D]")
    if student.shape[0] < 2:
        raise ValueError("retrieval needs at least 2 items")
    s = F.normalize(student.double(), dim=-1)
    t = F.normalize(teacher.double(), dim=-1)
    metrics = {"n": float(s.shape[0])}
    metrics.update(_direction(*_ranks_and_gaps(s, t, chunk), "s2t"))
    metrics.update(_direction(*_ranks_and_gaps(t, s, chunk), "t2s"))
    metrics["mean_cos"] = float((s * t).sum(-1).mean())
    metrics["mse"] = float(((s - t) ** 2).mean())
    return metrics

