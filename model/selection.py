"""Which figures a run reports and which way each is better. torch-free: configs (``train.select_metric``), launchers and
sweep tables name and compare metrics without importing what computes them (``model.metrics``)."""
from __future__ import annotations

RECALL_AT = (1, 5, 10)
LOWER_IS_BETTER = ("medr", "meanr", "mse")


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    suffix = metric.rsplit("_", 1)[-1]
    return new < old if suffix in LOWER_IS_BETTER or metric in LOWER_IS_BETTER else new > old
