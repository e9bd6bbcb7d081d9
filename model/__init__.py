"""Students, losses and retrieval metrics. Architecture is typed config (``model.config``);
``build_student`` and ``build_loss`` turn config into modules.

The torch parts load on first use (PEP 562): a job's ``--check`` validates its config through ``model.config`` without
importing torch."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from model.config import LossConfig, MLPStudentConfig, StudentConfig, TransformerStudentConfig

if TYPE_CHECKING:
    from model.losses import build_loss
    from model.metrics import retrieval_metrics
    from model.students import build_student

_TORCH_PARTS = {"build_loss": "model.losses", "build_student": "model.students", "retrieval_metrics": "model.metrics"}

__all__ = [
    "LossConfig",
    "MLPStudentConfig",
    "StudentConfig",
    "TransformerStudentConfig",
    "build_loss",
    "build_student",
    "retrieval_metrics",
]


def __getattr__(name: str) -> Any:
    if name in _TORCH_PARTS:
        return getattr(import_module(_TORCH_PARTS[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
