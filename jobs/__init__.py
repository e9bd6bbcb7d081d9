"""Job entry points, runnable anywhere as ``python -m jobs.<name>`` or under ``accelerate launch``.

``JOBS`` is plain data (no torch import) so launchers can list and start jobs without knowing
what is inside them.
"""
from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id(job: str) -> str:
    """Run ids sort by start time and stay unique across machines."""
    return f"{job}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class JobSpec:
    module: str
    summary: str
    distributed: bool  # started under `accelerate launch` (one process per device) or as one plain process
    makes_run: bool  # writes a new run directory (the launcher names it)
    checkable: bool = False  # accepts --check [--check-report F]: validates (and reports) its inputs, so launchers fail fast
    resumable: bool = False  # accepts --resume RUN_DIR and --time-budget S: remote backends can continue it
    sliceable: bool = False  # accepts --slice I/N (its share of the work) and --merge-slices RUN: fan-out over N workers
    extras: tuple[str, ...] = ()  # optional dependency groups (pyproject) the job needs beyond the base install


JOBS: dict[str, JobSpec] = {
    "train_mlp": JobSpec("jobs.train_mlp", "train the MLP late-fusion student, then evaluate best.pt on test", True, True, True, True),
    "train_transformer": JobSpec(
        "jobs.train_transformer", "train the Transformer fusion student, then evaluate best.pt on test", True, True, True, True
    ),
    "extract": JobSpec(
        "jobs.extract", "videos -> shard set: CLIP frames + VGGish audio + ImageBind (or dense CLIP) teacher; resumable, "
        "sliceable (--num-kernels N), one worker per GPU", True, True, True, True, True, extras=("extract",)
    ),
    "synthesize": JobSpec(
        "jobs.synthesize", "write the synthetic shard set into RUN/shards (sliceable: --num-kernels N)", False, True, sliceable=True
    ),
    "sweep": JobSpec(
        "jobs.sweep", "Ray Tune sweep over a search space (--space temperature_depth); winner picked on validation -> RUN/best",
        False, True, True, True, extras=("tune",)
    ),
    "zero_shot": JobSpec("jobs.zero_shot", "the floor to beat: middle CLIP frame -> fixed random projection, recorded and "
                         "evaluated as a run (nothing trained)", False, True, True),
    "index": JobSpec("jobs.index", "a trained student's search index of a shard set (Qdrant: video vectors + frame vectors "
                     "with timestamps) -> --index DIR or RUN/index; resumable, a no-op when nothing changed", False, True, True,
                     extras=("search",)),
    "evaluate_search": JobSpec("jobs.evaluate_search", "text->video and video->video R@K / MedR of an index's student vectors "
                               "against its teacher vectors (what the cheap index costs)", False, False, extras=("extract", "search")),
    "evaluate": JobSpec("jobs.evaluate", "evaluate runs' checkpoints on the test split (eval/results.json, .csv, embeddings.npz)",
                        False, False),
}
