"""``launch ray``: the real CLI and Ray's own JobSubmissionClient against a real local Ray head on
127.0.0.1 with token authentication on; runs come back through sync from a storage path."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import cli_env, launch_command, read_jsonl
from contract import BackendContract, Target
from servers import Proxy, RayNode, alive_ray_nodes, free_port

TINY = ["train.epochs=2", "data.batch_size=64", "model.hidden=[64]"]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    token, dashboard = secrets.token_hex(16), free_port()
    # the cluster's "python" is this environment's, as on a node set up with ./setup.sh
    env = {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    head = RayNode(env, tmp_path_factory.mktemp("ray-head") / "head.log", head_port=free_port(), dashboard_port=dashboard)
    try:
        deadline = time.monotonic() + 120
        while not alive_ray_nodes(f"http://127.0.0.1:{dashboard}", token):
            assert time.monotonic() < deadline, "the Ray head did not come up within 120 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{dashboard}", env, head.temp
    finally:
        head.stop()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_shards.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("ray-shards") / "small"
    generate(SyntheticSpec(train=600, val=120, test=200, samples_per_shard=128), out, progress=False)
    return out


def launch_ray(env: dict, cwd: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class RayTarget(Target):
    """The cluster behind a proxy that, for a while, drops every connection (the network to the head goes)."""

    backend = "ray"

    def __init__(self, env: dict, shards: Path, proxy: Proxy):
        super().__init__(env, shards)
        self.proxy = proxy

    def options(self, tmp_path: Path) -> list[str]:
        return ["--address", self.proxy.endpoint, "--storage", str(tmp_path / "store")]

    def sent(self, tmp_path: Path) -> list:
        return [request for request in self.proxy.requests if request[0] in ("POST", "PUT")]  # submissions, uploads

    def trouble(self) -> None:
        self.proxy.drop_next = 6

    def troubled(self, output: str) -> bool:
        return self.proxy.dropped >= 6 and "retrying" in output and "reached again" in output


@pytest.fixture
def target(ray_head, shards):
    address, env, _ = ray_head
    proxy = Proxy(address)
    yield RayTarget(env, shards, proxy)
    proxy.stop()


class TestContract(BackendContract):
    pass


def test_train_index_and_extract_run_on_the_cluster_and_come_back(ray_head, shards, tmp_path):
    """(A sweep on this cluster: the driver-died test below; spread over two nodes: test_ray_cluster.py and the ray
    page of the docs.)"""
    address, env, _ = ray_head
    cluster = ["--address", address, "--storage", str(tmp_path / "store")]
    trained = launch_ray(env, tmp_path, "ray", "train_mlp", *cluster, "--set", f"data.shards={shards}", *TINY)
    assert trained.returncode == 0 and "status: complete" in trained.stdout, trained.stdout[-3000:] + trained.stderr[-3000:]
    run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("train_mlp"))
    assert json.loads((run / "run.json").read_text())["backend"] == "ray" and (run / "eval" / "results.json").is_file()
    status = launch_ray(env, tmp_path, "status", str(run))
    assert status.returncode == 0 and ": succeeded" in status.stdout, status.stdout + status.stderr
    logs = launch_ray(env, tmp_path, "logs", str(run))
    assert "epoch 1 done" in logs.stdout

    indexed = launch_ray(env, tmp_path, "ray", "index", *cluster, "--run", str(run.resolve()), "--shards", str(shards))
    assert indexed.returncode == 0, indexed.stdout[-3000:] + indexed.stderr[-3000:]
    index_run = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("index"))
    assert json.loads((index_run / "run.json").read_text())["index"]["videos"] == 920  # the index came back inside its run
    assert (index_run / "index").is_dir()

    from conftest import TINY_EXTRACT

    from data_shards.synthetic_videos import write_collection

    listing = write_collection(tmp_path / "videos", 3, seconds=2.0)
    extracted = launch_ray(env, tmp_path, "ray", "extract", *cluster, "--videos", str(listing), "--random-init", *TINY_EXTRACT)
    assert extracted.returncode == 0, extracted.stdout[-3000:] + extracted.stderr[-3000:]
    shards = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("extract")) / "shards"
    assert json.loads((shards / "manifest.json").read_text())["splits"] == {"train": 1, "val": 1, "test": 1}


def test_bad_cluster_inputs_fail_before_submission(ray_head, shards, tmp_path):
    address, env, _ = ray_head
    job = ["train_mlp", "--storage", str(tmp_path / "store"), "--set", f"data.shards={shards}", *TINY]
    wrong_token = launch_ray({**env, "RAY_AUTH_TOKEN": "0" * 32}, tmp_path, "ray", *job, "--address", address)
    assert wrong_token.returncode == 2 and "RAY_AUTH_TOKEN" in wrong_token.stderr and "uthentication" in wrong_token.stderr
    nowhere = launch_ray(env, tmp_path, "ray", *job, "--address", f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == 2 and "Ray Jobs at http://127.0.0.1" in nowhere.stderr
    relative = shutil.copytree(shards, tmp_path / "local-shards")
    moved = launch_ray(env, tmp_path, "ray", "train_mlp", "--address", address, "--storage", "s", "--set",
                       f"data.shards={relative.name}", *TINY)
    assert moved.returncode == 2 and "absolute path" in moved.stderr
    too_big = launch_ray(env, tmp_path, "ray", *job, "--address", address, "--max-bundle-mb", "0.05")
    assert too_big.returncode == 2 and "over the 0.05 MB guard" in too_big.stderr
    assert not (tmp_path / "runs").exists()  # nothing was submitted


def test_a_sweep_whose_driver_died_resumes_on_the_cluster(ray_head, shards, tmp_path):
    """The sweep's Ray job is stopped mid-sweep (its driver killed); `launch ray sweep --resume RUN` submits it again,
    and it continues from storage: no reported epoch is lost or redone beyond the one in flight."""
    address, env, temp = ray_head
    store = tmp_path / "store"
    started = launch_ray(env, tmp_path, "ray", "sweep", "--address", address, "--storage", str(store), "--detach", "--space",
                         "temperature_depth", "--num-samples", "2", "--max-concurrent", "1", "--scheduler", "none", "--preset",
                         "train_transformer", "--set", f"data.shards={shards}", "train.epochs=4", "data.batch_size=64", "model.width=32",
                         "model.heads=2")
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    deadline = time.monotonic() + 240
    while sum(len(read_jsonl(p)) for p in store.glob(f"{run.name}/tune/*/result.json")) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    before = {p.parent.name: read_jsonl(p) for p in store.glob(f"{run.name}/tune/*/result.json")}
    assert sum(map(len, before.values())) >= 3
    assert launch_ray(env, tmp_path, "stop", str(run)).returncode == 0
    while ": stopped" not in launch_ray(env, tmp_path, "status", str(run)).stdout and time.monotonic() < deadline + 60:
        time.sleep(1)
    resumed = launch_ray(env, tmp_path, "ray", "sweep", "--address", address, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-3000:]
    assert temp in resumed.stdout and "Trial status: 2 TERMINATED" in resumed.stdout  # Tune ran inside the cluster's session
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert len(json.loads((run / "launch.json").read_text())["units"]) == 2
    stored = {p.parent.name: read_jsonl(p) for p in store.glob(f"{run.name}/tune/*/result.json")}
    after = {trial: rows for trial, rows in stored.items() if rows}
    # a trial started as the driver died may have left an empty directory; resumed, it reports under its name + _<hex>
    assert len(after) == 2 and all(any(name.startswith(f"{empty}_") for name in after) for empty in stored.keys() - after.keys())
    for trial, rows in after.items():
        epochs = [row["epoch"] for row in rows]
        assert sorted(set(epochs)) == list(range(1, 5)) and epochs == sorted(epochs) and len(epochs) <= 5, (trial, epochs)
        assert rows[: len(before.get(trial, []))] == before.get(trial, [])  # what was reported before the stop is kept


def test_a_ray_train_worker_removes_the_copies_dead_workers_left_on_its_node(tmp_path, monkeypatch):
    """A killed worker cannot remove its node's copy of the run directory, and its restarted rank may land on another
    node: the next worker on the node removes every copy whose lock no living worker holds, and its own as it ends."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    hold = ("import sys, time\nfrom launch.compute.ray_train import held_copy, node_run_dir\n"
            "with held_copy(node_run_dir(sys.argv[1], int(sys.argv[2]))) as copy:\n"
            "    (copy / 'logs').mkdir(parents=True); print(copy, flush=True); time.sleep(600)\n")
    holders = [subprocess.Popen([sys.executable, "-c", hold, run, rank], env=env, stdout=subprocess.PIPE, text=True)
               for run, rank in (("run-a", "1"), ("run-b", "0"))]
    try:
        live, dead = (Path(holder.stdout.readline().strip()) for holder in holders)
        holders[1].kill()  # as Ray kills a lost worker: no finally runs
        holders[1].wait()
        older = tmp_path / f"streamapprox-{os.getuid()}" / "ray-train" / "rank3" / "run-c"  # a copy without a lock
        older.mkdir(parents=True)
        from launch.compute.ray_train import held_copy, node_run_dir

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with held_copy(node_run_dir("run-b", 1)) as mine:
            mine.mkdir()
            assert live.is_dir() and not dead.exists() and not older.exists()
            assert not dead.with_name("run-b.lock").exists() and live.with_name("run-a.lock").exists()
        assert not mine.exists() and not mine.with_name("run-b.lock").exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
