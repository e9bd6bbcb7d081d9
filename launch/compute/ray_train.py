"""A training job across a Ray cluster's nodes (``launch ray train_mlp --num-workers N``), run by the Ray job's
driver on the cluster.

How the work divides: **Ray Train** places the N workers (on several nodes if needed), starts one process per
worker, sets up torch's process group across them and restarts them after a failure; **Accelerate** stays,
inside each worker, what it is under ``accelerate launch`` -- device, precision, DDP wrapping, the gather of
embeddings for the global-batch InfoNCE -- so each worker runs the job's own ``main`` unchanged: the same
Trainer, the same run directory. Each worker keeps its copy of the run directory on its own node; after every
epoch each one reports its part to Ray (rank 0: the run directory; rank k: its own logs and audit), which
persists them into one checkpoint in storage. A worker group that lost a worker restarts from that checkpoint
(every rank resumes from ``last.pt``, exactly); at the end the checkpoint is the whole run directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from jobs.contract import rank_owner
from jobs.run_lock import lock_held
from launch.job_args import without_option



def node_copies() -> Path:
    """Where the workers of this node keep their copies of run directories."""
    return Path(tempfile.gettempdir()) / f"streamapprox-{os.getuid()}" / "ray-train"


def node_run_dir(run_id: str, rank: int) -> Path:
    """This rank's copy of the run directory, on its node's own disk (named like the run: run.json takes its id from it)."""
    return node_copies() / f"rank{rank}" / run_id


@contextlib.contextmanager
def held_copy(run_dir: Path):
    """This worker's copy of the run directory, held by a lock for as long as the worker lives and removed when it
    ends. A worker that was killed cannot remove its own copy, and a restarted group may place its rank on another
    node, so each worker first removes the copies on its node that no living worker holds (their lock is free). The
    node's scan lock orders that against other workers taking their own locks."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        with open(node_copies() / ".scan.lock", "a") as scan:
            fcntl.flock(scan, fcntl.LOCK_EX)
            fcntl.flock(held.enter_context(open(lock_of(run_dir), "a")), fcntl.LOCK_EX)  # before the copy exists
            for copy in node_copies().glob("rank*/*"):
                if copy.is_dir() and copy != run_dir and not copy.name.startswith(".") and not lock_held(lock_of(copy)):
                    shutil.rmtree(copy, ignore_errors=True)
                    shutil.rmtree(staging_of(copy), ignore_errors=True)
        try:
            yield run_dir
        finally:  # each report stored this rank's part before it returned: the node's copy is scratch now (a restart restores)
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(staging_of(run_dir), ignore_errors=True)
            lock_of(run_dir).unlink(missing_ok=True)


def lock_of(run_dir: Path) -> Path:
    """The lock its worker holds on a copy for as long as it lives."""
    return run_dir.with_name(f"{run_dir.name}.lock")


def staging_of(run_dir: Path) -> Path:
    """Where a rank links its part of ``run_dir`` for a report."""
    return run_dir.with_name(f".report-{run_dir.name}")


def part_of(run_dir: Path, rank: int, staging: Path) -> Path:
    """This rank's part of the run directory, linked into ``staging``: rank 0 all of it but the other ranks' own
    files, rank k only its own files."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"):
        if rank_owner(path.name) == rank:
            target = staging / path.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return staging


def worker_loop(config: dict) -> None:
    """One worker: the job's own main, its run directory reported to Ray after every epoch and at the end."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with held_copy(node_run_dir(config["run_id"], rank)) as run_dir:
        run_rank(config, rank, run_dir)


def run_rank(config: dict, rank: int, run_dir: Path) -> None:
    """This rank's part: its copy of the run directory made (fresh, restored or resumed), the job's main run in it."""
    import ray
    import ray.train

    where = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    checkpoint = ray.train.get_checkpoint()
    given = without_option(without_option(config["argv"], "--resume"), "--run-dir")
    shutil.rmtree(run_dir, ignore_errors=True)
    if checkpoint is not None:  # a restarted worker group: every rank resumes from the run's last persisted epoch
        checkpoint.to_directory(str(run_dir))
        argv = ["--resume", str(run_dir)]
    elif config.get("restore"):  # a run continued on this cluster: every rank starts from its copy in storage
        from tune.storage import without_ray_owned
        from sync import sync

        sync(config["restore"], str(run_dir), select=without_ray_owned)
        argv = ["--resume", str(run_dir), *given]
    else:
        argv = [*given, "--run-dir", str(run_dir)]
    from jobs.hardware import check_gpus
    from launch.accelerate import mixed_precision

    # what accelerate launch would be told: the precision asked for, ``auto`` resolved on this worker's GPUs
    os.environ["ACCELERATE_MIXED_PRECISION"] = mixed_precision(config.get("mixed_precision") or "auto", check_gpus())

    def persist(record: dict | None = None) -> None:
        metrics = {"epoch": record["epoch"] + 1, "step": record["step"], **{f"val_{k}": v for k, v in record["val"].items()}} \
            if record else {"final": 1}
        staged = part_of(run_dir, rank, staging_of(run_dir))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(staged)))
        shutil.rmtree(staged, ignore_errors=True)

    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "logs" / f"node-rank{rank}.jsonl", "a") as handle:  # where each rank ran, each time it started
        handle.write(json.dumps(where) + "\n")
    code = importlib.import_module(config["module"]).main(argv, on_epoch_end=persist)
    if code != 0:
        raise RuntimeError(f"{config['module']} exited with {code} on rank {rank}; see its log")
    persist()  # the finished run directory (eval/, run.json's end) as the last checkpoint


def fit(module: str, argv: list[str], run_dir: Path, storage, workers: int, gpus_per_worker: float, cpus_per_worker: float,
        placement_strategy: str, max_failures: int, mixed_precision: str | None, restore: str | None = None) -> Path:
    """Train ``module`` on ``workers`` Ray Train workers; the finished run directory ends up in ``run_dir``.
    ``storage`` is a ``tune.storage.RayStorage``: where Ray persists the run's checkpoints; ``restore``: the URL of a
    run directory to continue."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"module": module, "argv": argv, "run_id": run_dir.name, "mixed_precision": mixed_precision,
                           "restore": restore},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources,
                                     placement_strategy=placement_strategy),
        run_config=RunConfig(name="ray-train", storage_path=storage.path, storage_filesystem=storage.filesystem,
                             failure_config=FailureConfig(max_failures=max_failures), checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"Ray Train: {result.error}")
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError("Ray Train: the workers ended without reporting a checkpoint")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    checkpoint.to_directory(str(run_dir))
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "logs" / "ray-train.json").write_text(json.dumps({"workers": workers, "placement_strategy": placement_strategy,
                                                                 "checkpoint": checkpoint.path}, indent=2) + "\n")
    return run_dir
