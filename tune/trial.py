"""One sweep trial, run by Ray Tune in a worker process: the training job's own ``Trainer`` and
``run_training`` (no second training loop), reporting every epoch's validation metrics to Tune with
the trial's run directory as its checkpoint.

A trial opens the shard set for its train and validation splits only: reading the test split from
here raises, so no trial (and no scheduler decision) can depend on it.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import torch

from data_shards import open_shards
from jobs.config import ConfigError, JobConfig
from jobs.rundir import RunDir
from jobs.trainer import Trainer, run_training
from tune.space import SearchSpace, native


def device_precision(cfg: JobConfig) -> JobConfig:
    """Mixed precision by device when the config leaves it open: bf16 where the GPU has it, else fp16."""
    if cfg.train.mixed_precision is not None or not torch.cuda.is_available():
        return cfg
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"mixed_precision": precision})})


REPORTED = ("s2t_r1", "s2t_r5", "s2t_r10", "s2t_medr", "t2s_r1", "mean_cos")  # validation metrics in every report


def report_metrics(record: dict, metric: str) -> dict:
    """What Tune sees after each epoch: ``val_<metric>`` drives ASHA; ``best_val`` is the trial's best so far;
    ``patience_spent``: the trial ends here by its own early stopping (``train.patience``), not by the scheduler."""
    metrics = {f"val_{key}": record["val"][key] for key in dict.fromkeys([*REPORTED, metric])}
    metrics.update(epoch=record["epoch"] + 1, step=record["step"], train_loss=record["train_loss"], best_val=record["best_value"],
                   patience_spent=record["patience_spent"])
    return metrics


def restore(checkpoint, run: RunDir) -> dict | None:
    """Put the trial's last reported run directory back in place and return its last.pt (None: a fresh trial)."""
    if checkpoint is None:
        return None
    shutil.rmtree(run.path, ignore_errors=True)
    checkpoint.to_directory(str(run.path))
    return torch.load(run.checkpoints / "last.pt", map_location="cpu", weights_only=False)


def train_trial(params: dict, space: SearchSpace, trials_dir: str, sweep_id: str) -> None:
    import ray
    from ray import tune

    cfg = device_precision(space.trial_config(params))
    trial_id = tune.get_context().get_trial_id()
    run = RunDir(Path(trials_dir) / trial_id)
    resume = restore(tune.get_checkpoint(), run)
    shards = open_shards(cfg.data.shards, splits=(cfg.data.train_split, cfg.data.val_split))
    if resume and resume.get("shards_digest") != shards.digest():
        raise ConfigError(f"{shards.root}: not the shard set trial {trial_id} started on (manifest digest differs)")

    node = ray.get_runtime_context().get_node_id()  # which node ran each epoch (after a node's loss: another one)

    def report(record: dict) -> None:
        tune.report({**report_metrics(record, cfg.train.select_metric), "node_id": node},
                    checkpoint=tune.Checkpoint.from_directory(str(run.path)))

    try:
        trainer = Trainer(cfg, shards, run, resume, None, on_epoch_end=report)
        run_training(trainer, run, cfg, resume, sweep={"sweep_id": sweep_id, "trial_id": trial_id,
                                                        "params": {k: native(v) for k, v in params.items()}})
    finally:  # each report stored the directory as a checkpoint before it returned: this node's copy is scratch now
        shutil.rmtree(run.path, ignore_errors=True)
        fresh_process_state()


def fresh_process_state() -> None:
    """Leave the worker process as a new one would be for the next trial Tune gives it (``reuse_actors``): accelerate
    keeps its state (precision, devices) process-wide and refuses a second Accelerator that differs; the trial's log
    handlers go with it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    logging.basicConfig(handlers=[logging.StreamHandler(sys.stdout)], force=True)
