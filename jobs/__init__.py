"""Job entry points, runnable anywhere as ``python -m jobs.<name>`` or under ``accelerate launch``.

``JOBS`` is plain data (no torch import) so launchers can list and start jobs without knowing
what is inside them.
"""
from __future__ import annotations

import atexit
import datetime as dt
import gc
import os
import secrets
import sys
from dataclasses import dataclass
from typing import NoReturn, TypedDict


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_KEPT: list[object] = []


def keep_until_exit(obj: object) -> None:
    """Keep ``obj`` alive to the end of the process, which ``exit_job`` then ends without freeing it. For what holds a
    torch Gloo process group (a DDP model's reducer): its destructor joins Gloo's worker thread while holding the GIL,
    and that thread may still need the GIL to free the last collective's tensors -- a deadlock torch has left open
    (https://github.com/pytorch/pytorch/issues/56297). A rank that hit it hung after its job had finished, until torch
    elastic's 300 s exit barrier gave up on it."""
    _KEPT.append(obj)


def exit_job(code: int) -> NoReturn:
    """End a job's process with ``code``. With objects kept (``keep_until_exit``): what a normal exit runs (the atexit
    handlers: logs flushed, temporary files removed), then ``os._exit`` -- no interpreter teardown to free them in.
    Otherwise ``gc.freeze()`` first: the interpreter's last collections then skip what torch and the job leave behind
    -- about 0.7 s of every training process's exit, and of its launcher's --check."""
    if _KEPT:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    gc.freeze()
    sys.exit(code)


def new_run_id(job: str) -> str:
    """Run ids sort by start time and stay unique across machines."""
    return f"{job}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class JobSpec:
    """What a launcher may know of a job: how to start it, and what it promises."""

    module: str
    help: str
    distributed: bool = False  # started under `accelerate launch` (one process per device), else one plain process
    makes_run: bool = False  # writes a new run directory (the launcher names it)
    checkable: bool = False  # accepts --check [--check-report F]: validates (and reports) its inputs, so launchers fail fast
    resumable: bool = False  # accepts --resume RUN_DIR and --time-budget S: a run can be continued, here or elsewhere
    sliceable: bool = False  # accepts --slice I/N (its share of the work) and --merge-slices RUN: fan-out over N workers
    epoch_hook: bool = False  # main(argv, on_epoch_end=...) reports each epoch: Ray Train can spread it over nodes
    extras: tuple[str, ...] = ()  # optional dependency groups (pyproject) the job needs beyond the base install
    summary: str = "nothing"  # the function of jobs.summaries that sums a finished run up in a few lines
    driver_cpus: float = 1  # CPUs its driver process takes on a cluster (a sweep's trials ask for their own)
    storage_arg: bool = False  # takes --storage URL itself: persists there through Ray, and resumes from there when RUN is gone
    remote: bool = True  # runs where code is sent; False: it reads runs or indexes by path, which no launcher carries yet

    def summarize(self, run_dir, info: dict) -> list[str]:
        from jobs import summaries

        return getattr(summaries, self.summary)(run_dir, info)


class TrainingTraits(TypedDict):
    """The JobSpec fields every training job shares, spelled once."""

    distributed: bool
    makes_run: bool
    checkable: bool
    resumable: bool
    epoch_hook: bool
    summary: str


TRAINING = TrainingTraits(distributed=True, makes_run=True, checkable=True, resumable=True, epoch_hook=True, summary="training")
JOBS: dict[str, JobSpec] = {
    "train_mlp": JobSpec("jobs.train_mlp", "train the MLP late-fusion student, then evaluate best.pt on test", **TRAINING),
    "train_transformer": JobSpec("jobs.train_transformer", "train the Transformer fusion student, then evaluate best.pt on test",
                                 **TRAINING),
    "extract": JobSpec("jobs.extract", "videos -> shard set: CLIP frames + VGGish audio + ImageBind (or dense CLIP) teacher; "
                       "resumable, sliceable (--num-kernels N), one worker per GPU", distributed=True, makes_run=True, checkable=True,
                       resumable=True, sliceable=True, extras=("extract",), summary="shards"),
    "synthesize": JobSpec("jobs.synthesize", "write the synthetic shard set into RUN/shards (sliceable: --num-kernels N)",
                          makes_run=True, sliceable=True, summary="shards"),
    "sweep": JobSpec("jobs.sweep", "Ray Tune sweep over a search space (--space temperature_depth); winner picked on validation -> "
                     "RUN/best", makes_run=True, checkable=True, resumable=True, extras=("tune",), summary="sweep", driver_cpus=0,
                     storage_arg=True),
    "zero_shot": JobSpec("jobs.zero_shot", "the floor to beat: middle CLIP frame -> fixed random projection, recorded and evaluated "
                         "as a run (nothing trained)", makes_run=True, checkable=True, summary="training"),
    "index": JobSpec("jobs.index", "a trained student's search index of a shard set (Qdrant: video vectors + frame vectors with "
                     "timestamps) -> --index DIR or RUN/index; resumable, a no-op when nothing changed", makes_run=True, checkable=True,
                     extras=("search",), summary="index"),
    "evaluate_search": JobSpec("jobs.evaluate_search", "text->video and video->video R@K / MedR of an index's student vectors against "
                               "its teacher vectors (what the cheap index costs)", extras=("extract", "search"), remote=False),
    "evaluate": JobSpec("jobs.evaluate", "evaluate runs' checkpoints on the test split (eval/results.json, .csv, embeddings.npz)",
                        remote=False),
}
