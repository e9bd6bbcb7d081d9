"""The report's figures (matplotlib, no display needed): Recall@K bars, positive vs negative cosine
distributions, a PCA overlay of teacher and student embeddings, latency and FLOPs bars."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.selection import RECALL_AT
from model.pipelines import Cost

if TYPE_CHECKING:
    from jobs.report_runs import RunReport

NEGATIVES = 50_000  # sampled off-diagonal pairs per run: plenty for a histogram
PCA_POINTS = 200  # videos drawn in the overlay (all of them are used to fit the projection)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> str:
    from data_shards.files import atomic_destination

    with atomic_destination(out / name) as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return name


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall_bars(out: Path, runs: list[RunReport]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    width = 0.8 / len(runs)
    for ax, (direction, title) in zip(axes, (("s2t", "student → teacher"), ("t2s", "teacher → student"))):
        for i, run in enumerate(runs):
            values = [run.results["metrics"][f"{direction}_r{k}"] for k in RECALL_AT]
            bars = ax.bar(np.arange(len(RECALL_AT)) + i * width, values, width, label=run.label)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(np.arange(len(RECALL_AT)) + width * (len(runs) - 1) / 2, [f"R@{k}" for k in RECALL_AT])
        ax.set_title(title)
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("% of test queries")
    axes[1].legend(fontsize=8, loc="upper left")
    return _save(fig, out, "recall_at_k.png")


def cosine_distributions(out: Path, runs: list[RunReport]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, run in zip(axes[0], runs):
        s, t = _unit(run.embeddings["student"]), _unit(run.embeddings["teacher"])
        n = len(s)
        positives = (s * t).sum(1)
        i, j = rng.integers(0, n, NEGATIVES), rng.integers(0, n, NEGATIVES)
        keep = i != j
        negatives = (s[i[keep]] * t[j[keep]]).sum(1)
        bins = np.linspace(-1, 1, 81)
        ax.hist(negatives, bins=bins, density=True, alpha=0.6, label="negatives (other videos)")
        ax.hist(positives, bins=bins, density=True, alpha=0.6, label="positives (same video)")
        ax.set_title(run.label, fontsize=9)
        ax.set_xlabel("cosine(student, teacher)")
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out, "cosine_distributions.png")


def pca_overlay(out: Path, runs: list[RunReport]) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        s, t = _unit(run.embeddings["student"]), _unit(run.embeddings["teacher"])
        mean = t.mean(0)
        _, _, components = np.linalg.svd(t - mean, full_matrices=False)
        axes2 = np.zeros((2, t.shape[1]))
        axes2[:min(2, len(components))] = components[:2]  # fewer than 2 test videos: the missing axis stays 0
        ps, pt = (s - mean) @ axes2.T, (t - mean) @ axes2.T
        shown = slice(0, min(PCA_POINTS, len(s)))
        ax.plot(np.stack([pt[shown, 0], ps[shown, 0]]), np.stack([pt[shown, 1], ps[shown, 1]]), color="0.8", lw=0.5, zorder=1)
        ax.scatter(*pt[shown].T, s=8, label="teacher", zorder=2)
        ax.scatter(*ps[shown].T, s=8, label="student", zorder=3)
        ax.set_title(run.label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out, "pca_overlay.png")


def cost_bars(out: Path, costs: list[Cost]) -> str:
    plt = _pyplot()
    cells = list(dict.fromkeys(cell for c in costs for cell in c.cells()))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(costs) + 2.2))
    names = [c.name for c in costs]
    y = np.arange(len(costs))
    axes[0].barh(y, [c.flops_per_video / 1e9 for c in costs], color="tab:purple")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("GFLOPs per video (log)")
    height = 0.8 / len(cells)
    measured = [v for c in costs for d, b in cells if (v := c.per_video_ms(d, b)) is not None]
    for i, (device, batch) in enumerate(cells):
        values = [c.per_video_ms(device, batch) for c in costs]
        axes[1].barh(y + i * height, [np.nan if v is None else v for v in values], height, label=f"{device}, batch {batch}")
        for k, v in enumerate(values):
            if v is None and measured:
                axes[1].text(min(measured), y[k] + i * height, f" {device} batch {batch}: not measured", va="center",
                             fontsize=6, color="0.4")
    axes[1].set_yticks(y + height * (len(cells) - 1) / 2, names, fontsize=8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("ms per video (log)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    return _save(fig, out, "costs.png")


def draw_all(out: Path, runs: list[RunReport], costs: list[Cost]) -> dict[str, str]:
    plots = {"recall": recall_bars(out, runs), "cosine": cosine_distributions(out, runs), "pca": pca_overlay(out, runs)}
    if costs:
        plots["costs"] = cost_bars(out, costs)
    return plots
