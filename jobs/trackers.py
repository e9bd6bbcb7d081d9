"""Where the training figures go besides metrics.jsonl (``train.log_with``): Accelerate's own trackers -- TensorBoard
into RUN/tensorboard, Weights & Biases, MLflow -- each given the same per-step and per-epoch figures (``acc.log``).

Credentials and destinations come from the environment of the process that trains, read by each tool itself
(WANDB_API_KEY, WANDB_MODE, MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN, ...): nothing here
records them or passes them on, and an error line names a variable, never its value.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from jobs.config import ConfigError, JobConfig
from jobs.rundir import RunDir

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}  # tracker -> what pip installs for it
# variables whose values never appear in an error line of ours (the trackers' own credentials)
SECRETS = ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class TrackerError(RuntimeError):
    """A tracker asked for could not start; this session has trained nothing yet."""


def tracker_extras(cfg: JobConfig) -> list[str]:
    """The project extras a compute installs for ``train.log_with`` (TensorBoard comes with the base install)."""
    return ["trackers"] if {"wandb", "mlflow"} & set(cfg.train.log_with) else []


def check_trackers(cfg: JobConfig) -> None:
    """Before training: every tracker asked for can start here, else one line naming the key and the fix. (Accelerate
    itself leaves a tracker whose package is missing out, silently.)"""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in cfg.train.log_with:
        if not available[name]():
            raise ConfigError(f"train.log_with={name}: the {PACKAGES[name]} package is not installed in {sys.prefix}; "
                              f"pip install {PACKAGES[name]} (or the project's `trackers` extra), or leave {name} out of train.log_with")
    if "mlflow" in cfg.train.log_with and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("train.log_with=mlflow: set MLFLOW_TRACKING_URI where the job runs (your tracking server, http://HOST:5000, "
                          "or a store of your choosing); MLflow's default is a file in whatever directory the job runs in")


def make_trackers(cfg: JobConfig, run: RunDir, resume: bool, main: bool) -> list[Any]:
    """``Accelerator(log_with=...)``. TensorBoard by name (``start`` gives its directory, RUN/tensorboard); W&B and MLflow
    as Accelerate's tracker objects, so each gets ``train.tracker_project`` and the run's id as its name (Accelerate's
    ``init_trackers`` would give them TensorBoard's directory name as their project). A resumed run goes on with its
    W&B run (the run id is its W&B id) and its MLflow run (found by name); ``main``: the process that logs."""
    from accelerate.tracking import MLflowTracker, WandBTracker

    chosen: list[Any] = []
    for name in cfg.train.log_with:
        if name == "tensorboard":
            chosen.append(name)
        elif name == "wandb":
            where = {} if os.environ.get("WANDB_DIR") else {"dir": str(run.path)}  # RUN/wandb: an offline run comes back with RUN
            session = {"resume": "allow"} if resume else {"config": cfg.model_dump(mode="json")}  # the config once, as MLflow's
            chosen.append(WandBTracker(cfg.train.tracker_project, name=run.path.name, id=wandb_id(run.path.name), **session, **where))
        else:
            chosen.append(MLflowTracker(cfg.train.tracker_project, run_name=run.path.name,
                                        run_id=mlflow_run_id(cfg.train.tracker_project, run.path.name) if resume and main else None))
    return chosen


def start_trackers(acc, cfg: JobConfig, global_step: int, resume: bool) -> None:
    """Start the trackers (``acc.init_trackers``): a resumed run's TensorBoard first drops the events after its checkpoint
    (the steps it replays). A new run's MLflow run gets the config as parameters (W&B got it at its start) and whole as
    its artifact ``config.json``; a resumed one keeps them (MLflow refuses to change a parameter, and a resume may move
    data.shards or train.session_steps). The artifact also keeps the run's ``artifacts`` folder from being empty: MLflow's
    file store does not know a run without that folder, and a store that travels file by file (Kaggle's outputs, S3)
    loses empty folders."""
    try:
        acc.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": global_step + 1} if resume else {}})
        if "mlflow" in cfg.train.log_with and not resume:
            config = cfg.model_dump(mode="json")
            acc.get_tracker("mlflow", unwrap=False).store_init_configuration(flat(config))
            if acc.is_main_process:
                import mlflow

                mlflow.log_dict(config, "config.json")
    except Exception as exc:  # no W&B login, an MLflow server that does not answer, ...: before any step
        names = ",".join(cfg.train.log_with)
        raise TrackerError(f"train.log_with={names}: a tracker did not start: {type(exc).__name__}: {scrub(str(exc))}") from None


def wandb_id(run_id: str) -> str:
    """A W&B run id from the run's id (W&B refuses ``/ \\ # ? % :`` in one)."""
    return "".join("-" if char in "/\\#?%:" else char for char in run_id)[:128]


def mlflow_run_id(project: str, run_name: str) -> str | None:
    """The MLflow run an earlier session of this run logged to (its experiment, its name), or None."""
    import mlflow  # function-local: an optional package, and slow to import

    try:
        experiment = mlflow.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", project))  # as Accelerate's tracker picks it
        found = [] if experiment is None else mlflow.search_runs([experiment.experiment_id], output_format="list",
                                                                  filter_string=f"attributes.run_name = '{run_name}'")
    except Exception as exc:
        raise ConfigError(f"train.log_with=mlflow: cannot look up this run's MLflow run to continue it: {type(exc).__name__}: "
                          f"{scrub(str(exc))}") from None
    return found[0].info.run_id if found else None


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``: the config as MLflow parameters."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def scrub(text: str) -> str:
    """``text`` with the value of every tracker credential variable set here replaced by its name."""
    for name in SECRETS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, f"${name}")
    return text
