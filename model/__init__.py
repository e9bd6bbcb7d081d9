"""Students, losses and retrieval metrics. Architecture is typed config (``model.config``);
``build_student`` and ``build_loss`` turn config into modules."""
from model.config import LossConfig, MLPStudentConfig, StudentConfig, TransformerStudentConfig
from model.losses import build_loss
from model.metrics import retrieval_metrics
from model.students import build_student

__all__ = [
    "LossConfig",
    "MLPStudentConfig",
    "StudentConfig",
    "TransformerStudentConfig",
    "build_loss",
    "build_student",
    "retrieval_metrics",
]
