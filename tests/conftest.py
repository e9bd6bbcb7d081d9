"""Shared fixtures: a small synthetic shard set (uneven shards) in a per-session cache, and
helpers that run the real ``launch`` CLI in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# 600 train videos in shards of 128 -> 5 shards of uneven size (128 x 4 + 88).
SMALL = "synthetic://msrvtt?train=600&val=120&test=200&samples_per_shard=128"
# Extraction with the real encoder architectures at tiny sizes (random weights unless a test loads some).
FIXTURES = Path(__file__).parent / "fixtures"
TINY_EXTRACT = ["--set", "student.clip.model=tiny_clip", f"student.clip.architecture={FIXTURES / 'tiny_clip.json'}",
                f"teacher.imagebind.architecture={FIXTURES / 'tiny_imagebind.json'}", "samples_per_shard=3"]
FAST_MLP = ["train.epochs=3", "data.batch_size=64", "model.hidden=[256,256]", "train.log_every=1"]


# Test files by their share of the suite (seconds on 2 cores, measured), longest first: two workers each take the next
# file as they finish one, so the long files go first and the short ones even out the end -- in xdist's own order
# (most tests first) the last files handed out were single minute-long tests, and one worker idled ~2 min at the end.
# A file not named here runs after these, in collection order.
LONGEST_FIRST = ("test_kaggle.py", "test_docs_local.py", "test_docs_remote.py", "test_ssh.py", "test_docs_kaggle.py", "test_sweep.py",
                 "test_ray.py", "test_ray_cluster.py", "test_kaggle_limits.py", "test_kaggle_sessions.py", "test_extract.py",
                 "test_gpu_check.py", "test_search.py", "test_resume.py", "test_init_from.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))


@pytest.fixture(scope="session", autouse=True)
def shard_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["STREAMAPPROX_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def small_shards(shard_cache) -> Path:
    from data_shards.synthetic import ensure_synthetic

    return ensure_synthetic(SMALL)


def cli_env() -> dict:
    """Single-threaded math, so runs on 2 cores are deterministic and do not oversubscribe."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def launch_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "launch.cli", *args]


def launch(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it (output captured for assertions)."""
    return subprocess.run(launch_command(*args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tensorboard_scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """What `tensorboard --logdir` shows for ``tag`` of a run: (step, value), events a resume replaced dropped."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def only_run(root: Path) -> Path:
    runs = sorted((root / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def kaggle_image(tmp_path_factory) -> Path:
    """Kaggle's Python image for the loopback Kaggle's kernels: torch and a few of Kaggle's packages, not this project."""
    from kaggle_image import build_image

    image = tmp_path_factory.mktemp("kaggle-image") / "python"
    build_image(image)
    return image


@pytest.fixture(scope="session")
def wheel_server():
    """The package index a Kaggle kernel with internet installs from (the wheelhouse ./setup.sh --dev filled)."""
    from kaggle_image import WheelServer

    server = WheelServer()
    yield server
    server.stop()


@pytest.fixture
def kaggle(tmp_path, tmp_path_factory, kaggle_image, wheel_server):
    """A loopback Kaggle (tests/kaggle_server.py) that behaves as the real one: archives unpacked, two GPU sessions, ..."""
    from kaggle_server import KEY, USER, FakeKaggle
    from servers import CHECKOUT

    server = FakeKaggle(USER, KEY, workdir=tmp_path / "kaggle-sandbox", image=kaggle_image, index_url=wheel_server.url,
                        hide=(CHECKOUT, tmp_path_factory.getbasetemp()), page_cap=5)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server (moto) on 127.0.0.1 for the session, with throwaway test credentials."""
    from servers import MotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    server = MotoServer()
    yield server.endpoint
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket per test; returns (boto3 client, bucket name)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    name = "t-" + request.node.name.lower().replace("_", "-")[:50]
    client.create_bucket(Bucket=name)
    return client, name


def tiny_encoder_weights(folder: Path) -> dict[str, Path]:
    """Checkpoint files of the tiny encoders (VGGish at its full size, in half precision: 145 MB), as their real loaders
    read them (no --random-init): student.clip.weights, student.audio.vggish.weights, teacher.imagebind.weights."""
    import open_clip
    import torch
    import torchvggish

    from model.imagebind import ImageBind, ImageBindConfig

    folder.mkdir(parents=True, exist_ok=True)
    open_clip.add_model_config(FIXTURES / "tiny_clip.json")
    files = {"student.clip.weights": folder / "clip.pt", "student.audio.vggish.weights": folder / "vggish.pt",
             "teacher.imagebind.weights": folder / "imagebind.pt"}
    torch.save(open_clip.create_model("tiny_clip").state_dict(), files["student.clip.weights"])
    vggish = torchvggish.VGG(torchvggish.make_layers(), postprocess=False).state_dict()
    torch.save({name: tensor.half() for name, tensor in vggish.items()}, files["student.audio.vggish.weights"])
    torch.save(ImageBind(ImageBindConfig.model_validate_json((FIXTURES / "tiny_imagebind.json").read_text())).state_dict(),
               files["teacher.imagebind.weights"])
    return files
