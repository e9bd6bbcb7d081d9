"""The runs a report compares, as it reads them: run.json, test results (evaluated first if missing) and embeddings."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_shards import ShardError
from jobs.config import ConfigError
from jobs.evaluate import evaluate_run
from jobs.rundir import RunDir

log = logging.getLogger("streamapprox.report")


@dataclass
class RunReport:
    """One run as the report sees it: run.json, its test results and a sample of its embeddings."""

    path: Path
    info: dict
    results: dict
    embeddings: dict[str, np.ndarray]

    @property
    def run_id(self) -> str:
        return self.info.get("run_id", self.path.name)

    @property
    def preset(self) -> str:
        return self.info.get("preset") or self.info.get("job", "?")

    @property
    def label(self) -> str:
        """Short and unique enough for a plot legend: the preset and the run id's random suffix."""
        return f"{self.preset} ·{self.run_id.rsplit('-', 1)[-1]}"

    @property
    def config(self) -> dict:
        return self.info.get("config", {})

    @property
    def is_floor(self) -> bool:
        """The zero-shot floor: a baseline, not a trained student."""
        return self.config.get("model", {}).get("kind") == "zero_shot"

    def student_text(self) -> str:
        model = self.config.get("model", {})
        kind = model.get("kind", "?")
        if kind == "mlp":
            return f"MLP {model.get('hidden')}"
        if kind == "transformer":
            return f"Transformer depth {model.get('depth')}, width {model.get('width')}"
        return "middle CLIP frame → fixed random projection" if kind == "zero_shot" else kind

    def loss_text(self) -> str:
        if self.is_floor:
            return "none (not trained)"
        loss = self.config.get("loss", {})
        kind = loss.get("kind", "?")
        if kind == "joint":
            return f"joint ({1 - loss.get('alpha', 0.5):g} cosine + {loss.get('alpha', 0.5):g} InfoNCE)"
        return {"infonce": "InfoNCE", "cosine": "cosine regression", "hnac": "hard-negative-aware contrastive"}.get(kind, kind)

    def training_text(self) -> str:
        if self.is_floor:
            return "—"
        epochs = [r for r in RunDir(self.path).read_metrics() if r.get("kind") == "epoch"]
        best = self.info.get("best") or {}
        chosen = f", best {best.get('metric')} {best['value']:.2f} on val" if best.get("value") is not None else ""
        return f"{len(epochs)}/{self.config.get('train', {}).get('epochs')} epochs{chosen}"


def load_run(path: Path, shards: str | None) -> RunReport:
    run = RunDir(path)
    info = run.read()
    if (info.get("best") or {}).get("run"):
        raise ConfigError(f"{path} is a sweep: report its winner, {path / info['best']['run']}")
    results_path, embeddings_path = path / "eval" / "results.json", path / "eval" / "embeddings.npz"
    if not (results_path.is_file() and embeddings_path.is_file()):
        log.info("%s: no eval/ results yet; evaluating best.pt on the test split", path)
        try:
            evaluate_run(path, "best", shards)
        except (ShardError, FileNotFoundError) as exc:
            raise ConfigError(f"{path}: not evaluated yet and its shards are not here ({exc}); run "
                              f"`launch local evaluate {path} --shards PATH` where they are, or pass --shards PATH") from None
    with np.load(embeddings_path) as data:
        embeddings = {key: data[key] for key in data.files}
    return RunReport(path, info, json.loads(results_path.read_text()), embeddings)
