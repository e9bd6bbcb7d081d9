"""``launch ray`` on a real two-node Ray cluster on 127.0.0.1 built the way a real one is: a head, and a worker node
started with ``ray start --address`` in its own mount namespace with a private /tmp, so the nodes share no files
(see docs/remote-facts.md). Storage is a loopback S3 server (moto); shards are synthetic, regenerated on each node."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli_env, launch_command, read_jsonl
from servers import RayNode, alive_ray_nodes, free_port

from launch.compute.ray_train import node_copies
from tune.runner import trials_root

SHARDS = "synthetic://msrvtt?train=600&val=120&test=200&samples_per_shard=64"
SWEEP = ["--space", "temperature_depth", "--preset", "train_transformer", "--set", f"data.shards={SHARDS}", "data.batch_size=64",
         "model.width=32", "model.heads=2"]
STUDENT = [f"data.shards={SHARDS}", "train.epochs=6", "data.batch_size=16", "model.hidden=[64]", "train.log_every=5",
           "train.patience=null"]  # every epoch: a worker is lost while it trains


@dataclass
class Cluster:
    address: str
    env: dict
    token: str
    head: RayNode
    worker: RayNode
    secret: str

    def nodes(self) -> list[str]:
        return [node["node_id"] for node in alive_ray_nodes(self.address, self.token)]

    def worker_node(self) -> str:
        return next(node["node_id"] for node in alive_ray_nodes(self.address, self.token) if not node["is_head_node"])


def wait_for_nodes(address: str, token: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(alive_ray_nodes(address, token)) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster at {address} did not reach {count} alive nodes within {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint):
    token, gcs, dashboard = secrets.token_hex(16), free_port(), free_port()
    secret = "sk-" + secrets.token_hex(16)  # the nodes' S3 secret: it must never reach Ray's state, storage or a log
    logs = tmp_path_factory.mktemp("ray-cluster")
    env = {**cli_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "AWS_ENDPOINT_URL": s3_endpoint,
           "AWS_SECRET_ACCESS_KEY": secret, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    address = f"http://127.0.0.1:{dashboard}"
    head = RayNode(env, logs / "head.log", head_port=gcs, dashboard_port=dashboard)
    worker = None
    try:
        wait_for_nodes(address, token, 1)
        worker = RayNode(env, logs / "worker.log", head_port=gcs, private_tmp=True)
        wait_for_nodes(address, token, 2)
        yield Cluster(address, env, token, head, worker, secret)
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()


def launch_ray(cluster: Cluster, cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*args), cwd=cwd, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def stored_rows(client, bucket: str, prefix: str) -> dict[str, list[dict]]:
    """Every epoch each trial reported, read from Tune's experiment in storage."""
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []) if o["Key"].endswith("/result.json")]
    return {key.split("/")[-2]: [json.loads(line) for line in client.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
                                 if line.strip()] for key in keys}


def test_training_across_both_nodes_survives_a_lost_worker_and_equals_a_two_process_local_run(cluster, bucket, tmp_path):
    """Ray Train places one rank on each node; the worker node's rank is killed once the first epoch is persisted, the
    worker group restarts from that checkpoint, and the finished run equals an uninterrupted two-process local run."""
    import psutil

    client, name = bucket
    command = launch_command("ray", "train_mlp", "--address", cluster.address, "--storage", f"s3://{name}/runs",
                             "--num-workers", "2", "--placement-strategy", "STRICT_SPREAD", "--set", *STUDENT, "train.audit=true")
    training = subprocess.Popen(command, cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.monotonic() + 300, set()
        while len(seen) < 3:  # three epochs' checkpoints seen: the earlier ones are whole and registered
            assert time.monotonic() < deadline and training.poll() is None, "no checkpoint was persisted"
            seen |= {o["Key"].split("/ray-train/")[1].split("/")[0] for o in client.list_objects_v2(Bucket=name).get("Contents", [])
                     if "/ray-train/checkpoint_" in o["Key"]}
            time.sleep(0.2)
        victim = next(p for p in cluster.worker.processes() if "RayTrainWorker" in " ".join(p.cmdline()))
        victim.kill()
        out, _ = training.communicate(timeout=600)
    finally:
        training.kill()
    assert training.returncode == 0, out[-5000:]
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE
    run = next(p for p in (tmp_path / "runs").iterdir())
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["hardware"]["num_processes"] == 2 and info["backend"] == "ray" and info["resumed_at"]
    placed = {rank: read_jsonl(run / "logs" / f"node-rank{rank}.jsonl") for rank in (0, 1)}
    assert {starts[-1]["node_id"] for starts in placed.values()} == set(cluster.nodes())  # one rank on each node
    # on each node's own disk: every copy of the run went, the killed worker's too (its restarted rank may be elsewhere)
    nodes = [root / node_copies().relative_to("/") for root in (Path("/"), Path(f"/proc/{cluster.worker.process.pid}/root"))]
    assert all(list(node.glob("rank*")) for node in nodes) and not [p for node in nodes for p in node.glob(f"rank*/*{run.name}*")]
    assert all(len(starts) == 2 for starts in placed.values())  # both ranks started again, from the checkpoint
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"] == list(range(6))
    audits = [read_jsonl(run / "logs" / f"audit-rank{rank}.jsonl") for rank in (0, 1)]  # rank 1's came back from its node
    assert len(audits[0]) == len(audits[1]) > 0
    for step0, step1 in zip(*audits):
        assert step0["step"] == step1["step"] and step0["params"] == step1["params"]  # one model
        assert not set(step0["samples"]) & set(step1["samples"])  # each rank its own samples

    reference = subprocess.run(launch_command("local", "train_mlp", "--accelerate-config", "cpu_ddp2", "--run-dir", str(tmp_path / "ref"),
                                              "--set", *STUDENT), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=400)
    assert reference.returncode == 0, reference.stderr[-3000:]
    ours = json.loads((run / "eval" / "results.json").read_text())["metrics"]
    theirs = json.loads((tmp_path / "ref" / "eval" / "results.json").read_text())["metrics"]
    assert ours.keys() == theirs.keys() and all(ours[k] == pytest.approx(theirs[k], rel=1e-4, abs=1e-4) for k in ours)


def test_weights_here_go_to_the_s3_storage_once_and_the_job_reads_them_there(cluster, bucket, tmp_path):
    """An extraction on the cluster, its videos on S3 and the encoders' weights files of this machine: each file goes to
    --storage once, named by its content, and the job -- on whichever node Ray puts it -- reads it from there (the
    manifest records the S3 location and the local file's sha256); a second launch sends nothing."""
    import hashlib

    from conftest import TINY_EXTRACT, tiny_encoder_weights

    from data_shards.synthetic_videos import write_synthetic_video

    client, name = bucket
    for seed, (split, video) in enumerate([("train", "a"), ("val", "b"), ("test", "c")]):
        path = tmp_path / "videos" / split / f"{video}.mp4"
        path.parent.mkdir(parents=True)
        write_synthetic_video(path, seconds=2.0, seed=seed)
        client.upload_file(str(path), name, f"videos/{split}/{video}.mp4")
    weights = tiny_encoder_weights(tmp_path / "weights")
    job = ["ray", "extract", "--address", cluster.address, "--storage", f"s3://{name}/runs", "--videos", f"s3://{name}/videos",
           *TINY_EXTRACT, *(f"{key}={path}" for key, path in weights.items())]
    first = launch_ray(cluster, tmp_path, *job)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    sent = {line.split(": ")[1].split(" as ")[0]: line.rsplit(": ", 1)[1] for line in first.stdout.splitlines()
            if line.startswith("launch ray: ") and " as s3://" in line}
    assert set(weights) <= set(sent) and all(sent[key].endswith(" bytes sent") and sent[key][0] != "0" for key in weights), sent
    shards = next((tmp_path / "runs").iterdir()) / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 1, "val": 1, "test": 1}
    for key, path in weights.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        recorded = manifest["source"]["files"][key]
        assert recorded["sha256"] == digest and recorded["location"] == f"s3://{name}/runs/inputs/file-{digest[:16]}/{path.name}"

    again = launch_ray(cluster, tmp_path, *job)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [line for line in again.stdout.splitlines() if " as s3://" in line and not line.endswith(": there already, 0 bytes sent")] == []


def test_head_local_storage_or_shards_are_refused_before_the_sweep_is_submitted(cluster, tmp_path, small_shards):
    from ray.job_submission import JobSubmissionClient

    before = {job.submission_id for job in JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {cluster.token}"}).list_jobs()}
    refused = launch_ray(cluster, tmp_path, "ray", "sweep", "--address", cluster.address, "--storage", str(tmp_path / "store"),
                         "--num-samples", "2", *SWEEP, "train.epochs=1")
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert f"--storage {tmp_path / 'store'}: 1 of the cluster's 2 nodes do not see this path" in refused.stderr
    assert "pass s3://BUCKET/PREFIX" in refused.stderr and "Traceback" not in refused.stderr
    local_shards = launch_ray(cluster, tmp_path, "ray", "train_mlp", "--address", cluster.address, "--storage", "s3://any/runs",
                              "--num-workers", "2", "--set", f"data.shards={small_shards}", "train.epochs=1")
    assert local_shards.returncode == 2 and f"data.shards={small_shards}: 1 of the cluster's 2 nodes do not see it" in local_shards.stderr
    after = JobSubmissionClient(cluster.address, headers={"Authorization": f"Bearer {cluster.token}"}).list_jobs()
    assert all(job.metadata.get("streamapprox_job") == "storage probe" for job in after if job.submission_id not in before)
    assert not (tmp_path / "runs").exists()


def test_a_sweep_spreads_over_both_nodes_persists_to_s3_and_survives_the_loss_of_a_node(cluster, bucket, tmp_path):
    """Two trials, two CPUs each: one runs on each node and persists to S3 from there; the worker node's raylet is then
    killed (by pid) while its trial runs: that trial restarts from its last checkpoint on the head, and the sweep completes
    with every trial's epochs complete and in order, the winner chosen on validation, no node's secret in anything stored."""
    client, name = bucket
    command = launch_command("ray", "sweep", "--address", cluster.address, "--storage", f"s3://{name}/runs",
                             "--num-samples", "2", "--scheduler", "none", *SWEEP, "train.epochs=6")
    sweeping = subprocess.Popen(command, cwd=tmp_path, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker_node = cluster.worker_node()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # trials on the worker node have checkpointed an epoch or two
            rows = [row for rows in stored_rows(client, name, "runs/").values() for row in rows]
            on_worker = [row for row in rows if row["node_id"] == worker_node]
            if len({row["node_id"] for row in rows}) == 2 and len(on_worker) >= 2:
                break
            time.sleep(0.5)
        before = stored_rows(client, name, "runs/")
        cluster.worker.raylet().kill()
        out, _ = sweeping.communicate(timeout=600)
    finally:
        sweeping.kill()
    assert sweeping.returncode == 0, out[-5000:]
    (sweep,) = (tmp_path / "runs").iterdir()
    info = json.loads((sweep / "run.json").read_text())
    assert info["status"] == "complete" and (sweep / "best" / "eval" / "results.json").is_file()
    rows = json.loads((sweep / "trials.json").read_text())
    assert info["winner"]["trial_id"] == max(rows, key=lambda row: row["val_s2t_r1"])["trial_id"]  # chosen on validation
    scratch = trials_root(info["sweep"]["alias"])  # the head's disk: each trial's working copy went with it
    assert scratch.parent.is_dir() and not any(scratch.glob("*"))
    stored = [o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix=f"runs/{sweep.name}/").get("Contents", [])]
    assert any(key.endswith("/tuner.pkl") for key in stored) and f"runs/{sweep.name}/best/checkpoints/best.pt" in stored
    for key in stored:  # the nodes' S3 secret is in none of what Ray or we stored
        assert cluster.secret.encode() not in client.get_object(Bucket=name, Key=key)["Body"].read(), key
    after = stored_rows(client, name, f"runs/{sweep.name}/tune/")
    assert len(after) == 2 and len({row["node_id"] for rows in before.values() for row in rows}) == 2
    moved = [trial for trial, rows in after.items() if [row["node_id"] for row in rows][0] == worker_node != rows[-1]["node_id"]]
    assert moved  # a trial the dead node ran went on, from its checkpoint, on the head
    for trial, rows in after.items():
        epochs = [row["epoch"] for row in rows]
        assert sorted(set(epochs)) == list(range(1, 7)) and epochs == sorted(epochs), (trial, epochs)
        assert len(epochs) - len(set(epochs)) <= 1, (trial, epochs)  # at most the epoch in flight when the node died is redone
        assert [row["epoch"] for row in rows[: len(before.get(trial, []))]] == [row["epoch"] for row in before.get(trial, [])]
