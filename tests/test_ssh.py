"""``launch ssh``: the real CLI, the system's ssh and rsync, and a real OpenSSH server on 127.0.0.1
(throwaway host and user keys made by the fixture); the "nodes" are aliases of that one server."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, launch_command, read_jsonl
from servers import SshServer, free_port

TINY = ["train.epochs=6", "data.batch_size=64", "model.hidden=[64]", "train.audit=true"]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_shards.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("ssh-shards") / "small"
    generate(SyntheticSpec(train=600, val=120, test=200, samples_per_shard=128), out, progress=False)
    return out


def launch_ssh(sshd, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def ssh_args(sshd, remote: Path, *hosts: str) -> list[str]:
    return [*(a for h in hosts for a in ("--host", h)), "--ssh-config", str(sshd.client_config), "--python", sys.executable,
            "--remote-dir", str(remote), "--poll-interval", "0.5"]


def test_two_nodes_train_as_one_and_the_run_survives_a_dropped_connection(sshd, shards, tmp_path):
    remote = tmp_path / "remote"
    command = launch_command("ssh", "train_mlp", *ssh_args(sshd, remote, "node0", "node1"), "--set", f"data.shards={shards}", *TINY)
    follower = subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list(remote.glob("runs/*/metrics.jsonl")) and time.monotonic() < deadline and follower.poll() is None:
        time.sleep(0.2)
    assert list(remote.glob("runs/*/metrics.jsonl")), follower.communicate()[0][-3000:]
    sshd.drop_connections()  # the network goes: every session ends mid-command ...
    follower.kill()  # ... and the laptop that launched the job with it
    follower.wait(timeout=30)
    run = next((tmp_path / "runs").iterdir())
    record = json.loads((run / "launch.json").read_text())
    assert record["backend"] == "ssh" and record["processes"] == 2 and not (run / "run.json").exists()
    exits = [remote / "runs" / run.name / "logs" / f"exit-{rank}" for rank in range(2)]
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in exits) and time.monotonic() < deadline:
        time.sleep(0.5)
    status = launch_ssh(sshd, tmp_path, "status", str(run))
    assert status.returncode == 0 and status.stdout.count(": exit 0") == 2, status.stdout + status.stderr
    pulled = launch_ssh(sshd, tmp_path, "pull", str(run))
    assert pulled.returncode == 0 and "status: complete" in pulled.stdout, pulled.stdout + pulled.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "ssh" and info["hardware"]["num_processes"] == 2 and info["global_step"] > 0
    ranks = [read_jsonl(run / "logs" / f"audit-rank{r}.jsonl") for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == info["global_step"]
    assert [row["params"] for row in ranks[0]] == [row["params"] for row in ranks[1]]  # one model, two nodes
    assert not set(ranks[0][0]["samples"]) & set(ranks[1][0]["samples"])  # each node trained on its own samples
    assert (run / "eval" / "results.json").is_file()
    again = launch_ssh(sshd, tmp_path, "pull", str(run))
    assert "copied 0 files" in again.stdout  # incremental


def test_extract_runs_on_a_host_and_the_shards_come_back(sshd, tmp_path, capsys):
    from conftest import TINY_EXTRACT

    from data_shards.reader import open_shards
    from data_shards.synthetic_videos import write_collection

    listing = write_collection(tmp_path / "videos", 4, seconds=2.0)
    venv = ["--venv", "--venv-system-site-packages"]  # made from the pinned requirements; this interpreter's torch is reused
    result = launch_ssh(sshd, tmp_path, "ssh", "extract", *ssh_args(sshd, tmp_path / "remote", "node0"), *venv,
                        "--videos", str(listing), "--random-init", *TINY_EXTRACT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "(made)" in result.stdout and "/envs/" in result.stdout
    from jobs import JOBS
    from launch.ssh import Host, make_venv

    made = next(line for line in result.stdout.splitlines() if "(made)" in line).split("python environment ")[1].split(" (")[0]
    host = Host("node0", str(sshd.client_config))
    assert make_venv(host, str(tmp_path / "remote"), JOBS["extract"], sys.executable, True) == f"{made}/bin/python"
    assert "(reused)" in capsys.readouterr().out  # the same requirements: the environment is not made again
    run = next((tmp_path / "runs").iterdir())
    shards = open_shards(run / "shards")
    assert sum(shards.manifest.splits.values()) == 4 and shards.manifest.encoders["random_init"]
    assert list((tmp_path / "remote" / "data").glob("videos-*/videos.json"))  # the videos travelled once, by rsync


def test_bad_hosts_fail_before_anything_starts(sshd, shards, tmp_path):
    job = ["train_mlp", "--set", f"data.shards={shards}", *TINY]
    unreachable = launch_ssh(sshd, tmp_path, "ssh", *job[:1], "--host", f"127.0.0.1:{free_port()}", "--remote-dir", "x", *job[1:])
    assert unreachable.returncode == 2 and "cannot reach 127.0.0.1" in unreachable.stderr and "refused" in unreachable.stderr

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    config = tmp_path / "wrong_key_config"
    config.write_text(sshd.client_config.read_text().replace(str(sshd.workdir / "user_key"), str(tmp_path / "stranger")))
    wrong_key = launch_ssh(sshd, tmp_path, "ssh", *job[:1], "--host", "node0", "--ssh-config", str(config), *job[1:])
    assert wrong_key.returncode == 2 and "Permission denied" in wrong_key.stderr

    base = ssh_args(sshd, tmp_path / "remote", "node0")
    no_python = launch_ssh(sshd, tmp_path, "ssh", *job[:1], *base, "--python", "/opt/none/bin/python3", *job[1:])
    assert no_python.returncode == 2 and "no /opt/none/bin/python3 there" in no_python.stderr
    bare = subprocess.run(["sh", "-c", "command -v /usr/bin/python3"], capture_output=True, text=True).stdout.strip()
    if bare:
        no_torch = launch_ssh(sshd, tmp_path, "ssh", *job[:1], *base, "--python", bare, *job[1:])
        assert no_torch.returncode == 2 and "lacks torch" in no_torch.stderr and "--venv" in no_torch.stderr
    single = launch_ssh(sshd, tmp_path, "ssh", "sweep", *ssh_args(sshd, tmp_path / "remote", "node0", "node1"), "--space", "x")
    assert single.returncode == 2 and "runs as one process" in single.stderr
    assert not (tmp_path / "runs").exists()  # nothing started anywhere


def test_sweep_runs_on_a_host_and_its_best_run_comes_back(sshd, shards, tmp_path):
    result = launch_ssh(sshd, tmp_path, "ssh", "sweep", *ssh_args(sshd, tmp_path / "remote", "node0"), "--space", "temperature_depth",
                        "--num-samples", "2", "--preset", "train_transformer", "--set", f"data.shards={shards}", "train.epochs=2",
                        "data.batch_size=64", "model.width=32", "model.heads=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = next((tmp_path / "runs").iterdir())
    assert json.loads((sweep / "run.json").read_text())["status"] == "complete"
    assert (sweep / "best" / "eval" / "results.json").is_file() and (sweep / "trials.csv").is_file()

    # the sweep's winner indexes the shards on the host: its checkpoint travels by rsync, the index comes back in the run
    indexed = launch_ssh(sshd, tmp_path, "ssh", "index", *ssh_args(sshd, tmp_path / "remote", "node0"), "--run", str(sweep / "best"),
                         "--shards", str(shards))
    assert indexed.returncode == 0, indexed.stdout[-3000:] + indexed.stderr[-3000:]
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("index"))
    assert json.loads((run / "run.json").read_text())["index"]["videos"] == 920 and (run / "index").is_dir()
    assert any(p.name.startswith("file-") for p in (tmp_path / "remote" / "data").iterdir())
