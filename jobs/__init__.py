"""Job entry points, runnable anywhere as ``python -m jobs.<name>`` or under ``accelerate launch``.

``JOBS`` is plain data (no torch import) so launchers can list and start jobs without knowing
what is inside them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobSpec:
    module: str
    summary: str
    distributed: bool  # started under `accelerate launch` (one process per device) or as one plain process
    makes_run: bool  # writes a new run directory (the launcher names it)
    checkable: bool = False  # accepts --check: validates its inputs and exits, so launchers fail fast


JOBS: dict[str, JobSpec] = {
    "train_mlp": JobSpec("jobs.train_mlp", "train the MLP late-fusion student, then evaluate best.pt on test", True, True, True),
    "train_transformer": JobSpec(
        "jobs.train_transformer", "train the Transformer fusion student, then evaluate best.pt on test", True, True, True
    ),
    "evaluate": JobSpec("jobs.evaluate", "evaluate a run's checkpoint on the test split (eval/results.json, .csv)", False, False),
}
