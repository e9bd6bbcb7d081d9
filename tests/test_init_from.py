"""``train.init_from``: a run fine-tuned from another run's weights starts exactly there (its step-0 validation equals the
source's), with a fresh optimizer and schedule, records its source by sha256, resumes from its own last.pt (never from
the source again), refuses a source of another architecture in one line, and its source travels like ``index``'s."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SMALL, cli_env, launch, read_jsonl

from jobs.config import ConfigError, validate_config
from jobs.contract import CheckReport, FileInput
from jobs.init_from import architecture_mismatch
from launch.inputs import staged_form
from model.config import MLPStudentConfig, TransformerStudentConfig

SOURCE = [f"data.shards={SMALL}", "model.hidden=[64]", "data.batch_size=64", "train.evaluate_test=false"]
STEPS_PER_EPOCH = 600 // 64


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vals(run: Path) -> list[tuple[str, int, dict]]:
    """Every validation a run logged: (kind, step, metrics)."""
    return [(r["kind"], r["step"], r["val"]) for r in read_jsonl(run / "metrics.jsonl") if "val" in r]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory, small_shards) -> Path:
    """A finished 3-epoch run to fine-tune from."""
    root = tmp_path_factory.mktemp("init-from")
    result = launch("local", "train_mlp", "--run-dir", str(root / "stage1"), "--set", *SOURCE, "train.epochs=3", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "stage1"


def test_init_from_starts_at_the_source_best_with_a_fresh_schedule_records_it_and_resumes_from_its_own_last_pt(tmp_path, source):
    """A run fine-tuned from the source starts at its best weights with a fresh optimizer and schedule and records it;
    stopped by train.session_steps and resumed with the source gone, the same run ends as the uninterrupted one."""
    copy = tmp_path / "source-copy"
    shutil.copytree(source, copy)
    args = [*SOURCE, "train.epochs=2", f"train.init_from={copy}"]
    run = tmp_path / "straight"
    result = launch("local", "train_mlp", "--run-dir", str(run), "--set", *args, "train.log_every=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    best = torch.load(copy / "checkpoints" / "best.pt", weights_only=False)
    kind, step, first = vals(run)[0]
    assert (kind, step) == ("start", 0)  # validated before any update...
    assert first == pytest.approx(best["val"], rel=1e-6)  # ...it is the source's best, so the weights are the source's
    assert [(k, s) for k, s, _ in vals(run)] == [("start", 0), ("epoch", STEPS_PER_EPOCH), ("epoch", 2 * STEPS_PER_EPOCH)]

    info = yaml.safe_load((run / "run.json").read_text())
    assert info["status"] == "complete" and info["config"]["train"]["init_from"] == str(copy)
    assert info["init_from"] == {"location": str(copy), "path": str((copy / "checkpoints" / "best.pt").resolve()),
                                 "run_id": "stage1", "sha256": sha256(copy / "checkpoints" / "best.pt")}  # its own id, wherever it is

    # a fresh optimizer and schedule: steps count from 1, warm-up starts over, AdamW has taken only this run's steps
    steps = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert last["scheduler"]["last_epoch"] == 2 * STEPS_PER_EPOCH
    assert {int(s["step"]) for s in last["optimizer"]["state"].values()} == {2 * STEPS_PER_EPOCH}
    assert steps[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at this run's last step (min_lr_ratio 0)

    stopped = launch("local", "train_mlp", "--run-dir", str(tmp_path / "stopped"), "--set", *args, "train.session_steps=12", cwd=tmp_path)
    assert stopped.returncode == 3, stopped.stderr[-3000:]  # incomplete, in the second epoch
    assert torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=False)["global_step"] == 12
    copy.rename(tmp_path / "moved-away")  # re-reading the source would now fail: the resume must not need it
    resumed = launch("local", "train_mlp", "--resume", str(tmp_path / "stopped"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert vals(tmp_path / "stopped") == vals(run)
    assert [k for k, _, _ in vals(tmp_path / "stopped")] == ["start", "epoch", "epoch"]  # one step-0 validation, not one per session
    a, b = (torch.load(path / "checkpoints" / "last.pt", weights_only=False)["model"] for path in (tmp_path / "stopped", run))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_init_from_other_architecture_or_missing_source_is_one_line_exit_2(tmp_path, source):
    hidden = one_line_error(launch("local", "train_mlp", "--set", *SOURCE, "model.hidden=[32]", f"train.init_from={source}", cwd=tmp_path))
    assert hidden.startswith(f"error: train.init_from={source}: ") and "model.hidden is [64] there, [32] here" in hidden
    assert "--set model.hidden=[64]" in hidden
    kind = one_line_error(launch("local", "train_transformer", "--set", f"data.shards={SMALL}", f"train.init_from={source}:last",
                                 cwd=tmp_path))
    assert f"train.init_from={source}:last" in kind and "model.kind is mlp there, transformer here" in kind
    missing = one_line_error(launch("local", "train_mlp", "--set", *SOURCE, f"train.init_from={tmp_path / 'nope'}", cwd=tmp_path))
    assert missing == f"error: train.init_from={tmp_path / 'nope'}: no such run directory or checkpoint file"
    assert not (tmp_path / "runs").exists()  # nothing started


def test_init_from_architecture_fields_are_all_compared():
    mlp = MLPStudentConfig(hidden=[64])
    for field, value in [("clip_dim", 768), ("audio_dim", 64), ("out_dim", 512), ("frames", 8), ("hidden", [64, 64]),
                         ("normalize_output", False)]:
        assert architecture_mismatch(mlp, mlp.model_copy(update={field: value})) == [field]
    assert architecture_mismatch(mlp, mlp.model_copy(update={"dropout": 0.3})) == []  # regularisation may change between stages
    assert architecture_mismatch(mlp, TransformerStudentConfig()) == ["kind"]
    wide = TransformerStudentConfig(width=128, depth=3)
    assert architecture_mismatch(TransformerStudentConfig(), wide) == ["width", "depth"]


@pytest.mark.parametrize("value, ok", [("runs/a", True), ("runs/a:last", True), ("runs/a:best", True), ("ckpt:v2.pt", True),
                                       ("runs/a:final", False), ("", False), ("s3://bucket/run", False)])
def test_init_from_config_takes_a_local_run_or_checkpoint(value, ok):
    data = {"job": "train_mlp", "train": {"init_from": value}}
    if ok:
        assert validate_config(data).train.init_from == value
    else:
        with pytest.raises(ConfigError, match="train.init_from"):
            validate_config(data)


def test_init_from_source_travels_by_its_sha256(tmp_path, source):
    """--check reports the source as a file input (what ssh and Kaggle carry); where it lands, alone, the job starts from it."""
    report = tmp_path / "check.json"
    check = subprocess.run([sys.executable, "-m", "jobs.train_mlp", "--check", "--check-report", str(report), "--set", *SOURCE,
                            f"train.init_from={source}:last"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    spec = CheckReport.read(report).inputs["train.init_from"]
    last = source / "checkpoints" / "last.pt"
    assert isinstance(spec, FileInput) and spec.location == f"{source}:last"
    assert spec.path == str(last.resolve()) and spec.sha256 == sha256(last)
    staged = staged_form(spec)
    assert staged.assignments("train.init_from", "/far/data/" + staged.name) == [f"train.init_from=/far/data/{staged.name}/last.pt"]

    arrived = tmp_path / "data" / staged.name
    arrived.mkdir(parents=True)
    staged.link(arrived)
    run = tmp_path / "remote-run"
    result = launch("local", "train_mlp", "--run-dir", str(run), "--set", *SOURCE, "train.epochs=1",
                    f"train.init_from={arrived / 'last.pt'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = yaml.safe_load((run / "run.json").read_text())["init_from"]
    assert info["run_id"] is None and info["sha256"] == spec.sha256  # no run directory around it: the bytes identify it
    final = [val for kind, _, val in vals(source) if kind == "epoch"][-1]
    assert vals(run)[0][2] == pytest.approx(final, rel=1e-6)  # last.pt: the source's final weights, not its best


def test_init_from_in_a_sweep_trial(tmp_path, source):
    """A sweep's --set reaches every trial's config; each trial starts from the source and the exported winner says so."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"preset": "train_mlp", "set": {"train.epochs": 1, "data.batch_size": 128, "model.hidden": [64]},
                                     "space": {"optim.lr": "grid([1.0e-3, 1.0e-4])"}}))
    command = [sys.executable, "-m", "jobs.sweep", "--space", str(space), "--num-samples", "1", "--scheduler", "none", "--run-dir",
               str(tmp_path / "sweep"), "--set", f"data.shards={SMALL}", f"train.init_from={source}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=300)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # Ray's workers, whatever happened
        except ProcessLookupError:
            pass
    assert process.returncode == 0, out[-3000:]
    best = tmp_path / "sweep" / "best"
    assert yaml.safe_load((best / "run.json").read_text())["init_from"]["sha256"] == sha256(source / "checkpoints" / "best.pt")
    start = vals(best)[0]
    assert start[:2] == ("start", 0) and start[2] == pytest.approx(torch.load(source / "checkpoints" / "best.pt", weights_only=False)["val"])
