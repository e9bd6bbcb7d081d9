"""Encoder weights where they live: a URL fetched once on the machine that runs the job (cached, verified by a pinned
sha256), an ``s3://`` object read there, a local file; each recorded in the manifest by its sha256."""
from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, TINY_EXTRACT, cli_env, tiny_encoder_weights


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A folder with the tiny encoders' checkpoint files: clip.pt, vggish.pt, imagebind.pt."""
    folder = tmp_path_factory.mktemp("weights")
    tiny_encoder_weights(folder)
    return folder


@pytest.fixture(scope="module")
def few_videos(tmp_path_factory) -> Path:
    from data_shards.synthetic_videos import write_collection

    return write_collection(tmp_path_factory.mktemp("videos"), 3, seconds=2.0)


class FileServer:
    """A loopback HTTP file server that counts the requests it answers."""

    def __init__(self, root: Path):
        counts: list[str] = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                counts.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.requests = counts
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def file_server(weights):
    server = FileServer(weights)
    yield server
    server.stop()


def extract(videos: Path, out: Path, cache: Path, *settings: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(out), *TINY_EXTRACT, *settings]
    return subprocess.run(command, env={**cli_env(), "STREAMAPPROX_CACHE": str(cache), **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def test_a_url_weight_is_fetched_once_and_an_s3_weight_read_where_the_job_runs_each_verified_and_recorded(
        tmp_path, weights, few_videos, file_server, bucket, s3_endpoint):
    """The teacher's weights from a URL pinned by sha256, CLIP's from S3: the first extraction fetches the URL (once: a
    second one is answered by the cache) and reads S3 where it runs; with CLIP's local file instead, the shards are the
    same bytes. A wrong pin or a missing object is one line, exit 2, nothing kept."""
    client, name = bucket
    client.upload_file(str(weights / "clip.pt"), name, "encoders/clip.pt")
    digest = sha256(weights / "imagebind.pt")
    url = f"{file_server.url}/imagebind.pt#sha256={digest}"
    local_clip, vggish = f"student.clip.weights={weights / 'clip.pt'}", f"student.audio.vggish.weights={weights / 'vggish.pt'}"
    teacher = f"teacher.imagebind.weights={url}"
    on_s3 = {"AWS_ENDPOINT_URL": s3_endpoint}
    first = extract(few_videos, tmp_path / "first", tmp_path / "cache", f"student.clip.weights=s3://{name}/encoders/clip.pt", vggish,
                    teacher, env=on_s3)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    files = manifest["source"]["files"]
    assert files["teacher.imagebind.weights"] == {"location": url, "sha256": digest, "bytes": (weights / "imagebind.pt").stat().st_size}
    assert files["student.clip.weights"]["sha256"] == sha256(weights / "clip.pt")
    assert manifest["encoders"]["teacher"]["weights"] == url and manifest["encoders"]["teacher"]["weights_sha256"] == digest
    assert file_server.requests == ["/imagebind.pt"]

    second = extract(few_videos, tmp_path / "second", tmp_path / "cache", local_clip, vggish, teacher)
    assert second.returncode == 0, second.stderr[-3000:]
    assert file_server.requests == ["/imagebind.pt"]  # the cache answered
    tars = sorted(p.name for p in (tmp_path / "first").glob("*.tar"))
    assert tars and all((tmp_path / "first" / n).read_bytes() == (tmp_path / "second" / n).read_bytes() for n in tars)

    wrong = "0" * 64
    refused = extract(few_videos, tmp_path / "third", tmp_path / "other-cache", local_clip, vggish,
                      f"teacher.imagebind.weights={file_server.url}/imagebind.pt#sha256={wrong}")
    assert refused.returncode == 2, refused.stderr[-3000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: teacher.imagebind.weights: ") and f"not the #sha256={wrong[:12]}" in lines[0]
    assert not [p for p in (tmp_path / "other-cache").rglob("imagebind.pt")]  # nothing kept
    assert not (tmp_path / "third" / "manifest.json").exists()

    missing = extract(few_videos, tmp_path / "missing", tmp_path / "cache", f"student.clip.weights=s3://{name}/encoders/nope.pt", vggish,
                      teacher, env=on_s3)
    assert missing.returncode == 2 and "student.clip.weights: s3://" in missing.stderr and "no such file there" in missing.stderr


def test_the_check_declares_each_file_by_where_it_lives(tmp_path, weights, few_videos):
    """A local file by its sha256 (it travels), a URL by itself (read where the job runs), a library's own download as such."""
    from jobs.contract import CheckReport

    report = tmp_path / "check.json"
    command = [sys.executable, "-m", "jobs.extract", "--videos", str(few_videos), "--check", "--check-report", str(report), *TINY_EXTRACT,
               f"student.clip.weights={weights / 'clip.pt'}", "teacher.imagebind.weights=https://example.org/imagebind.pt"]
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    inputs = CheckReport.read(report).inputs
    clip = inputs["student.clip.weights"]
    assert clip.kind == "file" and clip.sha256 == sha256(weights / "clip.pt")
    assert inputs["student.clip.architecture"].kind == "file"
    teacher = inputs["teacher.imagebind.weights"]
    assert teacher.kind == "located_file" and teacher.needs_internet and not teacher.library
    vggish = inputs["student.audio.vggish.weights"]
    assert vggish.kind == "located_file" and vggish.library and vggish.location.startswith("https://github.com/harritaylor/torchvggish")


def test_weights_a_library_downloads_are_hashed_where_the_library_keeps_them(tmp_path, monkeypatch):
    """An open_clip pretrained tag and torchvggish's release files are fetched by their libraries into their caches;
    the manifest records the sha256 of the very files those libraries read, as it does for a path or a URL."""
    import open_clip
    import torchvggish
    from open_clip import pretrained

    from model.encoders import ClipConfig, ClipImageEncoder, VGGishConfig, VGGishEncoder
    from model.text import ClipTextEncoder

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch hub's cache: <TORCH_HOME>/hub/checkpoints
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    vggish, pca = (hub / Path(url).name for url in (torchvggish.torchvggish.VGGISH_WEIGHTS, torchvggish.torchvggish.PCA_PARAMS))
    torch.save(torchvggish.VGG(torchvggish.make_layers(), postprocess=False).state_dict(), vggish)
    torch.save({"pca_eigen_vectors": torch.eye(128), "pca_means": torch.zeros(128, 1)}, pca)
    audio = VGGishEncoder(VGGishConfig(postprocess=True)).describe()
    assert (audio["weights_sha256"], audio["pca_weights_sha256"]) == (sha256(vggish), sha256(pca))

    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip keeps URL downloads in ~/.cache/clip
    open_clip.add_model_config(FIXTURES / "tiny_clip.json")
    tag = "streamapprox-test"  # open_clip keys its registry by the tag lower-cased, - as _
    monkeypatch.setitem(pretrained._PRETRAINED, "tiny_clip", {"streamapprox_test": pretrained._pcfg(url="https://weights.invalid/tiny_clip-a1.pt")})
    cached = tmp_path / ".cache" / "clip" / "tiny_clip-a1.pt"
    cached.parent.mkdir(parents=True)
    torch.save(open_clip.create_model("tiny_clip").state_dict(), cached)
    config = ClipConfig(model="tiny_clip", pretrained=tag)
    image, text = ClipImageEncoder(config).describe(), ClipTextEncoder(config).describe()
    assert image["pretrained"] == text["pretrained"] == tag and image["weights_sha256"] == text["weights_sha256"] == sha256(cached)
    assert ClipImageEncoder(config, random_init=True).describe()["weights_sha256"] is None
