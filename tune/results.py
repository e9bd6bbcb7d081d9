"""After the trials: the table of every trial, the choice of the winner on validation, the plot, and
the winner exported as an ordinary run directory (``<sweep>/best``) that ``evaluate`` accepts.

Selection reads validation metrics only; the winner's test metrics are added to the table after
``evaluate`` has run on it, once.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from pathlib import Path

from data_shards.files import atomic_write_text
from jobs import now
from jobs.rundir import RunDir
from model.selection import is_better
from tune.runner import Experiment
from tune.space import SearchSpace, native
from tune.trial import REPORTED

TABLE = "trials"  # trials.csv + trials.json in the sweep directory
PLOT = "val_r1.png"


def load_experiment(experiment: Experiment):
    """Tune's record of the sweep (every trial's config, status, results and checkpoints), read from where it is."""
    from ray.tune import ExperimentAnalysis

    # Trials not started yet (an interrupted sweep) have no results; that is expected, not a warning.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    return ExperimentAnalysis(experiment.path, storage_filesystem=experiment.filesystem)


def trial_rows(analysis, space: SearchSpace) -> list[dict]:
    """One row per trial Tune knows: params, validation metrics at its best epoch, epochs run, stopped early (by the
    scheduler; a trial that ended by its own ``train.patience`` completed)."""
    frames = analysis.trial_dataframes
    metric = space.metric
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        params = {key: native(trial.config[key]) for key in space.params}
        planned = int(params.get("train.epochs", space.trial_config(params).train.epochs))
        history = frames.get(trial.trial_id)
        records = history.to_dict("records") if history is not None and len(history) else []
        best = None
        for record in records:
            if best is None or is_better(metric, record[f"val_{metric}"], best[f"val_{metric}"]):
                best = record
        epochs = int(records[-1]["epoch"]) if records else 0
        row = {"trial_id": trial.trial_id, "status": trial.status, **params, "epochs_run": epochs, "epochs_planned": planned,
               "stopped_early": trial.status == "TERMINATED" and epochs < planned and not ended_by_patience(records),
               "best_epoch": int(best["epoch"]) if best else None,
               **{f"val_{name}": (float(best[f"val_{name}"]) if best else None) for name in REPORTED},
               "seconds": round(float(records[-1]["time_total_s"]), 1) if records else None}
        if best is not None:
            row[f"val_{metric}"] = float(best[f"val_{metric}"])
        rows.append(row)
    return rows


def ended_by_patience(records: list[dict]) -> bool:
    """The trial's last report says its own ``train.patience`` ended it (a column Tune fills with NaN where absent)."""
    return bool(records) and records[-1].get("patience_spent") in (True,)


def finished(rows: list[dict], expected: int) -> bool:
    return len(rows) >= expected and all(row["status"] in ("TERMINATED", "ERROR") for row in rows)


def choose_winner(rows: list[dict], metric: str) -> dict:
    """The best validation value of ``metric`` over all trials (ties: the earlier trial)."""
    winner = None
    for row in rows:
        value = row.get(f"val_{metric}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if winner is None or is_better(metric, value, winner[f"val_{metric}"]):
            winner = row
    if winner is None:
        raise RuntimeError("no trial reported a validation result; see the trials' errors in the sweep log")
    return winner


def write_table(sweep_dir: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / f"{TABLE}.csv", table.getvalue())
    atomic_write_text(sweep_dir / f"{TABLE}.json", json.dumps(rows, indent=2) + "\n")


def plot_axes(space: SearchSpace) -> list[str]:
    """Temperature x depth when the space searches them, else its first two keys."""
    preferred: list[str] = [key for key in ("loss.temperature", "model.depth") if key in space.params]
    return (preferred if len(preferred) == 2 else list(space.params))[:2]


def write_plot(sweep_dir: Path, rows: list[dict], space: SearchSpace, winner_id: str | None) -> Path:
    """Validation R@1 of every trial over the first two searched keys (colour = value; hollow = stopped early)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = f"val_{space.metric}"
    axes = plot_axes(space)
    shown = [row for row in rows if row.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    x = [row[axes[0]] for row in shown]
    y = [row[axes[1]] for row in shown] if len(axes) > 1 else [row[metric] for row in shown]
    values = [row[metric] for row in shown]
    full = [i for i, row in enumerate(shown) if not row["stopped_early"]]
    early = [i for i, row in enumerate(shown) if row["stopped_early"]]
    lowest, highest = min(values, default=0), max(values, default=1)  # one colour scale for both marker kinds
    points = ax.scatter([x[i] for i in full], [y[i] for i in full], c=[values[i] for i in full], s=90, label="ran all epochs",
                        cmap="viridis", vmin=lowest, vmax=highest)
    if early:
        ax.scatter([x[i] for i in early], [y[i] for i in early], c=[values[i] for i in early], s=90, marker="s",
                   edgecolors="black", linewidths=1.2, label="stopped early (ASHA)", cmap="viridis", vmin=lowest, vmax=highest)
    for i, row in enumerate(shown):
        ax.annotate(f"{values[i]:.1f}", (x[i], y[i]), textcoords="offset points", xytext=(6, 6), fontsize=8)
        if row["trial_id"] == winner_id:
            ax.scatter([x[i]], [y[i]], s=320, facecolors="none", edgecolors="red", linewidths=2, label="winner (validation)")
    numeric = all(isinstance(v, (int, float)) for v in x)  # a categorical grid (e.g. precisions) gets a category axis
    if space.params[axes[0]].log_scale or (x and numeric and min(x) > 0 and max(x) / min(x) >= 20):
        ax.set_xscale("log")
    if y and all(isinstance(v, int) for v in y):  # e.g. depth: whole-number ticks only
        ax.set_yticks(sorted(set(y)))
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1] if len(axes) > 1 else metric)
    fig.colorbar(points, ax=ax, label=f"{metric} (best epoch)")
    ax.set_title(f"{sweep_dir.name}: validation {space.metric} per trial")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = sweep_dir / PLOT
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def export_best(analysis, sweep_dir: Path, winner: dict, metric: str) -> Path:
    """Copy the winner's last checkpointed run directory to ``<sweep>/best`` (atomically) and mark it finished."""
    trial = next(t for t in analysis.trials if t.trial_id == winner["trial_id"])
    checkpoint = analysis.get_last_checkpoint(trial)
    if checkpoint is None:
        raise RuntimeError(f"trial {trial.trial_id} left no checkpoint to export")
    best = sweep_dir / "best"
    staging = sweep_dir / ".best.partial"
    shutil.rmtree(staging, ignore_errors=True)
    checkpoint.to_directory(str(staging))
    last = RunDir(staging).read_metrics()
    RunDir(staging).update(run_id=f"{sweep_dir.name}-best", status="stopped_early" if winner["stopped_early"] else "complete",
                           ended_at=now(), global_step=max((r.get("step", 0) for r in last), default=0),
                           best={"metric": metric, "value": winner[f"val_{metric}"]})
    shutil.rmtree(best, ignore_errors=True)
    staging.rename(best)
    return best
