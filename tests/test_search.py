"""Search: index a shard set with a trained student, query it through the API and a real browser.

Rankings are checked against brute-force cosine search on vectors computed here independently
(the student run over the shards, the text towers rebuilt from the same seed), not read back from
the index. Text towers are random-init at tiny sizes: the results mean nothing, the plumbing does.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, TINY_EXTRACT, cli_env, launch, launch_command

SHARDS = "synthetic://msrvtt?train=300&val=60&test=100&samples_per_shard=64&clip_dim=32&teacher_dim=32"
TINY_TOWERS = ["clip.model=tiny_clip", f"clip.architecture={FIXTURES / 'tiny_clip.json'}",
               f"imagebind.architecture={FIXTURES / 'tiny_imagebind.json'}"]
STUDENT = ["train.epochs=3", "data.batch_size=64", "model.hidden=[64]", "model.clip_dim=32", "model.out_dim=32"]


def train(run_dir: Path, shards: str, *extra: str) -> Path:
    command = [sys.executable, "-m", "jobs.train_mlp", "--run-dir", str(run_dir), "--set", f"data.shards={shards}", *STUDENT, *extra]
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("student") / "run", SHARDS)


@pytest.fixture(scope="module")
def index(student, tmp_path_factory) -> Path:
    """Built through the launcher, as a user would."""
    root = tmp_path_factory.mktemp("index")
    result = launch("local", "index", "--run", str(student), "--shards", SHARDS, "--index", str(root / "index"), cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "8 shards indexed, 0 unchanged; 460 videos, 1380 frames" in result.stdout
    run = next((root / "runs").iterdir())
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["index"]["videos"] == 460
    assert f"launch serve --index {root / 'index'}" in result.stdout
    return root / "index"


def index_job(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.index", *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def snapshot(location: Path) -> dict:
    """What `launch serve` maps: the snapshot the job exported from its Qdrant collections."""
    from search.store import Snapshot

    opened = Snapshot.open(location)
    frames = {video_id: [(opened.frame_time(i), tuple(np.round(opened.clip[i], 5))) for i in range(*opened.frames(row).indices(len(opened.clip)))]
              for row, video_id in list(enumerate(opened.ids))[::50]}
    return {"ids": opened.ids, "student": np.asarray(opened.student), "teacher": np.asarray(opened.teacher), "frames": frames,
            "count": opened.count()}


def test_interrupted_index_resumes_and_an_unchanged_one_is_a_noop(student, index, tmp_path):
    from search.store import SearchIndexError

    target = tmp_path / "index"
    process = index_job("--run", str(student), "--shards", SHARDS, "--index", str(target))
    for line in process.stdout:
        if "indexed shard" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    with pytest.raises(SearchIndexError, match="no complete StreamApprox index"):  # a server refuses the half-built index
        snapshot(target)
    resumed = subprocess.run([sys.executable, "-m", "jobs.index", "--run", str(student), "--shards", SHARDS, "--index", str(target)],
                             env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = int(resumed.stdout.split(" shards indexed, ")[1].split(" unchanged")[0])
    assert 1 <= done < 8, resumed.stdout  # the killed run's committed shards were kept, the rest redone
    ours, reference = snapshot(target), snapshot(index)
    assert ours["ids"] == reference["ids"] and ours["count"] == reference["count"] == {"videos": 460, "frames": 1380}
    np.testing.assert_allclose(ours["student"], reference["student"], atol=1e-6)
    np.testing.assert_allclose(ours["teacher"], reference["teacher"], atol=1e-6)
    assert ours["frames"] == reference["frames"]
    again = subprocess.run([sys.executable, "-m", "jobs.index", "--run", str(student), "--shards", SHARDS, "--index", str(target)],
                           env=cli_env(), capture_output=True, text=True, timeout=300)
    assert "0 shards indexed, 8 unchanged" in again.stdout, again.stdout + again.stderr
    smaller = SHARDS.replace("train=300", "train=200")  # another shard set: one train shard fewer, the others changed
    changed = subprocess.run([sys.executable, "-m", "jobs.index", "--run", str(student), "--shards", smaller, "--index", str(target)],
                             env=cli_env(), capture_output=True, text=True, timeout=300)
    assert "removed shard train-000004.tar" in changed.stdout and "360 videos, 1080 frames" in changed.stdout, changed.stdout


FULL_DISK_DRIVER = r"""
import json, os, subprocess, sys
from pathlib import Path

from search.store import SearchIndexError, Snapshot

student, shards, index = sys.argv[1:4]
arrays = Path(index) / "arrays"  # where the job writes the search snapshot: a small tmpfs of this mount namespace's own
arrays.mkdir(parents=True)
job = [sys.executable, "-m", "jobs.index", "--run", student, "--shards", shards, "--index", index]


def mount(size, again=False):
    subprocess.run(["mount", "-t", "tmpfs", "-o", ("remount," if again else "") + f"size={size}", "tmpfs", str(arrays)], check=True)


def run():
    done = subprocess.run(job, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    files = sorted(str(p.relative_to(arrays)) + ("/" if p.is_dir() else "") for p in arrays.rglob("*"))
    try:
        opened = Snapshot.open(index)  # what `launch serve` maps
        served = {"ids": opened.ids, "count": opened.count(), "student": opened.student.tolist()}
    except SearchIndexError as exc:
        served = {"error": str(exc)}
    current = arrays / "streamapprox" / "CURRENT"
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "files": files, "served": served,
            "current": current.read_text() if current.exists() else None}


report = {}
try:
    mount("160k")  # holds the student and teacher arrays (2 x 15 pages), not the frames' (44 pages)
    report["first"] = run()
    mount("64m", again=True)
    report["freed"] = run()
    current = arrays / "streamapprox" / "CURRENT"
    pointer = json.loads(current.read_text())
    pointer["done"] = {}  # the snapshot no longer matches the index's shards, so the job rewrites it (see the test)
    current.write_text(json.dumps(pointer))
    used = os.statvfs(arrays)
    mount((used.f_blocks - used.f_bfree) * used.f_frsize + 160 * 1024, again=True)
    report["stale"] = {"current": current.read_text()}
    report["rewrite"] = run()
finally:
    subprocess.run(["umount", str(arrays)])
print(json.dumps(report))
"""


def test_a_full_disk_while_the_snapshot_is_written_is_one_line_and_leaves_the_current_one(student, tmp_path):
    """The real job, its snapshot folder (INDEX/arrays) on a small tmpfs in a mount namespace of its own, so the export
    runs out of space midway (the frame array). A first build: one line naming the file and what to do, exit 2, no
    snapshot current and no partial file; `launch serve`'s loader refuses in one line. Space freed, the same command
    writes just the snapshot. Then a rewrite over a current snapshot that fails the same way leaves that snapshot
    current, whole and servable.

    The job retracts the snapshot before it changes an index, so a rewrite with a snapshot still current happens only
    when the pointer disagrees with an unchanged index: the driver makes it so by editing the pointer's shard record."""
    driver = tmp_path / "driver.py"
    driver.write_text(FULL_DISK_DRIVER)
    index = tmp_path / "index"
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, str(driver), str(student), SHARDS, str(index)],
                          env=cli_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    arrays = index / "arrays" / "streamapprox"

    first = report["first"]
    assert first["rc"] == 2 and "Traceback" not in first["stderr"] + first["stdout"], first["stderr"][-3000:]
    line = first["stderr"].strip()
    assert "\n" not in line and line.startswith(f"error: {arrays}/") and "/clip.npy: No space left on device (errno 28); free space there, " \
        "then rerun the same index command: the shards already indexed are kept; no search snapshot is current until then" in line, line
    assert first["files"] == ["streamapprox/"] and first["current"] is None  # nothing half-written, no temp file
    assert first["served"]["error"].startswith(f"{index}: no complete StreamApprox index named 'streamapprox' there")

    freed = report["freed"]
    assert freed["rc"] == 0 and "0 shards indexed, 8 unchanged; 460 videos, 1380 frames" in freed["stdout"], freed["stderr"][-3000:]
    generation = json.loads(freed["current"])["generation"]
    assert freed["served"]["count"] == {"videos": 460, "frames": 1380}
    assert sorted(freed["files"]) == sorted(["streamapprox/", "streamapprox/CURRENT", f"streamapprox/{generation}/"]
                                            + [f"streamapprox/{generation}/{name}" for name in (
                                                "clip.npy", "frame_numbers.npy", "frame_times.npy", "offsets.npy", "state.json",
                                                "student.npy", "teacher.npy", "videos.json")])

    rewrite = report["rewrite"]
    line = rewrite["stderr"].strip()
    assert rewrite["rc"] == 2 and "\n" not in line and "Traceback" not in rewrite["stdout"], rewrite["stderr"][-3000:]
    assert line.startswith(f"error: {arrays}/") and "/clip.npy: No space left on device (errno 28)" in line
    assert line.endswith("the shards already indexed are kept; `launch serve` reads the previous snapshot until then"), line
    assert f"/{generation}/" not in line  # a new generation was being written...
    assert rewrite["current"] == report["stale"]["current"]  # ...and the pointer was not replaced
    assert rewrite["files"] == freed["files"]  # the previous snapshot whole, the new folder and its temp files gone
    assert rewrite["served"] == freed["served"]  # and servable, as before


def brute_force_inputs(student_run: Path, shards: str = SHARDS):
    """Everything the index should hold, computed without it: student vectors, teacher vectors, frame vectors."""
    from data_shards import open_shards
    from data_shards.reader import read_shard
    from jobs.evaluate import load_student

    model, _, _ = load_student(student_run / "checkpoints" / "best.pt")
    shard_set = open_shards(shards)
    ids, student, teacher, frames = [], [], [], {}
    for entry in shard_set.manifest.shards:
        samples = read_shard(shard_set, entry)
        batch = {"clip": torch.from_numpy(np.stack([s.clip for s in samples])).float(),
                 "audio": torch.from_numpy(np.stack([s.audio for s in samples])).float(),
                 "has_audio": torch.tensor([s.has_audio for s in samples])}
        with torch.no_grad():
            student.append(model(batch).numpy())
        teacher.append(np.stack([s.teacher for s in samples]))
        ids += [s.meta["video_id"] for s in samples]
        frames.update({s.meta["video_id"]: (s.clip.astype(np.float32), s.meta["frame_times_s"]) for s in samples})

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return ids, unit(np.concatenate(student)), unit(np.concatenate(teacher)), frames


def test_api_rankings_equal_brute_force_and_bad_requests_get_4xx(student, index, tmp_path):
    from fastapi.testclient import TestClient

    from model.text import QueryEncoders, QueryEncodersConfig
    from search.app import create_app
    from search.serve import build_engine, parse_args

    engine = build_engine(parse_args(["--index", str(index), "--random-init", "--set", *TINY_TOWERS]))
    client = TestClient(create_app(engine))
    ids, student_vectors, teacher_vectors, frames = brute_force_inputs(student)
    towers = QueryEncoders(QueryEncodersConfig.model_validate(
        {"random_init": True, "clip": {"model": "tiny_clip", "architecture": str(FIXTURES / "tiny_clip.json")},
         "imagebind": {"architecture": str(FIXTURES / "tiny_imagebind.json")}}))
    try:
        for text in ["a dog runs on the beach", "cooking pasta", "guitar solo"]:
            for space, vectors in (("student", student_vectors), ("teacher", teacher_vectors)):
                body = client.get("/search", params={"q": text, "k": 7, "frames": 2, "space": space}).json()
                scores = vectors @ towers.videos.encode([text])[0]
                expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:7]]
                assert [r["video_id"] for r in body["results"]] == expected
                np.testing.assert_allclose([r["score"] for r in body["results"]], np.sort(scores)[::-1][:7], atol=1e-5)
            first = body["results"][0]
            clip, times = frames[first["video_id"]]
            frame_scores = (clip / np.linalg.norm(clip, axis=1, keepdims=True)) @ towers.frames.encode([text])[0]
            assert [f["t"] for f in first["frames"]] == [times[i] for i in np.argsort(-frame_scores)[:2]]
        query = ids[17]
        body = client.get("/search", params={"video": query, "k": 5}).json()
        scores = student_vectors @ student_vectors[17]
        scores[17] = -np.inf
        assert [r["video_id"] for r in body["results"]] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        assert query not in [r["video_id"] for r in body["results"]]

        described = client.get(f"/videos/{query}").json()
        assert [f["t"] for f in described["frames"]] == frames[query][1] and described["split"] in ("train", "val", "test")
        assert client.get("/health").json()["videos"] == 460
        assert "/search" in client.get("/openapi.json").json()["paths"]

        bad = {"empty": ({"q": "  "}, 422, "empty query"), "no query": ({}, 422, "empty query"),
               "k low": ({"q": "x", "k": 0}, 422, "greater than or equal to 1"),
               "k high": ({"q": "x", "k": 101}, 422, "less than or equal to 100"),
               "both": ({"q": "x", "video": query}, 422, "not both"), "unknown video": ({"video": "nope"}, 404, "not in the index"),
               "space": ({"q": "x", "space": "dense"}, 422, "space='dense'")}
        for name, (params, status, message) in bad.items():
            response = client.get("/search", params=params)
            assert response.status_code == status and message in json.dumps(response.json()), (name, response.text)
        missing = client.get(f"/videos/{query}/frame", params={"t": 1.0})
        assert missing.status_code == 404 and "source file is not on this machine" in missing.json()["detail"]
        metrics = client.get("/metrics").text
        assert 'streamapprox_requests_total{method="GET",route="/search",status="422"} 6.0' in metrics
        assert 'streamapprox_request_seconds_count{route="/search"}' in metrics
    finally:
        engine.index.close()

    from data_shards.synthetic_videos import write_synthetic_video

    (tmp_path / "videos").mkdir()
    write_synthetic_video(tmp_path / "videos" / f"{query}.mp4", seconds=2.0, seed=0)  # the video found on this machine
    engine = build_engine(parse_args(["--index", str(index), "--no-text", "--videos", str(tmp_path / "videos")]))
    try:  # no text towers: video queries and thumbnails still work, text queries are refused with the reason
        client = TestClient(create_app(engine))
        thumbnail = client.get(f"/videos/{query}/frame", params={"t": 1.0})
        assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
        assert [r["video_id"] for r in client.get("/search", params={"video": query, "k": 5}).json()["results"]] == \
            [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        refused = client.get("/search", params={"q": "a dog"})
        assert refused.status_code == 400 and "--no-text" in refused.json()["detail"] and client.get("/health").json()["text"] is False
    finally:
        engine.index.close()


def test_index_refuses_another_student_and_the_service_refuses_what_does_not_fit(student, index, tmp_path):
    from model.encoders import EncoderError
    from search.serve import build_engine, parse_args
    from search.store import SearchIndexError

    target = tmp_path / "index"
    shutil.copytree(index, target)
    other = ["--run", str(student), "--checkpoint", "last", "--shards", SHARDS, "--index", str(target)]  # another student
    refused = subprocess.run([sys.executable, "-m", "jobs.index", *other], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "built with another student" in refused.stderr and "--rebuild" in refused.stderr
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({**json.loads((FIXTURES / "tiny_imagebind.json").read_text()), "out_embed_dim": 16}))
    with pytest.raises(EncoderError, match="outputs 16 dims but the index's video vectors have 32"):
        build_engine(parse_args(["--index", str(target), "--random-init", "--set", *TINY_TOWERS[:2], f"imagebind.architecture={narrow}"]))
    with pytest.raises(SearchIndexError, match="no index there"):
        build_engine(parse_args(["--index", str(tmp_path / "nowhere")]))
    absent = subprocess.run(launch_command("serve", "--index", str(tmp_path / "nowhere")), env=cli_env(), capture_output=True, text=True,
                            timeout=60)
    assert absent.returncode == 2 and "no index there" in absent.stderr
    rebuilt = subprocess.run([sys.executable, "-m", "jobs.index", *other, "--rebuild"], env=cli_env(), capture_output=True, text=True,
                             timeout=300)
    assert rebuilt.returncode == 0 and "8 shards indexed, 0 unchanged" in rebuilt.stdout, rebuilt.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the service exited ({process.returncode}): {process.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "health", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up in {timeout} s")


def test_extracted_videos_searched_in_a_real_browser(tmp_path):
    """Tiny random-init extraction -> trained student -> index with thumbnails -> `launch serve` -> chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (./setup.sh --dev installs it)")
    from data_shards.synthetic_videos import write_synthetic_video
    from model.text import QueryEncoders
    from search.query import encoders_config

    videos = tmp_path / "videos"
    for seed, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        (videos / split).mkdir(parents=True, exist_ok=True)
        write_synthetic_video(videos / split / f"{split}{seed}.mp4", seconds=2.5, seed=seed)
    shards = tmp_path / "shards"
    extract = subprocess.run([sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(shards), "--random-init",
                              *TINY_EXTRACT], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert extract.returncode == 0, extract.stderr[-3000:]
    dims = json.loads((shards / "manifest.json").read_text())["dims"]
    run = train(tmp_path / "run", str(shards), "data.batch_size=2", "data.eval_batch_size=2", f"model.frames={dims['frames']}",
                f"model.audio_dim={dims['audio']}")
    built = launch("local", "index", "--run", str(run), "--shards", str(shards), "--index", str(tmp_path / "index"), cwd=tmp_path)
    assert built.returncode == 0 and "8 videos, 24 frames" in built.stdout, built.stdout[-2000:] + built.stderr[-2000:]

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    service = subprocess.Popen(launch_command("serve", "--index", str(tmp_path / "index"), "--port", str(port)), env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_ready(url, service)
        health = json.loads(urllib.request.urlopen(url + "health", timeout=10).read())
        assert health["random_init"] and health["shards_random_init"]  # taken from the extraction's record, and said so
        body = json.loads(urllib.request.urlopen(url + "search?q=a+red+circle+moving&k=5", timeout=30).read())
        ids, student_vectors, _, _ = brute_force_inputs(run, str(shards))
        towers = QueryEncoders(encoders_config({"shards": {"encoders_config": json.loads((shards / "manifest.json").read_text())
                                                           ["source"]["encoders_config"]}}, {"random_init": True}))
        scores = student_vectors @ towers.videos.encode(["a red circle moving"])[0]
        assert [r["video_id"] for r in body["results"]] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        with urllib.request.urlopen(url + "videos/test6/frame?t=1.2", timeout=30) as response:
            assert response.headers["content-type"] == "image/jpeg" and response.read()[:2] == b"\xff\xd8"
        page = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                               "--dump-dom", url + "?q=a+red+circle+moving&k=5"], capture_output=True, text=True, timeout=120)
        dom = page.stdout
        assert dom.count('class="result"') == 5, dom[-3000:]
        assert dom.count('<img src="videos/') >= 5 and 'class="timestamp">0:0' in dom
        assert "RANDOM-INIT" in dom and '5 videos for "a red circle moving"' in dom
        metrics = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
        assert 'route="/videos/{video_id}/frame",status="200"' in metrics  # the browser fetched the thumbnails
    finally:
        os.killpg(service.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the launcher and the service
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
    evaluated = launch("local", "evaluate-search", "--index", str(tmp_path / "index"), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads((tmp_path / "index" / "search_eval.json").read_text())
    assert result["videos"] == 8 and result["video_to_video"]["queries"] == 8 and result["text_to_video"]["queries"] == 20


def test_text_towers_follow_the_extraction_record():
    """An ImageBind teacher's index is queried through ImageBind's text tower, a dense-CLIP teacher's through its CLIP."""
    from model.text import QueryEncoders
    from search.query import encoders_config

    tiny_clip = {"model": "tiny_clip", "architecture": str(FIXTURES / "tiny_clip.json")}
    imagebind = {"teacher": {"kind": "imagebind", "imagebind": {"architecture": str(FIXTURES / "tiny_imagebind.json")}},
                 "student": {"clip": tiny_clip}}
    towers = QueryEncoders(encoders_config({"shards": {"encoders_config": imagebind, "encoders": {"random_init": True}}}, {}))
    assert towers.config.random_init and towers.describe()["videos"]["tower"] == "imagebind.text"
    same = {"teacher": {"kind": "dense_clip"}, "student": {"clip": tiny_clip}}
    towers = QueryEncoders(encoders_config({"shards": {"encoders_config": same}}, {"random_init": True}))
    assert towers.videos is towers.frames and towers.describe()["videos"]["tower"] == "open_clip.text"
    own = {"teacher": {"kind": "dense_clip", "clip": {**tiny_clip, "pretrained": "laion2b_s34b_b79k"}}, "student": {"clip": tiny_clip}}
    towers = QueryEncoders(encoders_config({"shards": {"encoders_config": own}}, {"random_init": True, "seed": 1}))
    assert towers.videos is not towers.frames and towers.videos.config.pretrained == "laion2b_s34b_b79k"


def test_sigterm_to_launch_serve_ends_the_service_and_frees_its_port(index, tmp_path):
    import signal
    import socket

    import psutil

    port = free_port()
    launcher = subprocess.Popen(launch_command("serve", "--index", str(index), "--no-text", "--port", str(port)), env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/", launcher)
        service = psutil.Process(launcher.pid).children(recursive=True)
        assert service
        launcher.send_signal(signal.SIGTERM)  # to the launcher alone, as a process manager would send it
        launcher.wait(timeout=60)
        assert not psutil.wait_procs(service, timeout=30)[1]  # the service went with it
    finally:
        launcher.kill()
    with socket.socket() as probe:  # nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
