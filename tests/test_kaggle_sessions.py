"""``launch kaggle`` against a Kaggle session's life as the loopback server models it (tests/kaggle_server.py, after
../shared/REMOTE_FACTS.md): the session wall, the live log stream, a kernel without internet, the GPU quota."""
from __future__ import annotations

import json
import subprocess

from conftest import SMALL, launch_command, read_jsonl
from kaggle_server import FAST, KEY, USER, kaggle_env, launch_kaggle, only_run_dir

QUICK = ["--set", f"data.shards={SMALL}", "train.epochs=1", "data.batch_size=64", "model.hidden=[64]"]


def test_a_kernel_stopped_at_the_session_wall_says_so_and_the_resume_continues_from_the_last_kernel_that_saved(tmp_path, kaggle,
                                                                                                              small_shards):
    """Kaggle's wall scaled to 45 s. The first kernel stops itself at its budget with last.pt written; the continuation
    spends its session before its script runs (a slow start) and is killed at the wall, its /kaggle/working lost. The
    launcher says so in one line with the command that resumes it (exit 3); the resume mounts the first kernel's
    output, not the killed one's, and completes the run with every step once."""
    kaggle.session_limit_s = 45
    kaggle.slow_start = {"-c1": 120}
    settings = ["--set", f"data.shards={SMALL}", "train.epochs=4", "data.batch_size=64", "model.hidden=[64]", "train.log_every=1",
                "train.session_steps=20"]
    first = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--session-limit", "45", "--margin", "15", *settings)
    output = first.stdout + first.stderr
    assert first.returncode == 3, output[-4000:]
    run = only_run_dir(tmp_path)
    killed = [line for line in first.stderr.splitlines() if "-c1: " in line or "-c1 ended" in line]
    assert len(killed) == 1 and "Kaggle stopped it at the session limit (45 s)" in killed[0], first.stderr[-3000:]
    assert f"Continue the run with: launch kaggle train_mlp --resume {run.relative_to(tmp_path)}" in killed[0]
    assert "Traceback" not in output
    record = json.loads((run / "launch.json").read_text())
    assert [unit["state"] for unit in record["units"]] == ["succeeded", "failed"]
    assert json.loads((run / "run.json").read_text())["global_step"] == 20  # as the first kernel saved it

    resumed = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", "--resume", str(run.relative_to(tmp_path)), "--set",
                            "train.session_steps=null", timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-3000:]
    pushed = [body for method, body in kaggle.requests if method == "SaveKernel"]
    first_slug = record["units"][0]["handle"]["slug"]
    assert [body["slug"].rsplit("-", 1)[-1] for body in pushed][-1] == "c2"
    assert pushed[-1]["kernelDataSources"] == [f"{USER}/{first_slug}"]  # the last kernel that saved, not the killed one
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete"
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "step"]
    assert steps == list(range(1, steps[-1] + 1)) and len([r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]) == 4


def test_logs_follow_a_running_kernel_through_the_log_stream_and_exit_as_the_run_stands(tmp_path, kaggle, small_shards):
    """``launch logs --follow`` reads the kernel's lines while it runs -- through the stream the official client uses,
    which breaks once and is read again without a line twice -- and exits 0 (a kernel whose job fails: exit 1, in the
    backend contract, tests/contract.py)."""
    started = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--detach", "--set", f"data.shards={SMALL}",
                            "train.epochs=3", "data.batch_size=32", "model.hidden=[64]")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    run = only_run_dir(tmp_path)
    slug = json.loads((run / "launch.json").read_text())["units"][0]["handle"]["slug"]
    kaggle.stream_faults[slug] = ["drop"]
    env = kaggle_env(kaggle, USER, KEY, tmp_path / "kaggle-config")
    follower = subprocess.Popen(launch_command("logs", str(run), "--follow"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    seen_running = None
    try:
        assert follower.stdout is not None
        lines = []
        for line in follower.stdout:
            lines.append(line)
            if "[streamapprox] installing" in line and seen_running is None:
                seen_running = kaggle.kernels[(USER, slug)].status
        follower.wait(timeout=300)
    finally:
        follower.kill()
    output = "".join(lines)
    assert follower.returncode == 0, output[-4000:]
    assert seen_running == "RUNNING"  # a line of the kernel's came while it still ran
    assert not kaggle.stream_faults[slug]  # the stream broke once, and was read again
    assert output.count("epoch 0 done") == 1 and output.count("epoch 2 done") == 1, output[-4000:]
    assert any(method == "GetKernelSessionStatus" for method, _ in kaggle.requests)


def test_a_kernel_without_internet_has_no_network_and_fails_on_a_missing_wheel(tmp_path, kaggle, small_shards):
    """The wheels dataset is all a kernel without internet has: one left incomplete by an earlier build (planted here with
    the launcher's own uploader) fails the install on the kernel, naming the wheel -- though the index that has it is one
    loopback connection away, outside the kernel's network namespace."""
    import os

    from jobs import JOBS
    from launch.transports.kaggle_api import KaggleService
    from launch.transports.kaggle_upload import WHEELS_MARKER, Uploader, build_wheels, kernel_requirements, wheels_digest

    requirements = kernel_requirements(JOBS["train_mlp"].extras)
    digest = wheels_digest(requirements)
    env = kaggle_env(kaggle, USER, KEY, tmp_path / "kaggle-config")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        files = [(name, path) for name, path in build_wheels(requirements, wheels) if not name.startswith("webdataset-")]
        marker = json.dumps({"digest": digest, "requirements": requirements}).encode()
        uploader = Uploader(KaggleService(USER), dataset_timeout=60)
        uploader._carry_files(f"streamapprox-wheels-{digest[:16]}", "StreamApprox wheels", digest, files, {}, {WHEELS_MARKER: marker},
                              notes="")
        uploader.settle()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    result = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--no-internet", *QUICK)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "pip install failed" in output and "webdataset" in output.split("pip install failed", 1)[1], output[-4000:]
    body = next(b for m, b in kaggle.requests if m == "SaveKernel")
    assert body["enableInternet"] is False


def test_the_quota_line_shows_the_expected_hours_beside_the_worst_case_and_kaggles_own_figure(tmp_path, kaggle, small_shards):
    """A GPU launch says what it is expected to use -- nothing to go by before the job's first run, then the median of its
    earlier runs -- beside the most it could (every kernel to its budget, every continuation), with Kaggle's own figure
    where Kaggle answers its quota call; where it does not, the line goes without it."""
    cache = {"STREAMAPPROX_CACHE": str(tmp_path / "cache")}  # this account's ledger only
    first = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *QUICK, env_extra=cache)  # a T4 x2 kernel, the default
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    line = next(line for line in first.stdout.splitlines() if "GPU quota:" in line)
    assert "expected: no estimate yet (no earlier train_mlp run in the ledger)" in line, line
    assert "worst case 36.00 h (every kernel to its budget, every continuation)" in line, line
    assert "Kaggle reports 0.00 h used of 30.00 h this week" in line, line

    kaggle.answers_quota = False
    second = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", "--dry-run", *QUICK, env_extra=cache)  # the same line, planned
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    line = next(line for line in second.stdout.splitlines() if "GPU quota:" in line)
    ledger = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob(f"kaggle/{USER}/gpu-usage/*.json")]
    hours = next(e["hours"] for e in ledger if e["run_id"] == only_run_dir(tmp_path).name)
    assert f"expected about {hours:.2f} h (the median of 1 earlier train_mlp run)" in line, line
    assert "Kaggle reports" not in line and "worst case 36.00 h" in line, line
