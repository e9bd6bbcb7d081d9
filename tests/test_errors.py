"""Bad inputs stop the job before training with one clear message that names the problem; faults (a full disk, a
second trainer, a killed launcher) are named the same way, and nothing is lost or left running."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SMALL, cli_env, launch, launch_command
from jobs.train import main as train_main


def run_job(capsys, *overrides, tmp_path):
    code = train_main(["--run-dir", str(tmp_path / "run"), "--set", *overrides])
    return code, capsys.readouterr().err


@pytest.fixture
def shard_copy(tmp_path, small_shards):
    copy = tmp_path / "shards"
    shutil.copytree(small_shards, copy)
    return copy


def test_missing_shard_directory(capsys, tmp_path):
    code, err = run_job(capsys, f"data.shards={tmp_path / 'nope'}", tmp_path=tmp_path)
    assert code == 2 and "nope: shard directory not found" in err
    assert not (tmp_path / "run").exists()


def test_truncated_and_corrupted_shards(capsys, tmp_path, shard_copy):
    shard = shard_copy / "train-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:-5000])
    code, err = run_job(capsys, f"data.shards={shard_copy}", tmp_path=tmp_path)
    assert code == 2 and "train-000002.tar" in err and "truncated" in err
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(corrupted))
    code, err = run_job(capsys, f"data.shards={shard_copy}", tmp_path=tmp_path)
    assert code == 2 and "train-000002.tar: sha256 does not match" in err
    assert not (tmp_path / "run").exists()


def test_dims_that_do_not_match_the_model(capsys, tmp_path, small_shards):
    code, err = run_job(capsys, f"data.shards={SMALL}", "model.clip_dim=768", "model.frames=4", tmp_path=tmp_path)
    assert code == 2
    assert "model.frames=4 but the shards have 3 (--set model.frames=3)" in err
    assert "model.clip_dim=768 but the shards have 512" in err


def test_unknown_key_and_wrong_type_through_the_cli(tmp_path):
    result = launch("local", "train_mlp", "--set", "train.epochz=3", cwd=tmp_path)
    assert result.returncode == 2 and "train.epochz: unknown config key (did you mean epochs" in result.stderr
    result = launch("local", "train_mlp", "--set", "optim.lr=fast", cwd=tmp_path)
    assert result.returncode == 2 and "optim.lr: Input should be a valid number" in result.stderr
    assert not any((tmp_path / "runs").glob("*/run.json"))


def test_unknown_accelerate_config(tmp_path):
    result = launch("local", "train_mlp", "--accelerate-config", "tpu_pod", cwd=tmp_path)
    assert result.returncode == 2 and "tpu_pod" in result.stderr and "cpu_ddp2" in result.stderr


# -- the faults and bad inputs a new user hits first: each one line, the right exit code, never a traceback ----------
@pytest.fixture
def mounts(tmp_path):
    """A read-only file system and a 20 MB one (both tmpfs; the tests run as root), unmounted afterwards."""
    made = {"ro": tmp_path / "read-only", "full": tmp_path / "small-disk"}
    for path in made.values():
        path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(made["ro"])], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(made["full"])], check=True)
    yield made
    for path in made.values():
        subprocess.run(["umount", str(path)], check=False)


def bad_inputs(tmp_path: Path, mounts: dict, finished_run: Path, dims_shards: Path) -> list[tuple[str, list[str], int, str]]:
    (tmp_path / "bad.yaml").write_text("model:\n  hidden: [512, 512\n")
    (tmp_path / "not-a-manifest").mkdir()
    (tmp_path / "not-a-manifest" / "manifest.json").write_text("[1, 2]\n")
    quick = ["--set", f"data.shards={SMALL}", "train.epochs=1"]
    return [
        ("sync from a mistyped source with --delete", ["sync", str(tmp_path / "typo-dir"), str(finished_run), "--delete"], 2,
         f"{tmp_path / 'typo-dir'}: nothing there (no such directory or prefix, or it is empty); nothing was copied or deleted"),
        ("--run-dir onto an existing run", ["local", "train_mlp", "--run-dir", str(finished_run), *quick], 2,
         f"--run-dir {finished_run}: already holds a train_mlp run (status complete); continue it with --resume"),
        ("--resume with another job", ["local", "train_transformer", "--resume", str(finished_run)], 2,
         f"{finished_run} is a train_mlp run; this is train_transformer: continue it with the job that made it"),
        ("a read-only runs directory", ["local", "train_mlp", "--runs-dir", str(mounts["ro"]), *quick], 2,
         "Read-only file system (errno 30); choose a writable --runs-dir/--run-dir, then start the run again"),
        ("a disk that fills up", ["local", "train_mlp", "--runs-dir", str(mounts["full"]), *quick], 2,
         "No space left on device (errno 28); free space there"),
        ("a batch larger than the data", ["local", "train_mlp", *quick, "data.batch_size=100000000"], 2,
         "data.batch_size=100000000: larger than the 'train' split (600 videos); lower it"),
        ("a manifest whose dims do not match the data", ["local", "train_mlp", "--set", f"data.shards={dims_shards}", "train.epochs=1",
                                                         "model.clip_dim=768"], 2,
         "clip.npy has shape (3, 512), manifest dims say (3, 768)"),
        ("an unclosed list in --config", ["local", "train_mlp", "--config", str(tmp_path / "bad.yaml")], 2,
         f"{tmp_path / 'bad.yaml'}: not valid YAML at line 3, column 1: expected ',' or ']'"),
        ("an unclosed list in --set", ["local", "train_mlp", "--set", "model.hidden=[512"], 2,
         "--set 'model.hidden=[512': not valid YAML at line 1, column 5"),
        ("a manifest that is not a JSON object", ["local", "train_mlp", "--set", f"data.shards={tmp_path / 'not-a-manifest'}"], 2,
         "not a manifest (a JSON object is expected, this is a list)"),
        ("a learning rate that diverges", ["local", "train_mlp", *quick, "optim.lr=1e9", "data.batch_size=64"], 1,
         "training diverged at step 5 (epoch 0): loss nan is not finite; the likely cause is the learning rate (optim.lr=1e+09"),
        ("a negative time budget", ["local", "train_mlp", "--time-budget", "-5", *quick], 2,
         "--time-budget -5: must be a positive number of seconds"),
    ]


def test_bad_inputs_and_faults_each_end_in_one_line_and_the_right_exit_code(tmp_path, small_shards, mounts):
    finished_run = tmp_path / "runs" / "done"
    made = launch("local", "train_mlp", "--run-dir", str(finished_run), "--set", f"data.shards={SMALL}", "train.epochs=1",
                  "data.batch_size=64", "model.hidden=[64]", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    dims_shards = tmp_path / "dims-shards"
    shutil.copytree(small_shards, dims_shards)
    manifest = json.loads((dims_shards / "manifest.json").read_text())
    manifest["dims"]["clip"] = 768  # valid JSON, verified digests, dims that are not the data's
    (dims_shards / "manifest.json").write_text(json.dumps(manifest))
    before = (finished_run / "metrics.jsonl").read_text()
    for what, args, code, message in bad_inputs(tmp_path, mounts, finished_run, dims_shards):
        result = launch(*args, cwd=tmp_path, timeout=300)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == code and "Traceback" not in result.stdout + result.stderr, (what, result.stderr[-3000:])
        assert len(errors) == 1 and message in errors[0], (what, errors, result.stderr[-2000:])
    assert (finished_run / "metrics.jsonl").read_text() == before  # the finished run was not touched
    assert json.loads((finished_run / "run.json").read_text())["status"] == "complete"
    full = next(mounts["full"].iterdir())
    assert json.loads((full / "run.json").read_text())["status"] == "failed"  # the root cause is recorded where it can be
    assert "No space left on device" in json.loads((full / "run.json").read_text())["error"]
    diverged = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert any(info["status"] == "failed" and "diverged" in info["error"] for info in diverged)


def test_one_live_owner_per_run_signals_reach_the_job_and_a_dead_run_says_so(tmp_path, small_shards):
    """A run directory has one live owner: a second trainer is refused naming the holder; SIGTERM to the launcher
    ends the job it started; a run whose process is gone reads `died` with the way to resume; the launcher killed
    outright (its whole process group, SIGKILL) takes the job with it."""
    import signal

    import psutil

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(launch_command("local", "train_mlp", *args), cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def job_processes(launcher: subprocess.Popen, timeout: float = 120) -> list:
        """The launcher's descendants, once its job owns the run directory."""
        from jobs.run_lock import liveness

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = list((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else []
            if runs and liveness(runs[0])[0] and (runs[0] / "run.json").is_file():
                return psutil.Process(launcher.pid).children(recursive=True)
            time.sleep(0.2)
        raise AssertionError("the job did not start")

    def gone(processes: list, timeout: float = 30) -> bool:
        return not psutil.wait_procs(processes, timeout=timeout)[1]

    first = start("--set", f"data.shards={SMALL}", "train.epochs=500", "train.patience=null", "data.batch_size=16", "model.hidden=[64]")
    try:
        children = job_processes(first)
        run = next((tmp_path / "runs").iterdir())
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.pt").is_file() and time.monotonic() < deadline:  # an epoch to resume from
            time.sleep(0.2)
        second = launch("local", "train_mlp", "--resume", str(run), cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"{run}: in use by a train_mlp job, pid " in second.stderr and " since " in second.stderr
        status = launch("status", str(run), cwd=tmp_path)
        assert "status: running (pid " in status.stdout and "resume with" not in status.stdout
        first.send_signal(signal.SIGTERM)  # to the launcher alone: it passes it on
        first.wait(timeout=60)
        assert gone(children)
    finally:
        first.kill()
    status = launch("status", str(run), cwd=tmp_path)
    assert "status: died (pid " in status.stdout and "last heartbeat 20" in status.stdout, status.stdout
    assert f"resume with: launch local train_mlp --resume {run}" in status.stdout

    resumed = start("--resume", str(run))
    try:
        children = job_processes(resumed)
        os.killpg(resumed.pid, signal.SIGKILL)  # the launcher's whole group, killed outright: nothing is passed on
        assert gone(children)
    finally:
        resumed.kill()
    assert "status: died (pid " in launch("status", str(run), cwd=tmp_path).stdout


def test_the_readme_the_docs_and_help_show_the_one_exit_code_table():
    """launch/errors.py holds the table; the README and docs/errors.md show it as it is, `launch --help` prints it."""
    from launch.errors import exit_code_markdown, exit_code_table

    repo = Path(__file__).resolve().parent.parent
    for page in ("README.md", "docs/errors.md"):
        assert exit_code_markdown() in (repo / page).read_text(), f"{page}: its exit-code table is not launch/errors.py's"
    shown = subprocess.run(launch_command("--help"), env=cli_env(), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and f"exit codes:\n{exit_code_table()}\n" in shown.stdout, shown.stdout[-2000:]


@pytest.mark.parametrize("backend", ["kaggle", "ssh", "ray"])
def test_a_job_that_reads_runs_by_path_is_refused_where_they_cannot_travel(tmp_path, backend):
    """evaluate reads run directories by path; no launcher carries them to a remote compute yet, so a remote backend
    refuses it in one line before it reaches anything (no credentials, hosts or cluster needed to say so)."""
    result = subprocess.run(launch_command(backend, "evaluate", str(tmp_path / "run")), cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"launch: error: launch {backend} evaluate: evaluate reads run directories and indexes by path, and no launcher carries "
        "them to a remote compute yet; run it here (launch local evaluate ...) on runs you pulled"]
