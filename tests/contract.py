"""The backend contract: what every ``launch`` backend promises, checked the same way for each.

A backend's test file subclasses ``BackendContract`` as ``TestContract`` and gives it a ``target`` fixture: a ``Target``
that says how to launch there (options, environment, shard set), what counts as something sent to the compute, and how
to make trouble that passes (a dropped network, failing API calls) while a run is followed. Adding a backend means
adding such a fixture; docs/extending.md walks through it.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from conftest import launch_command, read_jsonl, tensorboard_scalars

TRAIN = ["data.batch_size=64", "model.hidden=[64]", "train.epochs=3", "train.log_every=1"]
TRAIN_SAMPLES = 600  # the targets' shard sets: synthetic, 600 training videos


class Target:
    """How to launch on one backend under test. Subclasses fill in what their compute needs."""

    backend = "local"
    processes = 1  # processes the run trains with there (the steps of an epoch follow)
    stops = True  # ``launch stop`` can end its units (Kaggle's public API cannot: refused, exit 2)

    def __init__(self, env: dict, shards: Path):
        self.env, self.shards = env, shards

    def options(self, tmp_path: Path) -> list[str]:
        """The backend's own options for a new run (hosts, an address, ...), as a user gives them."""
        return []

    def sent(self, tmp_path: Path) -> list:
        """Everything that has reached the compute so far (files, submissions, uploads): compared before and after."""
        return sorted(str(p) for p in tmp_path.glob("runs/*/launch.json"))

    def trouble(self) -> None:
        """Trouble that passes, injected while ``launch logs --follow`` reads a running unit. Nothing to lose locally."""

    def troubled(self, output: str) -> bool:
        """The follower met the trouble and went on (its retry policy spoke)."""
        return True


def launch(target: Target, cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=cwd, env=target.env, capture_output=True, text=True, timeout=timeout)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def new_run(tmp_path: Path, before: set[Path]) -> Path:
    (run,) = set((tmp_path / "runs").iterdir()) - before
    return run.relative_to(tmp_path)


def runs_in(tmp_path: Path) -> set[Path]:
    return set((tmp_path / "runs").iterdir()) if (tmp_path / "runs").is_dir() else set()


def wait_for(target: Target, tmp_path: Path, run: Path, text: str, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    while True:
        status = launch(target, tmp_path, "status", str(run))
        if text in status.stdout or time.monotonic() > deadline:
            return status.stdout + status.stderr
        time.sleep(1)


class BackendContract:
    """The same promises, kept by every backend."""

    def job(self, target: Target, tmp_path: Path, *settings: str, detach: bool = False) -> list[str]:
        return [target.backend, "train_mlp", *target.options(tmp_path), *(["--detach"] if detach else []),
                "--set", f"data.shards={target.shards}", *TRAIN, *settings]

    def test_bad_input_fails_in_one_line_before_anything_is_sent(self, target, tmp_path):
        before = target.sent(tmp_path)
        for settings, names in ([f"data.shards={tmp_path / 'no-such-shards'}"], "no-such-shards"), (["model.hiden=[64]"], "model.hiden"):
            result = launch(target, tmp_path, *self.job(target, tmp_path, *settings))
            assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
            assert len(error_lines(result)) == 1 and names in result.stderr, result.stderr[-2000:]
        assert target.sent(tmp_path) == before  # nothing reached the compute
        assert not list(tmp_path.glob("runs/*/launch.json"))

    def test_a_run_followed_through_trouble_stops_resumably_and_resumes_to_the_end(self, target, tmp_path):
        """Detached start; ``logs --follow`` survives the trouble; the unit's run comes back incomplete (its session's steps
        spent): status, pull (exit 3, the resume command), then ``--resume`` on the same backend finishes it, its
        TensorBoard curves whole."""
        per_epoch = TRAIN_SAMPLES // (64 * target.processes)
        before = runs_in(tmp_path)
        started = launch(target, tmp_path, *self.job(target, tmp_path, f"train.session_steps={per_epoch + per_epoch // 2}", detach=True))
        assert started.returncode == 0 and "detached" in started.stdout, started.stdout[-3000:] + started.stderr[-3000:]
        run = new_run(tmp_path, before)

        follower = subprocess.Popen(launch_command("logs", str(run), "--follow"),
                                    cwd=tmp_path, env=target.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(1)
            target.trouble()
            output, _ = follower.communicate(timeout=400)
        finally:
            follower.kill()
        assert follower.returncode == 0 and "epoch 0 done" in output and target.troubled(output), output[-4000:]

        status = launch(target, tmp_path, "status", str(run))
        assert status.returncode == 0 and ": succeeded" in status.stdout, status.stdout + status.stderr
        pulled = launch(target, tmp_path, "pull", str(run))
        assert pulled.returncode == 3, pulled.stdout[-3000:] + pulled.stderr[-3000:]  # the run came back incomplete
        assert f"launch {target.backend} train_mlp --resume {run}" in pulled.stdout + pulled.stderr
        assert json.loads((tmp_path / run / "run.json").read_text())["status"] == "incomplete"

        resumed = launch(target, tmp_path, target.backend, "train_mlp", "--resume", str(run), *target.options(tmp_path), "--set",
                         "train.session_steps=null")  # this session to the end
        assert resumed.returncode == 0 and "status: complete" in resumed.stdout, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        records = read_jsonl(tmp_path / run / "metrics.jsonl")
        steps, epochs = [r["step"] for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "epoch"]
        assert len(epochs) == 3 and steps == list(range(1, epochs[-1]["step"] + 1))  # every step once, across the two sessions
        assert [step for step, _ in tensorboard_scalars(tmp_path / run, "train/loss")] == steps  # came back, each step once
        assert len(tensorboard_scalars(tmp_path / run, "val/s2t_r1")) == 3
        again = launch(target, tmp_path, "status", str(run))
        assert again.returncode == 0 and "status: complete" in again.stdout, again.stdout + again.stderr

    def test_a_failed_job_exits_1_and_stop_ends_a_running_one(self, target, tmp_path):
        """A job that fails on the compute: followed detached, ``logs --follow`` exits 1 as the run stands, and the pull
        brings the failed run back and exits 1; a running one is stopped."""
        before = runs_in(tmp_path)
        started = launch(target, tmp_path, *self.job(target, tmp_path, "optim.lr=1e9", detach=True))
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        run = new_run(tmp_path, before)
        followed = launch(target, tmp_path, "logs", str(run), "--follow")
        output = followed.stdout + followed.stderr
        assert followed.returncode == 1 and "training diverged" in output and ": failed" in output, output[-4000:]
        pulled = launch(target, tmp_path, "pull", str(run))
        assert pulled.returncode == 1 and "Traceback" not in pulled.stdout + pulled.stderr, pulled.stdout[-3000:] + pulled.stderr[-3000:]
        assert json.loads((tmp_path / run / "run.json").read_text())["status"] == "failed"  # a failed run comes back too

        before = runs_in(tmp_path)
        started = launch(target, tmp_path, *self.job(target, tmp_path, "train.epochs=400", "train.patience=null", detach=True))
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        run = new_run(tmp_path, before)
        assert ": running" in wait_for(target, tmp_path, run, ": running")
        stopped = launch(target, tmp_path, "stop", str(run))
        if not target.stops:
            assert stopped.returncode == 2 and len(error_lines(stopped)) == 1, stopped.stdout + stopped.stderr
            return
        assert stopped.returncode == 0 and "stop requested" in stopped.stdout, stopped.stdout + stopped.stderr
        assert ": stopped" in wait_for(target, tmp_path, run, ": stopped")
