"""Runs survive: a run killed mid-epoch resumes to the same final metrics as an uninterrupted
run, and --time-budget stops cleanly with a resumable checkpoint."""
import json
import os
import signal
import subprocess
import time

import torch

from conftest import SMALL, cli_env, launch, launch_command, read_jsonl, tensorboard_scalars

ARGS = [f"data.shards={SMALL}", "train.epochs=4", "data.batch_size=16", "model.hidden=[512,512]", "train.log_every=1",
        "train.checkpoint_every=10"]
STEPS_PER_EPOCH = 600 // 16


def final_state(run):
    results = json.loads((run / "eval" / "results.json").read_text())["metrics"]
    epochs = [(r["epoch"], r["val"]) for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    return results, epochs


def test_killed_mid_epoch_resumes_to_identical_results(tmp_path, small_shards):
    reference = launch("local", "train_mlp", "--run-dir", str(tmp_path / "ref"), "--set", *ARGS, cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen(launch_command("local", "train_mlp", "--run-dir", str(killed), "--set", *ARGS),
                               cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = 2 * STEPS_PER_EPOCH + 12  # past a mid-epoch checkpoint (every 10 steps) of the third epoch
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            metrics = killed / "metrics.jsonl"
            if metrics.is_file() and any(r.get("step", 0) >= target for r in read_jsonl(metrics) if r["kind"] == "step"):
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # it died, nobody cleaned up
    last = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 2 and 0 < last["step_in_epoch"] < STEPS_PER_EPOCH  # resumes inside the epoch
    assert not (killed / "eval" / "results.json").exists()

    resumed = launch("local", "train_mlp", "--resume", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((killed / "run.json").read_text())["status"] == "complete"
    assert final_state(killed) == final_state(tmp_path / "ref")
    steps = [r["step"] for r in read_jsonl(killed / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == list(range(1, 4 * STEPS_PER_EPOCH + 1))  # the killed epoch's partial log was replaced
    # TensorBoard (through Accelerate's tracker) tells the same story: each step once, the same curves as the uninterrupted run
    assert [step for step, _ in tensorboard_scalars(killed, "train/loss")] == steps
    assert tensorboard_scalars(killed, "val/s2t_r1") == tensorboard_scalars(tmp_path / "ref", "val/s2t_r1")
    assert len(tensorboard_scalars(killed, "val/s2t_r1")) == 4


def test_time_budget_stops_with_a_resumable_checkpoint(tmp_path, small_shards):
    run = tmp_path / "budget"
    args = [f"data.shards={SMALL}", "train.epochs=200", "data.batch_size=16", "model.hidden=[512,512]", "train.evaluate_test=false",
            "train.patience=null"]  # every epoch: the budget, not the validation curve, ends each session
    began = time.monotonic()
    # the budget counts start-up too (imports, shard loading: over 8 s on a loaded CI machine); 200 epochs take minutes
    first = launch("local", "train_mlp", "--run-dir", str(run), "--time-budget", "20", "--set", *args, cwd=tmp_path)
    assert first.returncode == 3, first.stderr[-3000:]  # incomplete
    assert json.loads((run / "run.json").read_text())["status"] == "incomplete"
    assert f"continue with: launch local train_mlp --resume {run}" in first.stderr
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] < 200 and state["global_step"] > 0
    assert time.monotonic() - began < 90

    second = launch("local", "train_mlp", "--resume", str(run), "--time-budget", "20", cwd=tmp_path)
    assert second.returncode == 3, second.stderr[-3000:]
    later = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert later["global_step"] > state["global_step"]  # picked up where it stopped, not from scratch


def test_early_stopping_ends_complete_at_the_same_epoch_uninterrupted_or_over_sessions(tmp_path, small_shards):
    """``train.patience``: the run ends, complete, once that many epochs in a row brought no better validation figure;
    best.pt is the best epoch. A run stopped and resumed session after session ends at the same epoch, the same way."""
    args = [f"data.shards={SMALL}", "train.epochs=30", "data.batch_size=32", "model.hidden=[256]", "train.patience=2",
            "train.evaluate_test=false"]
    straight = launch("local", "train_mlp", "--run-dir", str(tmp_path / "straight"), "--set", *args, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    info = json.loads((tmp_path / "straight" / "run.json").read_text())
    epochs = [r for r in read_jsonl(tmp_path / "straight" / "metrics.jsonl") if r["kind"] == "epoch"]
    best = info["best"]["epoch"]
    assert info["status"] == "complete" and info["early_stop"] == {"after_epoch": best + 2, "patience": 2}
    assert epochs[-1]["epoch"] == best + 2 < 29 and info["epochs_run"] == best + 3
    assert [r["epoch"] for r in epochs if r["best"]][-1] == best  # nothing better after it
    assert torch.load(tmp_path / "straight" / "checkpoints" / "best.pt", weights_only=False)["epoch"] == best
    assert f"early stop after epoch {best + 2}: no better s2t_r1 for 2 epochs (train.patience); best.pt is epoch {best}" in straight.stdout

    sessions = tmp_path / "sessions"
    result = launch("local", "train_mlp", "--run-dir", str(sessions), "--set", *args, "train.session_steps=40", cwd=tmp_path)
    for _ in range(12):
        if result.returncode != 3:
            break
        result = launch("local", "train_mlp", "--resume", str(sessions), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((sessions / "run.json").read_text())
    assert len(resumed["resumed_at"]) >= 2
    assert [(r["epoch"], r["val"]) for r in read_jsonl(sessions / "metrics.jsonl") if r["kind"] == "epoch"] == \
        [(r["epoch"], r["val"]) for r in epochs]
    assert (resumed["best"], resumed["early_stop"], resumed["epochs_run"]) == (info["best"], info["early_stop"], info["epochs_run"])
