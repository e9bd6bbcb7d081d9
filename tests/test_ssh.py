"""``launch ssh``: the real CLI, the system's ssh and rsync, and real OpenSSH servers on 127.0.0.1 (throwaway host and
user keys made by the fixture): node0, and node1 in a mount namespace of its own -- two machines that share no disk.
node1 has nothing but what the launcher sends it and its own Python (the project's dependencies, not the project)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from conftest import cli_env, launch_command, read_jsonl
from contract import BackendContract, Target
from servers import CHECKOUT, SshServer, free_port, ssh_config

TINY = ["train.epochs=6", "data.batch_size=64", "model.hidden=[64]", "train.audit=true"]


class Nodes:
    """Two machines over SSH that share no disk under ``remote``: node0 an sshd as it is, node1 one that shares nothing
    with this machine -- in its mount namespace this checkout and pytest's basetemp (``remote``, the shard cache, every
    test's inputs) and /tmp are empty tmpfs and this environment is its own Python without the project, so a job there has only
    what the launcher sent. Both reach the loopback S3 with credentials of their own (``env``). ``client_config`` names both."""

    def __init__(self, root: Path, basetemp: Path, env: dict[str, str]):
        self.remote = root / "remote"
        self.remote.mkdir()
        self.node0 = SshServer(root / "sshd0", aliases=("node0",), env=env)
        self.node1 = SshServer(root / "sshd1", aliases=("node1",), hide=(CHECKOUT, basetemp), env=env)
        self.client_config = ssh_config(root / "ssh_config", self.node0, self.node1)

    def drop_connections(self) -> None:
        self.node0.drop_connections()
        self.node1.drop_connections()

    def stop(self) -> None:
        self.node0.stop()
        self.node1.stop()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory, s3_endpoint):
    aws = {name: os.environ[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    nodes = Nodes(tmp_path_factory.mktemp("ssh"), tmp_path_factory.getbasetemp(), {"AWS_ENDPOINT_URL": s3_endpoint, **aws})
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_shards.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("ssh-shards") / "small"
    generate(SyntheticSpec(train=600, val=120, test=200, samples_per_shard=128), out, progress=False)
    return out


def launch_ssh(sshd, cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=cwd, env={**cli_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout)


def on(sshd, node: str, command: str) -> subprocess.CompletedProcess:
    """``command`` run on ``node`` (what is there: node1's files are not on this machine)."""
    return subprocess.run(["ssh", "-F", str(sshd.client_config), "-o", "BatchMode=yes", node, command], capture_output=True,
                          text=True, timeout=60)


def ssh_args(sshd, remote: Path, *hosts: str) -> list[str]:
    return [*(a for h in hosts for a in ("--host", h)), "--ssh-config", str(sshd.client_config), "--python", sys.executable,
            "--remote-dir", str(remote), "--main-port", str(free_port())]  # not 29500: another test's DDP may hold it


def run_state(run: Path):
    """What must match between a resumed run and an uninterrupted one."""
    import torch

    records = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_jsonl(run / "metrics.jsonl")]
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    return records, weights, json.loads((run / "eval" / "results.json").read_text())["metrics"]


class SshTarget(Target):
    """Both nodes (no shared disk): a run trains with a process on each; node0 drops off the network for a while."""

    backend, processes = "ssh", 2

    def __init__(self, sshd: Nodes, shards: Path):
        super().__init__(cli_env(), shards)
        self.sshd = sshd

    def options(self, tmp_path: Path) -> list[str]:
        return ssh_args(self.sshd, self.sshd.remote / tmp_path.name, "node0", "node1")

    def sent(self, tmp_path: Path) -> list:
        return sorted(str(p) for p in (self.sshd.remote / tmp_path.name).rglob("*"))

    def trouble(self) -> None:
        self.sshd.node0.outage(4)

    def troubled(self, output: str) -> bool:
        return "retrying" in output and "reached again" in output


@pytest.fixture
def target(sshd, shards) -> SshTarget:
    return SshTarget(sshd, shards)


class TestContract(BackendContract):
    pass


def test_node1_has_only_its_own_python_and_what_it_was_sent(sshd, shards):
    """What makes node1 a machine of its own, checked against node0 (this machine): no checkout, no project to import
    (the environment's editable install is masked), no pytest inputs or shard cache -- but an interpreter with torch,
    which it cannot write to."""
    import os

    paths = [CHECKOUT / "launch", shards / "manifest.json", Path(os.environ["STREAMAPPROX_CACHE"]), sshd.node0.workdir]
    python, site = shlex.quote(sys.executable), shlex.quote(sysconfig.get_paths()["purelib"])
    for path in paths:
        assert on(sshd, "node0", f"test -e {shlex.quote(str(path))}").returncode == 0, path  # there on this machine ...
        assert on(sshd, "node1", f"test -e {shlex.quote(str(path))}").returncode == 1, path  # ... not on node1
    assert on(sshd, "node0", f"cd / && {python} -c 'import launch'").returncode == 0
    imported = on(sshd, "node1", f"cd / && {python} -c 'import launch'")
    assert imported.returncode == 1 and "No module named 'launch'" in imported.stderr, imported.stdout + imported.stderr
    torch = on(sshd, "node1", f"cd / && {python} -c 'import torch, accelerate, webdataset; print(torch.__version__)'")
    assert torch.returncode == 0 and torch.stdout.strip(), torch.stderr
    assert on(sshd, "node1", f"touch {site}/node1-was-here").returncode == 1  # its own: nothing it does lands in this environment


def test_two_nodes_that_share_no_disk_train_as_one_survive_a_dropped_connection_and_resume(sshd, shards, tmp_path):
    """node1 sees none of node0's files: it gets code, shards and (to resume) the run directory itself, and the pulled
    run holds both ranks' logs and audit. The first launch stops resumably (train.session_steps); the resume on both
    nodes ends where an uninterrupted two-process run does."""
    remote = sshd.remote / tmp_path.name
    settings = [f"data.shards={shards}", *TINY]
    command = launch_command("ssh", "train_mlp", *ssh_args(sshd, remote, "node0", "node1"), "--set", *settings,
                             "train.session_steps=16")
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
    assert record["backend"] == "ssh" and record["plan"]["per_node"] * len(record["plan"]["hosts"]) == 2
    assert not (run / "run.json").exists()
    deadline = time.monotonic() + 240
    status = launch_ssh(sshd, tmp_path, "status", str(run))
    while "succeeded" not in status.stdout and time.monotonic() < deadline:
        time.sleep(1)
        status = launch_ssh(sshd, tmp_path, "status", str(run))
    assert status.returncode == 0 and "succeeded" in status.stdout, status.stdout + status.stderr
    assert not list(remote.glob("runs/*/logs/*rank1*"))  # node1's files are on node1 only
    pulled = launch_ssh(sshd, tmp_path, "pull", str(run))
    assert pulled.returncode == 3 and "status: incomplete" in pulled.stdout, pulled.stdout + pulled.stderr  # incomplete: exit 3
    assert f"launch ssh train_mlp --resume {run}" in pulled.stdout + pulled.stderr
    assert (run / "logs" / "audit-rank1.jsonl").is_file() and (run / "logs" / "unit-a0-rank1.log").is_file()  # node1's own

    resumed = launch_ssh(sshd, tmp_path, "ssh", "train_mlp", "--resume", str(run), *ssh_args(sshd, remote, "node0", "node1"))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "status: complete" in resumed.stdout
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "ssh" and info["hardware"]["num_processes"] == 2 and len(info["resumed_at"]) == 1
    ranks = [read_jsonl(run / "logs" / f"audit-rank{r}.jsonl") for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == info["global_step"]
    assert [row["params"] for row in ranks[0]] == [row["params"] for row in ranks[1]]  # one model, two nodes
    assert not set(ranks[0][0]["samples"]) & set(ranks[1][0]["samples"])  # each node trained on its own samples
    again = launch_ssh(sshd, tmp_path, "pull", str(run))
    assert again.stdout.count("copied 0 files") == 2, again.stdout  # incremental, from both nodes

    reference = launch_ssh(sshd, tmp_path, "local", "train_mlp", "--accelerate-config", "cpu_ddp2", "--run-dir", str(tmp_path / "ref"),
                           "--set", *settings)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (records, weights, results), (ref_records, ref_weights, ref_results) = run_state(run), run_state(tmp_path / "ref")
    assert records == ref_records and results == ref_results
    assert all((weights[k] == ref_weights[k]).all() for k in weights)


def test_extract_runs_on_a_host_and_the_shards_come_back(sshd, tmp_path, capsys):
    """On node1, which shares no disk with this machine: the videos and the encoders' files (--set as local paths) travel
    as the job's --check declares them, each once -- a second extraction, of the same videos moved to another folder
    here, sends 0 bytes of them -- and the shards come back."""
    from conftest import TINY_EXTRACT

    from data_shards import open_shards
    from data_shards.synthetic_videos import write_collection

    listing = write_collection(tmp_path / "videos", 4, seconds=2.0)
    venv = ["--venv", "--venv-system-site-packages"]  # made from the pinned requirements; this interpreter's torch is reused
    remote = tmp_path / "remote"
    args = ["ssh", "extract", *ssh_args(sshd, remote, "node1"), *venv, "--videos", str(listing), "--random-init", *TINY_EXTRACT]
    first = launch_ssh(sshd, tmp_path, *args)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "(made)" in first.stdout and "/envs/" in first.stdout
    sent = [line for line in first.stdout.splitlines() if line.startswith("launch ssh: node1: ") and " as " in line]
    keys = {"input.videos", "student.clip.architecture", "teacher.imagebind.architecture"}
    assert {line.split(": ")[2].split(" as ")[0] for line in sent} == keys and all(line.endswith(" bytes sent") for line in sent), sent
    assert all(int(line.rsplit(": ", 1)[1].split(" ")[0].replace(",", "")) > 0 for line in sent), sent
    from jobs import JOBS
    from launch.transports.ssh import Host, make_venv

    made = next(line for line in first.stdout.splitlines() if "(made)" in line).split("python environment ")[1].split(" (")[0]
    host = Host("node1", str(sshd.client_config))
    assert make_venv(host, str(remote), JOBS["extract"].extras, sys.executable, True) == f"{made}/bin/python"
    assert "(reused)" in capsys.readouterr().out  # the same requirements: the environment is not made again
    for run in (tmp_path / "runs").iterdir():
        shards = open_shards(run / "shards")
        assert sum(shards.manifest.splits.values()) == 4 and shards.manifest.encoders["random_init"]
    assert not remote.exists()  # node1's disk is its own
    there = on(sshd, "node1", f"ls {remote}/data")
    assert there.returncode == 0 and sum(name.startswith(("videos-", "file-")) for name in there.stdout.split()) == 3, there

    (tmp_path / "videos").rename(tmp_path / "moved")  # the same videos somewhere else here: the same input, nothing to resend
    args[args.index(str(listing))] = str(tmp_path / "moved" / listing.name)
    again = launch_ssh(sshd, tmp_path, *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resent = [line for line in again.stdout.splitlines() if line.startswith("launch ssh: node1: ") and " as " in line]
    assert len(resent) == 3 and all(line.endswith(": there already, 0 bytes sent") for line in resent), resent
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_videos_on_the_host_are_read_there_and_nothing_of_them_is_sent(sshd, tmp_path):
    """``--videos ssh://node1/ABS/videos.csv``: a collection on node1's own disk (nowhere on this machine) is listed over
    ssh for the job's check here and read in place by the extraction there; no video byte is sent."""
    from conftest import TINY_EXTRACT

    from data_shards import open_shards
    from data_shards.synthetic_videos import write_collection

    made = write_collection(tmp_path / "made-here", 3, seconds=2.0).parent
    there = tmp_path / "on-node1"  # under pytest's basetemp: on node1 a tmpfs of its own
    packed = subprocess.run(["tar", "-C", str(made), "-c", "."], capture_output=True, check=True).stdout
    copied = subprocess.run(["ssh", "-F", str(sshd.client_config), "-o", "BatchMode=yes", "node1", f"mkdir -p {there} && tar -C {there} -x"],
                            input=packed, capture_output=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    shutil.rmtree(made)
    assert not there.exists() and on(sshd, "node1", f"test -f {there}/videos.csv").returncode == 0  # on node1 only

    location = f"ssh://node1{there}/videos.csv"
    result = launch_ssh(sshd, tmp_path, "ssh", "extract", *ssh_args(sshd, tmp_path / "remote", "node1"), "--videos", location,
                        "--random-init", *TINY_EXTRACT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"launch ssh: node1: input.videos is there already ({location}): nothing sent" in result.stdout
    shards = open_shards(next((tmp_path / "runs").iterdir()) / "shards")
    assert sum(shards.manifest.splits.values()) == 3
    data = on(sshd, "node1", f"ls {tmp_path}/remote/data")
    assert data.returncode == 0 and not any(name.startswith("videos-") for name in data.stdout.split()), data.stdout

    elsewhere = launch_ssh(sshd, tmp_path, "ssh", "extract", *ssh_args(sshd, tmp_path / "remote", "node0"), "--videos", location,
                           "--random-init", *TINY_EXTRACT)
    assert elsewhere.returncode == 2 and "read in place by a job that runs on that host alone (--host node1)" in elsewhere.stderr

    here = tmp_path / "here"  # launch local reads the same videos over this machine's ssh, one at a time: the same shards
    local = subprocess.run(launch_command("local", "extract", "--run-dir", str(here), "--videos", location, "--random-init", *TINY_EXTRACT),
                           cwd=tmp_path, env={**cli_env(), "STREAMAPPROX_SSH_CONFIG": str(sshd.client_config)}, capture_output=True,
                           text=True, timeout=300)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    assert [s.sha256 for s in open_shards(here / "shards").manifest.shards] == [s.sha256 for s in shards.manifest.shards]


def test_videos_on_s3_are_read_by_the_host_with_its_own_credentials(sshd, tmp_path, bucket, s3_endpoint):
    """MSR-VTT as ``--videos s3://BUCKET/PREFIX`` with its split files here, extracted on node1 (nothing of this machine
    there): the videos are listed here for the job's check and read on the host with the host's own S3 setup (ssh
    passes none of this machine's variables), no video byte through this machine; the two split files travel, by
    content, and give each video its split."""
    import tarfile

    from conftest import TINY_EXTRACT

    from data_shards.sources import MSRVTT_TEST, MSRVTT_TRAIN
    from data_shards.synthetic_videos import write_collection

    client, name = bucket
    made = write_collection(tmp_path / "msrvtt", 3, seconds=2.0).parent
    for path in made.glob("*.mp4"):
        client.upload_file(str(path), name, f"msrvtt/{path.name}")
    splits = tmp_path / "msrvtt_data"
    splits.mkdir()
    (splits / MSRVTT_TRAIN).write_text("video_id,sentence\nvideo0000,a\nvideo0002,b\n")
    (splits / MSRVTT_TEST).write_text("key,vid_key,video_id,sentence\nret0,msr1,video0001,c\n")
    result = launch_ssh(sshd, tmp_path, "ssh", "extract", *ssh_args(sshd, tmp_path / "remote", "node1"), "--videos", f"s3://{name}/msrvtt",
                        "--msrvtt-splits", str(splits), "--random-init", *TINY_EXTRACT, env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sent = [line for line in result.stdout.splitlines() if line.startswith("launch ssh: node1: input.")]
    assert len(sent) == 1 and sent[0].startswith("launch ssh: node1: input.msrvtt_splits as folder-") and sent[0].endswith(" bytes sent")
    shards = next((tmp_path / "runs").iterdir()) / "shards"
    ids = {tar.name: sorted({member.split(".")[0] for member in tarfile.open(tar).getnames()}) for tar in sorted(shards.glob("*.tar"))}
    assert ids == {"test-000000.tar": ["video0001"], "val-000000.tar": ["video0000", "video0002"]}  # 500 of the 7k are val: all here
    data = on(sshd, "node1", f"ls {tmp_path}/remote/data")  # what was sent to node1: the split files, the architectures, no video
    assert data.returncode == 0 and sorted(entry.split("-")[0] for entry in data.stdout.split()) == ["file", "file", "folder"], data.stdout


def test_rsync_leaves_behind_exactly_what_every_backend_leaves_behind(tmp_path):
    """One list of a run directory's machine-local files (``launch.inputs.LEFT_BEHIND``): rsync's excludes, as ssh
    sends a run, skip the very files that Kaggle's and Ray's carrying skip."""
    from launch.inputs import left_behind, rsync_excludes

    run = tmp_path / "run"
    names = ["launch.json", ".lock", "run.json", "logs/heartbeat.json", "logs/unit-0.log", "logs/train.log", "eval/launch.json",
             "slices/0/.lock", "slices/0/logs/heartbeat.json", "checkpoints/last.pt"]
    for name in names:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    subprocess.run(["rsync", "-a", *rsync_excludes(), f"{run}/", f"{tmp_path / 'copy'}/"], check=True)
    copied = sorted(p.relative_to(tmp_path / "copy").as_posix() for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == sorted(name for name in names if not left_behind(name))
    assert copied == ["checkpoints/last.pt", "logs/train.log", "run.json", "slices/0/logs/heartbeat.json"]


def test_bad_hosts_fail_before_anything_starts(sshd, shards, tmp_path):
    job = ["train_mlp", "--set", f"data.shards={shards}", *TINY]
    unreachable = launch_ssh(sshd, tmp_path, "ssh", *job[:1], "--host", f"127.0.0.1:{free_port()}", "--remote-dir", "x", *job[1:])
    assert unreachable.returncode == 2 and "cannot reach 127.0.0.1" in unreachable.stderr and "refused" in unreachable.stderr

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    config = tmp_path / "wrong_key_config"
    config.write_text(sshd.client_config.read_text().replace(str(sshd.node0.workdir / "user_key"), str(tmp_path / "stranger")))
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


def test_between_polls_the_launcher_waits_on_the_node_and_a_stop_reaches_a_unit_just_started(sshd, shards, tmp_path, monkeypatch):
    """The launcher's wait between two polls is one call that waits on the main node: it comes back when the job's
    process ends there, not when a long poll interval is over -- and at once for a job that has ended. A stop that comes
    before the unit runner became its own process group (its pid is known from the fork, before ``setsid``) still ends it;
    a process that is not the unit's, under the unit's pid, is left alone."""
    from launch.backends.ssh import SshHandle
    from launch.driver import reattach

    monkeypatch.setenv("STREAMAPPROX_SSH_CONFIG", str(sshd.client_config))  # the backend names its config so (for sync)
    started = launch_ssh(sshd, tmp_path, "ssh", "train_mlp", *ssh_args(sshd, tmp_path / "remote", "node0"), "--detach",
                         "--set", f"data.shards={shards}", "train.epochs=2", "data.batch_size=64", "model.hidden=[64]")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    backend, run = reattach(next((tmp_path / "runs").iterdir()))
    unit = run.record.units[-1]
    began = time.monotonic()
    backend.wait(run, [unit], 300)
    assert time.monotonic() - began < 150 and backend.poll(run, unit)[0] == "succeeded"
    began = time.monotonic()
    backend.wait(run, [unit], 300)
    assert time.monotonic() - began < 30

    def planted(*args: str) -> int:  # a process that is not (yet) its own group, as a runner before its setsid
        forked = on(sshd, "node0", f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(300)' {shlex.join(args)} "
                                   "> /dev/null 2>&1 < /dev/null & echo $!")
        pid = int(forked.stdout.split()[-1])
        assert on(sshd, "node0", f"kill -0 -- -{pid}").returncode != 0 and on(sshd, "node0", f"kill -0 {pid}").returncode == 0
        return pid

    stranger = planted("another-process")  # the unit's pid, reused by a process that is not the unit's: left alone
    unit.handle = {**unit.handle, "pids": [stranger]}
    assert backend.stop(run, unit) == "node0: not running"
    assert on(sshd, "node0", f"kill -0 {stranger}").returncode == 0
    on(sshd, "node0", f"kill {stranger}")
    runner = planted("--files", SshHandle.of(unit).files[0])  # one naming the unit's files: the runner, before setsid
    unit.handle = {**unit.handle, "pids": [runner]}
    assert backend.stop(run, unit) == "node0: stop requested"
    deadline = time.monotonic() + 10
    while on(sshd, "node0", f"kill -0 {runner}").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert on(sshd, "node0", f"kill -0 {runner}").returncode != 0


def logins(server) -> int:
    return (server.workdir / "sshd.log").read_text().count("Accepted publickey for ")


def test_sweep_runs_on_a_host_and_its_best_run_comes_back(sshd, shards, tmp_path):
    """On node1: the shards and then the winner's checkpoint reach it only by what the launcher sends. Every call the
    launch makes to node1 (dozens: checks, rsync, start, status, log tails, pull) shares one connection."""
    before = logins(sshd.node1)
    result = launch_ssh(sshd, tmp_path, "ssh", "sweep", *ssh_args(sshd, tmp_path / "remote", "node1"), "--space", "temperature_depth",
                        "--num-samples", "1", "--preset", "train_transformer", "--set", f"data.shards={shards}", "train.epochs=2",
                        "data.batch_size=64", "model.width=32", "model.heads=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = next((tmp_path / "runs").iterdir())
    assert json.loads((sweep / "run.json").read_text())["status"] == "complete"
    assert (sweep / "best" / "eval" / "results.json").is_file() and (sweep / "trials.csv").is_file()
    assert logins(sshd.node1) - before <= 2, result.stdout[-3000:]  # one; two where two calls raced to open it

    # the sweep's winner indexes the shards on the host: its checkpoint travels by rsync, the index comes back in the run
    indexed = launch_ssh(sshd, tmp_path, "ssh", "index", *ssh_args(sshd, tmp_path / "remote", "node1"), "--run", str(sweep / "best"),
                         "--shards", str(shards))
    assert indexed.returncode == 0, indexed.stdout[-3000:] + indexed.stderr[-3000:]
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("index"))
    assert json.loads((run / "run.json").read_text())["index"]["videos"] == 920 and (run / "index").is_dir()
    assert on(sshd, "node1", f"ls -d {tmp_path}/remote/data/file-*").returncode == 0


def test_a_run_kaggle_left_incomplete_continues_over_ssh_to_the_figures_of_an_uninterrupted_run(sshd, shards, kaggle, tmp_path):
    """Past Kaggle's wall (here: the session's steps spent, no continuation kernels left) onto a rented box that has
    none of this machine's files (node1): the run directory is the same everywhere, so `launch ssh --resume` sends it
    there, takes it on and ends where a run never interrupted does."""
    from kaggle_server import FAST, launch_kaggle

    settings = [f"data.shards={shards}", *TINY]
    first = launch_kaggle(kaggle, tmp_path, "kaggle", "train_mlp", *FAST, "--max-continuations", "0", "--set", *settings,
                          "train.session_steps=20")
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir()).relative_to(tmp_path)
    assert f"launch kaggle train_mlp --resume {run}" in first.stderr
    assert json.loads((tmp_path / run / "run.json").read_text())["global_step"] == 20

    moved = launch_ssh(sshd, tmp_path, "ssh", "train_mlp", "--resume", str(run), *ssh_args(sshd, sshd.remote / tmp_path.name, "node1"),
                       "--set", "train.session_steps=null")
    assert moved.returncode == 0 and "status: complete" in moved.stdout, moved.stdout[-3000:] + moved.stderr[-3000:]
    info, record = (json.loads((tmp_path / run / name).read_text()) for name in ("run.json", "launch.json"))
    assert info["backend"] == "ssh" and len(info["resumed_at"]) == 1
    assert record["backend"] == "ssh" and [old["backend"] for old in record["history"]] == ["kaggle"]

    reference = launch_ssh(sshd, tmp_path, "local", "train_mlp", "--run-dir", str(tmp_path / "ref"), "--set", *settings)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (records, weights, results), (ref_records, ref_weights, ref_results) = run_state(tmp_path / run), run_state(tmp_path / "ref")
    assert records == ref_records and results == ref_results
    assert all((weights[k] == ref_weights[k]).all() for k in weights)
