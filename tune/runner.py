"""The Ray Tune side of a sweep: start (or join) Ray, build the ``Tuner`` -- or restore it -- and run
the trials. Tune's own experiment directory is ``<sweep>/tune``; each trial's live run directory is
``<sweep>/trials/<trial-id>`` and its latest epoch is checkpointed through Tune.
"""
from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jobs.config import ConfigError
from jobs.run_lock import lock_held
from model.selection import LOWER_IS_BETTER
from tune.space import SearchSpace
from tune.storage import RayStorage
from tune.trial import train_trial

log = logging.getLogger("streamapprox.sweep")
EXPERIMENT = "tune"  # Tune's experiment directory inside the sweep directory


_HELD_ALIASES: dict[str, IO] = {}  # alias -> the open lock file that marks it in use, for this process's life


def experiment_dir(sweep_dir: Path, alias: str) -> Path:
    """Tune's experiment directory (``<sweep>/tune``) as Tune must see it: through an alias path that is the
    same in every session of the sweep. Tune records absolute paths in its state, and a restored search
    algorithm creates new trials under the path of the session that started the sweep (Ray 2.60; restored
    trials are re-rooted, new ones are not), so a sweep resumed from another directory -- the next Kaggle
    kernel, another machine -- would write their checkpoints outside it and lose them. The alias is named by a
    token kept in the sweep's run.json (``alias``) and re-pointed at the sweep directory in each session, so the
    aliases of sweep directories that are gone (deleted, or moved: their next session makes the alias again) are
    removed here rather than kept forever -- but never one a running sweep holds (``hold_alias``): its directory
    may only look gone from here (another mount namespace's disk, a network mount not mounted now)."""
    link = Path("/tmp") / f"streamapprox-{os.getuid()}" / "sweeps" / alias
    link.parent.mkdir(parents=True, exist_ok=True)
    with open(link.parent / ".scan.lock", "a") as scan:  # orders holding an alias against tidying the others
        fcntl.flock(scan, fcntl.LOCK_EX)
        hold_alias(link)
        for other in link.parent.iterdir():
            if not other.name.startswith(".") and other.is_symlink() and not other.exists() and not lock_held(alias_lock(other)):
                other.unlink(missing_ok=True)
    target = str(sweep_dir.resolve())
    if not (link.is_symlink() and os.readlink(link) == target):
        fresh = link.with_name(f".{alias}.{os.getpid()}")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(target)
        fresh.replace(link)
    return link / EXPERIMENT


def alias_lock(link: Path) -> Path:
    return link.with_name(f".{link.name}.lock")


def hold_alias(link: Path) -> None:
    """A shared lock on the alias's lock file, held until this process ends (the sweep's driver: its trials use the
    alias while it lives)."""
    if link.name not in _HELD_ALIASES:
        handle = open(alias_lock(link), "a")
        fcntl.flock(handle, fcntl.LOCK_SH)
        _HELD_ALIASES[link.name] = handle


@dataclass(frozen=True)
class Experiment:
    """Where Tune keeps a sweep's experiment: in the sweep directory (through its alias), or -- with ``--storage`` --
    in storage, where every trial on every node persists its results and checkpoints itself."""

    path: str
    filesystem: object | None = None

    @classmethod
    def of(cls, sweep_dir: Path, alias: str, storage: RayStorage | None) -> Experiment:
        return cls(storage.child(EXPERIMENT), storage.filesystem) if storage else cls(str(experiment_dir(sweep_dir, alias)))

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0]

    def exists(self) -> bool:
        from ray import tune

        return tune.Tuner.can_restore(self.path, storage_filesystem=self.filesystem)


def trials_root(alias: str) -> Path:
    """Where the trials' live run directories go on whichever node runs them: that node's own disk."""
    return Path(tempfile.gettempdir()) / f"streamapprox-{os.getuid()}" / "trials" / alias


@dataclass
class SweepSettings:
    num_samples: int = 8
    scheduler: str = "asha"  # asha | none
    max_concurrent: int | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    grace_period: int = 1
    reduction_factor: float = 2.0
    seed: int = 0
    epoch_budget: int | None = None  # per session: stop resumably after this many trial-epochs were reported
    max_failures: int = 2  # a trial that fails (its node died) restarts from its last checkpoint this many times
    allow_errored_trials: bool = False  # pick the winner among the others when some trials errored


def objective(metric: str) -> tuple[str, str]:
    """The reported metric name and Tune's mode for a selection metric such as ``s2t_r1``."""
    suffix = metric.split("_", 1)[-1]
    return f"val_{metric}", "min" if suffix in LOWER_IS_BETTER or metric in LOWER_IS_BETTER else "max"


def expected_trials(space: SearchSpace, settings: SweepSettings) -> int:
    return settings.num_samples * space.grid_size()


@dataclass(frozen=True)
class RayHere:
    resources: dict
    own: bool  # started by this sweep (it ends with it), not a cluster that RAY_ADDRESS names


def start_ray() -> RayHere:
    """A local Ray instance of this sweep's own, or the cluster ``RAY_ADDRESS`` names."""
    import ray

    # Tune snapshots its state whenever a trial's only kept checkpoint changes: cheap here, so no warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    own = not os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address="local" if own else None, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.WARNING)
    return RayHere(ray.cluster_resources(), own)


def trial_resources(settings: SweepSettings, resources: dict, trials: int) -> dict:
    """CPUs and (fractional) GPUs per trial: by default the cluster shared evenly by the trials that run
    at once, so several small students share a GPU (4 trials on 2 GPUs get 0.5 each)."""
    cpus, gpus = resources.get("CPU", 1), resources.get("GPU", 0)
    concurrent = max(1, min(settings.max_concurrent or trials, trials))
    per_cpu = settings.cpus_per_trial or max(1, math.floor(cpus / concurrent))
    if settings.gpus_per_trial is None:
        per_gpu = min(1.0, 1 / math.ceil(concurrent / gpus)) if gpus else 0.0
    else:
        per_gpu = settings.gpus_per_trial
    if per_cpu > cpus:
        raise ConfigError(f"--cpus-per-trial {per_cpu}: Ray has only {cpus:g} CPUs")
    if per_gpu > 0 and gpus == 0:
        raise ConfigError(f"--gpus-per-trial {per_gpu}: Ray sees no GPU here; drop the option to train on CPU")
    if per_gpu > 1 and per_gpu != int(per_gpu):
        raise ConfigError(f"--gpus-per-trial {per_gpu}: above 1 it must be a whole number")
    return {"cpu": per_cpu, "gpu": per_gpu}


def build_scheduler(space: SearchSpace, settings: SweepSettings):
    if settings.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = space.max_epochs()
    if settings.grace_period >= max_t:
        raise ConfigError(f"--grace-period {settings.grace_period}: must be below the trials' epochs ({max_t}) for ASHA to stop anything")
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


_STOPPING = threading.Event()  # module state, so that the (pickled) callback holds no lock


def stop_session(why: str) -> None:
    """Tune's graceful stop, once: the signal Tune listens to (Ctrl-C does the same)."""
    if not _STOPPING.is_set():
        _STOPPING.set()
        log.warning("%s: stopping the sweep (resumable with --resume)", why)
        os.kill(os.getpid(), signal.SIGUSR1)


def epoch_counter(epochs: int | None):
    """A Tune callback that stops the session once it has reported ``epochs`` trial-epochs: a budget that does
    not depend on how fast the machine is."""
    from ray.tune import Callback

    class CountEpochs(Callback):
        reports = 0

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            # counted once the epoch's checkpoint is registered, so that the state saved at the stop holds it
            self.reports += 1
            if epochs and self.reports >= epochs:
                stop_session(f"epoch budget reached ({self.reports} trial-epochs this session)")

    return CountEpochs()


class Deadline:
    """Ends this session of the sweep the way Ctrl-C does (state saved, trials resumable) when its time budget runs out."""

    def __init__(self, seconds: float | None):
        self._timer = threading.Timer(seconds, stop_session, args=("time budget reached",)) if seconds else None

    def __enter__(self) -> Deadline:
        _STOPPING.clear()
        # Tune installs its own SIGUSR1 handler when fit() starts; until then the signal must not kill the sweep.
        signal.signal(signal.SIGUSR1, lambda *_: None)
        if self._timer:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer:
            self._timer.cancel()


def run_trials(sweep_dir: Path, alias: str, space: SearchSpace, settings: SweepSettings, resume: bool, time_budget: float | None,
               experiment: Experiment, callbacks: list | None = None) -> dict:
    """Run (or continue) the sweep's trials; returns the per-trial resources used. A continued sweep retries its
    errored trials from their last checkpoints."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trials = expected_trials(space, settings)
    ray_here = start_ray()
    resources = trial_resources(settings, ray_here.resources, trials)
    # On its own Ray one worker process runs trial after trial (a trial leaves its process as a new one: tune.trial),
    # saving each trial a process that imports torch and the job again (about 4 CPU-seconds). Not on a cluster: there a
    # trial restored into a reused process after its driver died found no checkpoint (docs/remote-facts.md).
    reuse = ray_here.own
    callbacks = [*(callbacks or []), epoch_counter(settings.epoch_budget)]
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space, trials_dir=str(trials_root(alias)), sweep_id=sweep_dir.name), resources)
    if resume and experiment.exists():
        tuner = tune.Tuner.restore(experiment.path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=experiment.filesystem)
        # A restored Tuner carries the callbacks pickled with the first session (its storage mirror, its epoch
        # count); this session's replace them. Only a Tuner run in this process has them at hand (not one through Ray Client).
        local_tuner = tuner._local_tuner
        if local_tuner is None:
            raise ConfigError("--resume of a sweep cannot run through Ray Client (a ray:// RAY_ADDRESS): run it on a node of the cluster")
        local_tuner.get_run_config().callbacks = callbacks
        local_tuner._tune_config.reuse_actors = reuse  # where this session runs, not where the first did
    else:
        metric, mode = objective(space.metric)
        tuner = tune.Tuner(
            trainable,
            param_space=space.to_tune(),
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=settings.num_samples, scheduler=build_scheduler(space, settings),
                search_alg=BasicVariantGenerator(max_concurrent=settings.max_concurrent or 0, random_state=settings.seed),
                trial_name_creator=lambda trial: trial.trial_id, trial_dirname_creator=lambda trial: trial.trial_id,
                reuse_actors=reuse,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT, storage_path=experiment.parent, storage_filesystem=experiment.filesystem, verbose=1,
                callbacks=callbacks, checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            ),
        )
    log.info("sweep: %d trials, %s per trial, scheduler %s, at most %s at once; experiment at %s", trials, resources, settings.scheduler,
             settings.max_concurrent or "all", experiment.path)
    with Deadline(time_budget):
        tuner.fit()
    return resources
