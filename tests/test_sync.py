"""sync against real servers on loopback: moto's S3 server (through `launch sync` as a user runs
it), a proxy that slows or corrupts traffic, and a fake Kaggle API server."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, launch_command
from kaggle_server import FakeKaggle, kaggle_env
from servers import Proxy
from sync import sync


def make_run(root, run_id="r1"):
    run = root / run_id
    for rel, data in {
        "run.json": b'{"status": "complete"}',
        "metrics.jsonl": b'{"step": 1}\n',
        "checkpoints/best.pt": os.urandom(300_000),
        "checkpoints/last.pt": os.urandom(200_000),
        "eval/results.json": b"{}",
        "logs/train.log": b"log line\n",
    }.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    return run


def tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sync_cli(*args, cwd, env=None):
    return subprocess.run(launch_command("sync", *args), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=120)


def test_local_sync_incremental_delete_and_dry_run(tmp_path):
    src = make_run(tmp_path / "a")
    first = sync(str(src), str(tmp_path / "b"), select=None)
    assert len(first.copied) == 6 and tree(tmp_path / "b") == tree(src)
    assert sync(str(src), f"file://{tmp_path / 'b'}").bytes_moved == 0
    (src / "metrics.jsonl").write_bytes(b'{"step": 2}\n')
    (tmp_path / "b" / "stale.txt").write_bytes(b"old")
    planned = sync(str(src), str(tmp_path / "b"), delete=True, dry_run=True)
    assert planned.copied == ["metrics.jsonl"] and planned.deleted == ["stale.txt"]
    assert (tmp_path / "b" / "stale.txt").exists()  # dry run touched nothing
    done = sync(str(src), str(tmp_path / "b"), delete=True)
    assert done.copied == ["metrics.jsonl"] and tree(tmp_path / "b") == tree(src)


def test_s3_push_pull_incremental_delete_dry_run(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    run = make_run(tmp_path / "local")
    url = f"s3://{name}/runs/r1"
    pushed = sync_cli(str(run), url, "--only", "all", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert "copied 6 files" in pushed.stdout
    for rel, data in tree(run).items():  # boto3 reads back exactly what was pushed
        assert client.get_object(Bucket=name, Key=f"runs/r1/{rel}")["Body"].read() == data
    aws = shutil.which("aws", path=os.path.dirname(os.sys.executable)) or shutil.which("aws")
    if aws:  # and so does the aws CLI
        out = tmp_path / "via-aws.pt"
        subprocess.run([aws, "--endpoint-url", s3_endpoint, "s3", "cp", f"{url}/checkpoints/best.pt", str(out)], check=True,
                       capture_output=True, env=cli_env(), timeout=60)
        assert out.read_bytes() == (run / "checkpoints/best.pt").read_bytes()

    again = sync_cli(str(run), url, "--only", "all", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert "copied 0 files (0.0 MB), 6 unchanged" in again.stdout  # a second sync moves 0 bytes

    (run / "checkpoints/last.pt").write_bytes(os.urandom(1000))
    client.put_object(Bucket=name, Key="runs/r1/extra.txt", Body=b"put by boto3")
    dry = sync_cli(str(run), url, "--only", "all", "--delete", "--dry-run", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert "would copy 1 files" in dry.stdout and "delete extra.txt" in dry.stdout and "copy   checkpoints/last.pt" in dry.stdout
    assert client.get_object(Bucket=name, Key="runs/r1/extra.txt")["Body"].read() == b"put by boto3"
    synced = sync_cli(str(run), url, "--only", "all", "--delete", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert "copied 1 files" in synced.stdout and "deleted 1" in synced.stdout
    assert "runs/r1/extra.txt" not in [o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]]

    # pull with the default run policy: best + last + metrics + run.json, not logs
    client.put_object(Bucket=name, Key="runs/r1/eval/from-boto3.json", Body=b'{"put": "by boto3"}')
    pulled = subprocess.run(launch_command("pull", url, "--endpoint-url", s3_endpoint), cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    local = tree(tmp_path / "runs" / "r1")
    assert sorted(local) == ["checkpoints/best.pt", "checkpoints/last.pt", "eval/from-boto3.json", "eval/results.json", "metrics.jsonl", "run.json"]
    assert local["eval/from-boto3.json"] == b'{"put": "by boto3"}' and local["checkpoints/last.pt"] == (run / "checkpoints/last.pt").read_bytes()
    repeat = subprocess.run(launch_command("pull", url, "--endpoint-url", s3_endpoint), cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert "copied 0 files" in repeat.stdout


def test_s3_errors_name_the_url(tmp_path, s3_endpoint):
    (tmp_path / "a.txt").write_text("a")
    result = sync_cli(str(tmp_path), "s3://no-such-bucket/x", "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert result.returncode == 2 and "s3://no-such-bucket/x: the bucket does not exist" in result.stderr
    env = {k: v for k, v in cli_env().items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    result = sync_cli(str(tmp_path), "s3://b/x", "--endpoint-url", s3_endpoint, cwd=tmp_path, env=env)
    assert result.returncode == 2 and "s3://b/x: no AWS credentials found" in result.stderr
    assert "testing" not in result.stderr + result.stdout


def test_multipart_upload_killed_midway_resumes(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    big = tmp_path / "src" / "shard.tar"
    big.parent.mkdir()
    big.write_bytes(os.urandom(40 * 1024 * 1024))  # 8 parts of 5 MB
    proxy = Proxy(s3_endpoint)
    proxy.hold_parts_above = 3  # parts 4..8 stall: the sync is stuck mid-upload
    env = {**cli_env(), "STREAMAPPROX_S3_PART_MB": "5"}
    command = launch_command("sync", str(big.parent), f"s3://{name}/shards", "--endpoint-url", proxy.endpoint)
    try:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline, done_parts = time.monotonic() + 60, 0
        while time.monotonic() < deadline and done_parts < 3:
            uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
            if uploads:
                done_parts = len(client.list_parts(Bucket=name, Key="shards/shard.tar", UploadId=uploads[0]["UploadId"]).get("Parts", []))
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert done_parts == 3
        assert "Contents" not in client.list_objects_v2(Bucket=name)  # nothing complete

        proxy.hold_parts_above, before = None, proxy.part_uploads
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert proxy.part_uploads - before == 8 - 3  # only the missing parts went up again
        assert f"copied 1 files ({5 * 5 * 1024 * 1024 / 1e6:.1f} MB)" in rerun.stdout  # and the report says what was sent
    finally:
        proxy.stop()
    got = client.get_object(Bucket=name, Key="shards/shard.tar")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()


def test_corrupted_download_is_rejected_and_nothing_is_left(tmp_path, s3_endpoint, bucket):
    client, name = bucket
    client.put_object(Bucket=name, Key="runs/r2/checkpoints/best.pt", Body=os.urandom(50_000))
    proxy = Proxy(s3_endpoint)
    proxy.corrupt = "best.pt"
    try:
        result = sync_cli(f"s3://{name}/runs/r2", str(tmp_path / "dest"), "--endpoint-url", proxy.endpoint, cwd=tmp_path)
    finally:
        proxy.stop()
    # botocore's own checksum or ours catches it first; either way one clear line naming the file
    assert result.returncode == 2 and f"s3://{name}/runs/r2/checkpoints/best.pt:" in result.stderr and "(corrupted)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dest").exists() or not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]


@pytest.fixture
def fake_kaggle():
    server = FakeKaggle("kaggle-user", "test-key-not-real", page_cap=3)
    yield server
    server.stop()


def test_kaggle_kernel_outputs_all_pages(tmp_path, fake_kaggle):
    outputs = {f"runs/k1/checkpoints/{n}.pt": os.urandom(10_000 + n) for n in range(5)}
    outputs.update({"runs/k1/run.json": b"{}", "runs/k1/metrics.jsonl": b"{}\n", "notebook.log": b"log"})
    fake_kaggle.kernel_outputs[("kaggle-user", "streamapprox-train")] = outputs
    env = kaggle_env(fake_kaggle, "kaggle-user", "test-key-not-real", tmp_path / "kcfg")
    result = sync_cli("kaggle://kaggle-user/streamapprox-train", str(tmp_path / "out"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == outputs  # 8 files over 3 pages of at most 3
    pages = [body.get("pageToken") for method, body in fake_kaggle.requests if method == "ListKernelSessionOutput"]
    assert pages == ["", "3", "6"]
    assert "test-key-not-real" not in result.stdout + result.stderr

    fake_kaggle.broken.add("notebook.log")  # an expired signed URL answers 403 with an XML body
    result = sync_cli("kaggle://kaggle-user/streamapprox-train", str(tmp_path / "fresh"), cwd=tmp_path, env=env)
    assert result.returncode == 2 and "notebook.log: the file server answered HTTP 403" in result.stderr
    assert not (tmp_path / "fresh" / "notebook.log").exists()
    assert not [p for p in (tmp_path / "fresh").rglob("*.partial")]


def test_kaggle_dataset_read_and_credential_errors(tmp_path, fake_kaggle):
    files = {"train-000000.tar": os.urandom(20_000), "manifest.json": b'{"schema_version": 1}'}
    fake_kaggle.datasets[("kaggle-user", "msrvtt-shards")] = files
    env = kaggle_env(fake_kaggle, "kaggle-user", "test-key-not-real", tmp_path / "kcfg")
    result = sync_cli("kaggle-dataset://kaggle-user/msrvtt-shards", str(tmp_path / "shards"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "shards") == files
    again = sync_cli("kaggle-dataset://kaggle-user/msrvtt-shards", str(tmp_path / "shards"), cwd=tmp_path, env=env)
    # Kaggle lists sizes but no digests: equal size proves nothing, so the files move again (verified)
    assert again.returncode == 0 and "copied 2 files" in again.stdout and tree(tmp_path / "shards") == files

    wrong = {**env, "KAGGLE_KEY": "wrong"}
    result = sync_cli("kaggle://kaggle-user/streamapprox-train", str(tmp_path / "x"), cwd=tmp_path, env=wrong)
    assert result.returncode == 2 and "kaggle://kaggle-user/streamapprox-train: Kaggle refused the request (HTTP 401" in result.stderr
    assert "wrong" not in result.stderr.replace("kaggle://", "")
    none = {k: v for k, v in env.items() if k not in ("KAGGLE_USERNAME", "KAGGLE_KEY")}
    result = sync_cli("kaggle://kaggle-user/streamapprox-train", str(tmp_path / "x"), cwd=tmp_path, env=none)
    assert result.returncode == 2 and "kaggle: no usable credentials" in result.stderr
    result = sync_cli(str(tmp_path / "shards"), "kaggle://kaggle-user/anything", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "read-only" in result.stderr


def test_launch_cli_stays_light():
    """`launch sync/pull/--help` must not pay for torch (seconds per call, and it halved sync throughput once)."""
    code = "import sys, launch.cli, sync.s3, sync.kaggle; assert 'torch' not in sys.modules and 'webdataset' not in sys.modules"
    subprocess.run([os.sys.executable, "-c", code], check=True, timeout=60)


def test_jobs_read_shards_from_s3_through_a_verified_cache(tmp_path, s3_endpoint, bucket, small_shards):
    """``data.shards=s3://...`` (how a Ray cluster reads shards it does not share): mirrored into the cache
    by sync, then verified against the manifest like any local set; a second read moves nothing."""
    from sync import sync

    _, name = bucket
    sync(str(small_shards), f"s3://{name}/feats", endpoint_url=s3_endpoint)
    env = {**cli_env(), "AWS_ENDPOINT_URL": s3_endpoint, "STREAMAPPROX_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "jobs.train_mlp", "--check", "--set", f"data.shards=s3://{name}/feats"]
    for _ in range(2):
        check = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "check ok" in check.stdout, check.stdout + check.stderr
    assert len(list((tmp_path / "cache" / "s3").glob("*/manifest.json"))) == 1
    missing = subprocess.run([*command[:-1], f"data.shards=s3://{name}/nothing-here"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and f"s3://{name}/nothing-here: nothing there (no such directory or prefix" in missing.stderr


def test_a_missing_or_empty_source_deletes_nothing(tmp_path, s3_endpoint, bucket):
    """A typo in the source must not become "make the destination empty": one line, exit 2, nothing deleted (as
    `aws s3 sync` refuses a missing source), for local and S3 sources and destinations, with and without --dry-run."""
    client, name = bucket
    run = tmp_path / "runs" / "my-run"
    (run / "checkpoints").mkdir(parents=True)
    for rel in ("run.json", "metrics.jsonl", "checkpoints/best.pt"):
        (run / rel).write_text(rel)
    pushed = sync_cli(str(run), f"s3://{name}/runs/my-run", "--endpoint-url", s3_endpoint, "--only", "all", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    stored = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"])
    (tmp_path / "empty").mkdir()
    for source, destination in ((str(tmp_path / "typo-dir"), str(run)), (str(tmp_path / "empty"), str(run)),
                                (str(tmp_path / "typo-dir"), f"s3://{name}/runs/my-run"), (f"s3://{name}/runs/my-rnu", str(run))):
        for extra in ([], ["--dry-run"]):
            result = sync_cli(source, destination, "--delete", "--only", "all", "--endpoint-url", s3_endpoint, *extra, cwd=tmp_path)
            assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
            assert result.stderr.strip() == f"launch: error: {source}: nothing there (no such directory or prefix, or it is empty); " \
                                            "nothing was copied or deleted"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == ["checkpoints/best.pt", "metrics.jsonl", "run.json"]
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]) == stored


def test_objects_other_tools_or_cut_syncs_left_are_recognised_and_an_unchanged_sync_writes_nothing(tmp_path, s3_endpoint, bucket):
    """An object `aws s3 sync` uploaded in 8 MiB parts (a multipart ETag) and one our own upload finished just before
    the sync was killed (not in the manifest yet) are recognised without moving a byte; a second sync of unchanged
    data sends no write request at all."""
    from sync.base import Entry
    from sync.s3 import S3Store

    client, name = bucket
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # aws s3: 3 parts of 8 MiB
    (src / "small.txt").write_text("small")
    aws = subprocess.run([str(Path(sys.executable).with_name("aws")), "s3", "sync", str(src), f"s3://{name}/data", "--endpoint-url",
                          s3_endpoint], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert aws.returncode == 0, aws.stderr
    assert client.head_object(Bucket=name, Key="data/big.bin")["ETag"].strip('"').endswith("-3")
    pulled = sync_cli(f"s3://{name}/data", str(src), "--endpoint-url", s3_endpoint, cwd=tmp_path)
    assert pulled.returncode == 0 and "copied 0 files (0.0 MB), 2 unchanged" in pulled.stdout, pulled.stdout + pulled.stderr

    (src / "late.bin").write_bytes(os.urandom(17 * 1024 * 1024))  # uploaded in parts, its sync killed before the manifest
    S3Store(f"s3://{name}/data", name, "data", s3_endpoint).upload("late.bin", src / "late.bin", Entry((src / "late.bin").stat().st_size),
                                                                   lambda n: None)
    proxy = Proxy(s3_endpoint)
    try:
        first = sync_cli(str(src), f"s3://{name}/data", "--endpoint-url", proxy.endpoint, cwd=tmp_path)
        assert first.returncode == 0 and "copied 0 files (0.0 MB), 3 unchanged" in first.stdout, first.stdout + first.stderr
        proxy.requests.clear()
        second = sync_cli(str(src), f"s3://{name}/data", "--endpoint-url", proxy.endpoint, cwd=tmp_path)
        assert second.returncode == 0 and "copied 0 files (0.0 MB), 3 unchanged" in second.stdout
        # the second sync went through the proxy (it listed the prefix and read the manifest there) and wrote nothing
        assert ("GET", f"/{name}/data/.streamapprox-sync.json") in proxy.requests, proxy.requests
        assert any(method == "GET" and path.startswith(f"/{name}?list-type=2") and "prefix=data%2F" in path
                   for method, path in proxy.requests), proxy.requests
        assert [request for request in proxy.requests if request[0] not in ("GET", "HEAD")] == []
    finally:
        proxy.stop()
