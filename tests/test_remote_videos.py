"""Videos where they live: a folder on S3 listed with boto3 and read where the job runs, a list whose paths are URLs
(a video that cannot be fetched is a recorded failure, like one that cannot be decoded); the shards equal those of
the same files extracted from a folder here."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_EXTRACT, cli_env
from test_weights import FileServer


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Five synthetic videos in train/ val/ test/ folders, and their shards extracted here (the reference)."""
    from data_shards.synthetic_videos import write_synthetic_video

    root = tmp_path_factory.mktemp("collection")
    for seed, (split, name) in enumerate([("train", "a"), ("train", "b"), ("val", "c"), ("test", "d"), ("test", "e")]):
        (root / "videos" / split).mkdir(parents=True, exist_ok=True)
        write_synthetic_video(root / "videos" / split / f"{name}.mp4", seconds=2.0, seed=seed)
    result = extract(str(root / "videos"), root / "reference")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def extract(videos: str, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jobs.extract", "--videos", videos, "--out", str(out), "--random-init", *TINY_EXTRACT]
    return subprocess.run(command, env={**cli_env(), **(env or {})}, capture_output=True, text=True, timeout=300)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_a_folder_on_s3_is_listed_and_read_where_the_job_runs(tmp_path, collection, bucket, s3_endpoint):
    client, name = bucket
    for path in (collection / "videos").rglob("*.mp4"):
        client.upload_file(str(path), name, f"msrvtt/{path.relative_to(collection / 'videos').as_posix()}")
    result = extract(f"s3://{name}/msrvtt", tmp_path / "out", env={"AWS_ENDPOINT_URL": s3_endpoint})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert shard_bytes(tmp_path / "out") == shard_bytes(collection / "reference") and shard_bytes(tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["input"]["videos"] == f"s3://{name}/msrvtt" and not manifest["source"]["failures"]


def test_a_list_of_urls_is_fetched_video_by_video_and_one_that_fails_is_recorded(tmp_path, collection):
    served = tmp_path / "served"
    shutil.copytree(collection / "videos", served)
    server = FileServer(served)
    try:
        rows = ["id,path,split", *(f"{p.stem},{server.url}/{p.relative_to(served).as_posix()},{p.parent.name}"
                                   for p in sorted(served.rglob("*.mp4")))]
        rows.append(f"gone,{server.url}/train/gone.mp4,train")
        (tmp_path / "videos.csv").write_text("\n".join(rows) + "\n")
        result = extract(str(tmp_path / "videos.csv"), tmp_path / "out", env={"STREAMAPPROX_HTTP_ATTEMPTS": "2",
                                                                              "STREAMAPPROX_HTTP_BACKOFF_S": "0.05"})
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert shard_bytes(tmp_path / "out") == shard_bytes(collection / "reference")
    failures = json.loads((tmp_path / "out" / "manifest.json").read_text())["source"]["failures"]
    assert [f["video_id"] for f in failures] == ["gone"] and "cannot fetch" in failures[0]["reason"] and "404" in failures[0]["reason"]


def test_a_collection_named_by_ssh_is_refused_where_no_ssh_of_yours_reaches(tmp_path):
    """``ssh://HOST/...`` is read through this machine's ssh: a Kaggle kernel and a Ray worker have none, so their
    launchers refuse it from the job's check report, before anything is uploaded or submitted (``launch ssh`` and
    ``launch local`` read it: tests/test_ssh.py)."""
    from jobs.contract import LocatedVideosInput
    from launch.backends.base import Job
    from launch.backends.kaggle import Kaggle, KaggleOptions
    from launch.backends.ray import Ray, RayOptions
    from launch.errors import LaunchError

    videos = LocatedVideosInput(location="ssh://gpu1/data/msrvtt/videos.csv", videos=3, bytes=3000)
    job = Job("extract", [], tmp_path / "run", inputs={"input.videos": videos})
    with pytest.raises(LaunchError, match=r"input.videos=ssh://gpu1/data/msrvtt/videos.csv: read through this machine's ssh, which a "
                                          r"Kaggle kernel does not have"):
        Kaggle(KaggleOptions()).mounted_files(job)
    with pytest.raises(LaunchError, match=r"which a Ray worker does not have; put it on storage the cluster shares"):
        Ray(RayOptions(address="http://head:8265", storage="s3://bucket/runs")).check_inputs(job)
