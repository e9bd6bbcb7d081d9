"""`train.log_with=tensorboard,mlflow,wandb`: each tracker holds exactly metrics.jsonl's per-step and per-epoch figures,
read back the way each tool stores them (TensorBoard's event files, MLflow's store, W&B's offline run file), across a
resume; no tracker credential reaches a file; a tracker that cannot start here is one line before training, exit 2."""
from __future__ import annotations

import json
import secrets
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_MLP, SMALL, cli_env, launch_command, only_run, read_jsonl, tensorboard_scalars

Series = dict[str, list[tuple[int, float]]]  # tag -> (step, value), as `acc.log` wrote it


def tracker_env(tmp_path: Path, **extra: str) -> dict:
    """W&B offline (no account; its config and caches under tmp_path), MLflow in a file store under tmp_path."""
    env = {key: value for key, value in cli_env().items() if not key.startswith(("WANDB_", "MLFLOW_"))}
    return {**env, "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "MLFLOW_TRACKING_URI": (tmp_path / "mlruns").as_uri(),
            "MLFLOW_ALLOW_FILE_STORE": "true", **extra}


def run_launch(tmp_path: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def run_job(tmp_path: Path, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    """The training job itself, as a launcher starts it on the machine that trains (`launch local` ends the same way, exit 2)."""
    command = [sys.executable, "-m", "jobs.train_mlp", "--set", f"data.shards={SMALL}", *overrides, "--run-dir", "runs/job"]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def expected_series(run: Path) -> Series:
    """What train.py logs of metrics.jsonl: train/<term> per logged step; val/<metric>, and epoch/train_loss, per epoch."""
    series: Series = {}
    for record in read_jsonl(run / "metrics.jsonl"):
        if record["kind"] == "step":
            figures = {f"train/{k}": v for k, v in record.items() if k not in ("kind", "epoch", "step")}
        else:  # an epoch (or a fine-tuned run's step-0 validation)
            figures = {f"val/{k}": v for k, v in record.get("val", {}).items()}
            if record.get("train_loss") is not None:
                figures["epoch/train_loss"] = record["train_loss"]
        for tag, value in figures.items():
            series.setdefault(tag, []).append((record["step"], value))
    return series


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``, what `wandb sync` uploads): a LevelDB-style log (32 KiB blocks,
    each chunk a 7-byte header: crc32, length, type full/first/middle/last) after a 7-byte ``:W&B`` header, each record
    one ``wandb_internal_pb2.Record``. wandb 0.31 ships no reader of its own for it in Python."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def wandb_series(run: Path) -> tuple[Series, list]:
    """Every W&B offline run of the run (one per session) read back: its history rows as series, and its run records."""
    series: Series = {}
    runs = []
    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                runs.append(record.run)
            elif record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    tag = item.key or "/".join(item.nested_key)
                    if not tag.startswith("_"):
                        series.setdefault(tag, []).append((record.history.step.num, json.loads(item.value_json)))
    return series, runs


def mlflow_series(store: Path, run_name: str) -> tuple[Series, dict, int]:
    """The MLflow run named like the run, in the experiment `streamapprox` of the file store ``store``: its metric
    histories, its parameters, and how many runs have that name."""
    from mlflow import MlflowClient

    client = MlflowClient(store.as_uri())
    experiment = client.get_experiment_by_name("streamapprox")
    found = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
    history = {tag: sorted((m.step, m.value) for m in client.get_metric_history(found[0].info.run_id, tag)) for tag in found[0].data.metrics}
    return history, found[0].data.params, len(found)


def test_every_tracker_holds_the_figures_of_metrics_jsonl_across_a_resume(tmp_path, small_shards, monkeypatch):
    key, password = secrets.token_hex(20), secrets.token_hex(12)  # as a user's environment holds them: W&B offline ignores the key
    env = tracker_env(tmp_path, WANDB_API_KEY=key, MLFLOW_TRACKING_PASSWORD=password)
    first = run_launch(tmp_path, env, "local", "train_mlp", "--set", f"data.shards={SMALL}", *FAST_MLP, "train.epochs=2",
                       "train.session_steps=7", "train.log_with=tensorboard,mlflow,wandb")
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]  # incomplete: continue with --resume
    run = only_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "incomplete"
    again = run_launch(tmp_path, env, "local", "train_mlp", "--resume", str(run), "--set", "train.session_steps=null")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    expected = expected_series(run)
    assert [step for step, _ in expected["train/loss"]] == list(range(1, 19)) and len(expected["val/s2t_r1"]) == 2

    board = {tag: tensorboard_scalars(run, tag) for tag in expected}
    for tag, points in expected.items():  # TensorBoard keeps float32
        assert [step for step, _ in board[tag]] == [step for step, _ in points], tag
        assert [value for _, value in board[tag]] == pytest.approx([value for _, value in points], rel=1e-6), tag

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for reading it back here too
    history, params, named = mlflow_series(tmp_path / "mlruns", run.name)
    assert named == 1  # the resumed session went on with the first session's MLflow run
    assert history == expected
    assert params["model.hidden"] == "[256, 256]" and params["train.epochs"] == "2"
    artifact = [json.loads(path.read_text()) for path in (tmp_path / "mlruns").glob("*/*/artifacts/config.json")]
    assert [config["model"]["hidden"] for config in artifact] == [[256, 256]]  # the config whole, once

    logged, runs = wandb_series(run)
    assert logged == expected
    assert len(runs) == 2 and {r.run_id for r in runs} == {run.name} and {r.project for r in runs} == {"streamapprox"}
    assert json.loads(next(u.value_json for u in runs[0].config.update if u.key == "model"))["hidden"] == [256, 256]

    for path in [*run.rglob("*"), *(tmp_path / "mlruns").rglob("*")]:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert key.encode() not in data and password.encode() not in data, path


@pytest.mark.parametrize("tracker, line", [
    ("wandb", "error: train.log_with=wandb: the wandb package is not installed in {prefix}; pip install wandb (or the project's "
              "`trackers` extra), or leave wandb out of train.log_with"),
    ("mlflow", "error: train.log_with=mlflow: the mlflow-skinny package is not installed in {prefix}; pip install mlflow-skinny (or "
               "the project's `trackers` extra), or leave mlflow out of train.log_with"),
])
def test_a_tracker_whose_package_is_missing_is_one_line_before_training(tmp_path, small_shards, tracker, line):
    hide = tmp_path / "hide"  # this interpreter without the tracker's package: the import system finds nothing by that name
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{tracker!r}] = None\n")
    env = tracker_env(tmp_path, PYTHONPATH=str(hide))
    result = run_job(tmp_path, env, f"train.log_with=tensorboard,{tracker}")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [text for text in (result.stdout + result.stderr).splitlines() if text.startswith("error: ")]
    assert errors == [line.format(prefix=sys.prefix)]
    assert not list(tmp_path.glob("runs/*/metrics.jsonl")) and not list(tmp_path.glob("runs/*/run.json"))


def test_mlflow_without_a_tracking_uri_is_one_line_before_training(tmp_path, small_shards):
    env = {key: value for key, value in tracker_env(tmp_path).items() if key != "MLFLOW_TRACKING_URI"}
    result = run_job(tmp_path, env, "train.log_with=mlflow")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [text for text in (result.stdout + result.stderr).splitlines() if text.startswith("error: ")]
    assert errors == ["error: train.log_with=mlflow: set MLFLOW_TRACKING_URI where the job runs (your tracking server, http://HOST:5000, "
                      "or a store of your choosing); MLflow's default is a file in whatever directory the job runs in"]
    assert not list(tmp_path.glob("runs/*/run.json")) and not (tmp_path / "mlflow.db").exists()


def test_log_with_takes_a_comma_list_from_set_each_tracker_once():
    from jobs.config import ConfigError, load_config

    assert load_config("train_mlp").train.log_with == ["tensorboard"]
    assert load_config("train_mlp", None, ["train.log_with=wandb, mlflow,wandb"]).train.log_with == ["wandb", "mlflow"]
    assert load_config("train_mlp", None, ["train.log_with=[mlflow]"]).train.log_with == ["mlflow"]
    assert load_config("train_mlp", None, ["train.log_with=[]"]).train.log_with == []
    with pytest.raises(ConfigError, match=r"train.log_with.0: Input should be 'tensorboard', 'wandb' or 'mlflow' \(got 'tensorbord'\)"):
        load_config("train_mlp", None, ["train.log_with=tensorbord"])


@pytest.mark.parametrize("trackers, extras", [("tensorboard", ()), ("tensorboard,mlflow", ("trackers",)), ("wandb", ("trackers",))])
def test_the_trackers_a_config_names_are_installed_where_it_trains(small_shards, trackers, extras):
    """A remote compute learns from the job's own check what to install beyond the job's extras: a Kaggle kernel's
    pinned requirements and an ssh venv (``--venv``) take the trackers extra when W&B or MLflow is asked for."""
    from jobs import JOBS
    from launch.backends.base import Job
    from launch.inputs import job_check
    from launch.transports.kaggle_upload import kernel_requirements
    from launch.transports.ssh import Host, make_venv

    report = job_check(JOBS["train_mlp"], ["--set", f"data.shards={SMALL}", f"train.log_with={trackers}"])
    job = Job("train_mlp", [], Path("runs/unused"), config_extras=tuple(report.extras))
    assert job.extras == extras
    assert ({"wandb", "mlflow-skinny"} <= {r.split("==")[0] for r in kernel_requirements(job.extras)}) == bool(extras)

    class Recorded(Host):
        commands: list[str] = []

        def run(self, command: str, timeout: float = 120, what: str = "") -> str:
            self.commands.append(command)
            return "made\n"

    make_venv(Recorded("node1", None), "/remote", job.extras, "python3", False)
    assert ("'/remote/code[trackers]'" in Recorded.commands[0]) == bool(extras), Recorded.commands
