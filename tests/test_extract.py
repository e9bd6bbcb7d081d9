"""Feature extraction from videos the tests write with PyAV (moving shapes with a tone; one without an
audio stream, one with an all-zero track, one corrupt, one too short), through the real job with the
real encoder architectures at tiny sizes and seeded random weights."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, TINY_EXTRACT as TINY, cli_env, launch, only_run, tiny_encoder_weights

GOOD = [("clip00", "train"), ("clip01", "train"), ("clip02", "train"), ("clip03", "train"), ("clip04", "val"),
        ("clip05", "val"), ("clip06", "test"), ("clip07", "test"), ("clip08", "test")]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from data_shards.synthetic_videos import FPS, moving_shapes, write_synthetic_video
    from data_shards.video import write_video

    root = tmp_path_factory.mktemp("videos")
    rows = []
    for seed, (video_id, split) in enumerate(GOOD):
        write_synthetic_video(root / f"{video_id}.mp4", seconds=2.5, seed=seed)
        rows.append((video_id, f"{video_id}.mp4", split))
    write_synthetic_video(root / "no_audio.mp4", seconds=2.5, seed=20, silent=True)
    write_video(root / "zero_audio.mp4", moving_shapes(2.5, seed=21), FPS, np.zeros(40_000, np.float32))
    write_synthetic_video(root / "short.mp4", seconds=0.15, seed=22)  # 2 frames: the 3-frame scheme needs 4
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    rows += [("no_audio", "no_audio.mp4", "train"), ("zero_audio", "zero_audio.mp4", "val"),
             ("short", "short.mp4", "train"), ("corrupt", "corrupt.mp4", "test")]
    with open(root / "videos.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "split"])
        writer.writerows(rows)
    return root / "videos.csv"


def extract_command(videos: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(out), "--random-init", *TINY, *extra]


def extract(videos: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(extract_command(videos, out, *extra), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> Path:
    """The job run sequentially (each video decoded, then encoded, in turn): its manifest and ledger are what every
    other way of running the job must reproduce; its shards are checked against ``plain``."""
    out = tmp_path_factory.mktemp("reference") / "shards"
    extract(videos, out, "--decode-workers", "0")
    return out


@pytest.fixture(scope="module")
def plain(videos, tmp_path_factory) -> Path:
    """The independent byte reference, written here without the extraction job: each video decoded whole with PyAV
    (frame i is the i-th decoded frame), the frames that the student's sampler and the teacher's own ``frame_groups``
    ask for handed to the library's encoders and the teacher's own ``embed``, one video at a time, and written with the
    library's shard writer (shards of 3, the tar times the job fixes). One math thread, as the job runs under cli_env.
    No pipeline, DataLoader, decode worker or batch."""
    import av
    import torch

    from data_shards.ledger import FIXED_MTIME
    from data_shards.sampling import sample_frames, video_rng
    from data_shards.schema import Dims
    from data_shards.sources import list_videos
    from data_shards.video import DecodeError, decode_audio, probe
    from data_shards.writer import ShardSetWriter
    from model.encoders import ClipConfig, ClipImageEncoder, VGGishConfig, VGGishEncoder
    from model.teachers import TeacherConfig, build_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clip = ClipImageEncoder(ClipConfig(model="tiny_clip", architecture=str(FIXTURES / "tiny_clip.json")), random_init=True)
        vggish = VGGishEncoder(VGGishConfig(), random_init=True)
        teacher = build_teacher(TeacherConfig(imagebind={"architecture": str(FIXTURES / "tiny_imagebind.json")}), clip, True,
                                torch.device("cpu"))
        out = tmp_path_factory.mktemp("plain") / "shards"
        failed = []
        with ShardSetWriter(out, Dims(frames=3, clip=clip.dim, audio=128, teacher=teacher.dim), samples_per_shard=3,
                            mtime=FIXED_MTIME, source={"failures": failed}) as writer:
            for entry in list_videos(str(videos)):
                try:
                    info = probe(entry.path)
                    rng = video_rng(0, entry.video_id)
                    student_groups = sample_frames("original", info.frame_count, 3, rng)
                    teacher_groups = teacher.inputs.frame_groups(info, rng)
                except (DecodeError, ValueError):  # corrupt; too short for the student's 3 frames
                    failed.append({"video_id": entry.video_id, "split": entry.split})
                    continue
                with av.open(entry.path) as container:
                    decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
                assert all(len(group) == 1 for group in student_groups + teacher_groups)  # no mean frames in this config
                student_frames, teacher_frames = ([decoded[min(group[0], len(decoded) - 1)] for group in groups]  # past the end: the last
                                                  for groups in (student_groups, teacher_groups))
                audio = decode_audio(entry.path)
                sound, status = None, "no audio stream" if audio is None else "silent: every sample is zero"
                if audio is not None and audio.samples.any():
                    try:
                        sound, status = vggish.encode(audio.segment(3.0, "middle")).mean(0), "ok"
                    except ValueError as exc:  # not one whole VGGish example
                        status = f"audio too short: {exc}"
                heard = teacher.inputs.audio_status(audio)  # the teacher's own rule for what it hears
                meta = {"video_id": entry.video_id, "split": entry.split, "has_audio": sound is not None, "audio_status": status,
                        "duration_s": round(info.duration_s, 4),
                        "frame_times_s": [round(group[0] / info.fps, 4) for group in student_groups],
                        "sampling": "original", "teacher_sampling": "imagebind"}
                if heard != status:
                    meta["teacher_audio_status"] = heard
                writer.write(entry.split, entry.video_id, clip.encode(student_frames), np.zeros(128, np.float32) if sound is None else sound,
                             teacher.embed(teacher_frames, audio if heard == "ok" else None), meta)
    finally:
        torch.set_num_threads(threads)
    assert [f["video_id"] for f in failed] == ["short", "corrupt"]
    return out


def test_the_job_writes_what_a_plain_decode_then_encode_writes(reference, plain):
    """The sequential job's shards are the independent reference's, byte for byte, and its manifest lists them."""
    from data_shards import open_shards

    assert shard_bytes(reference) == shard_bytes(plain)
    job, written = open_shards(reference).manifest, open_shards(plain).manifest
    assert sorted(job.shards, key=lambda e: e.name) == written.shards and job.dims == written.dims and job.splits == written.splits


def test_shards_validate_and_account_for_every_video(videos, reference):
    from data_shards.cli import validate
    from data_shards import load_split, open_shards

    summary = validate(str(reference))
    assert "RANDOM-INIT" in summary and "2 videos failed" in summary
    shards = open_shards(reference)
    source, encoders = shards.manifest.source, shards.manifest.encoders
    assert source["complete"] and source["plan"]["videos"] == 13 and encoders["random_init"] is True
    assert encoders["teacher"]["kind"] == "imagebind" and encoders["audio"]["postprocess"] == "raw"
    reasons = {f["video_id"]: f["reason"] for f in source["failures"]}
    assert set(reasons) == {"corrupt", "short"}
    assert reasons["corrupt"].startswith("cannot open") and "needs 4" in reasons["short"]
    by_key = {}
    for split in ("train", "val", "test"):
        tensors = load_split(shards, split)
        by_key.update({key: (bool(tensors.has_audio[i]), tensors.audio[i], tensors.teacher[i]) for i, key in enumerate(tensors.keys)})
    assert sorted(by_key) == sorted([v for v, _ in GOOD] + ["no_audio", "zero_audio"])
    for silent in ("no_audio", "zero_audio"):
        has_audio, audio, teacher = by_key[silent]
        assert not has_audio and not audio.any()
    assert all(by_key[v][0] and by_key[v][1].any() for v, _ in GOOD)  # a real tone never becomes zeros
    assert source["silent"] == 2
    meta = json.loads(next(line for line in _metas(reference) if '"no_audio"' in line))
    assert meta["audio_status"] == "no audio stream" and len(meta["frame_times_s"]) == 3 and meta["sampling"] == "original"

    check = subprocess.run([sys.executable, "-m", "jobs.train_mlp", "--check", "--set", f"data.shards={reference}",
                            "model.clip_dim=32", "model.out_dim=32", "data.batch_size=4"], env=cli_env(), capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0 and "RANDOM-INIT" in check.stderr, check.stdout + check.stderr


def _metas(root: Path) -> list[str]:
    import tarfile

    lines = []
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as handle:
            lines += [handle.extractfile(m).read().decode() for m in handle.getmembers() if m.name.endswith("meta.json")]
    return lines


def test_the_pipeline_writes_the_sequential_shards(videos, reference, plain, tmp_path):
    """Decode workers ahead of the encoders change nothing in the bytes; several videos per encoder call change at
    most the features' last bits (the same samples, failures and order)."""
    from data_shards import open_shards

    pipelined = extract(videos, tmp_path / "pipelined", "--decode-workers", "2")
    assert "2 decode workers, 1 videos per encoder call" in pipelined.stdout and "encoders busy" in pipelined.stdout
    assert shard_bytes(tmp_path / "pipelined") == shard_bytes(plain)
    assert (tmp_path / "pipelined" / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    extract(videos, tmp_path / "batched", "--decode-workers", "2", "--encode-batch", "4")
    assert_same_samples(open_shards(tmp_path / "batched"), open_shards(plain))


def test_sigkill_midway_then_rerun_gives_identical_shards(videos, reference, plain, tmp_path):
    """The pipeline (a decode worker ahead of the encoders) killed midway, rerun: the plain reference's shard bytes and the
    sequential job's manifest."""
    out = tmp_path / "shards"
    process = subprocess.Popen(extract_command(videos, out, "--decode-workers", "1"), env=cli_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not list((out / ".ledger").glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done = len(list((out / ".ledger").glob("*.json")))
    assert 1 <= done < 5 and not (out / "manifest.json").exists(), f"{done} shards finished before the kill"
    rerun = extract(videos, out)
    assert f"{5 - done} of its 5 shards to do" in rerun.stdout
    assert shard_bytes(out) == shard_bytes(plain)
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert not list(out.glob(".*.partial"))


def assert_same_samples(a, b) -> None:
    import torch

    from data_shards import load_split

    failed = lambda shards: sorted((f["video_id"], f["split"]) for f in shards.manifest.source["failures"])  # noqa: E731
    assert a.manifest.splits == b.manifest.splits and failed(a) == failed(b)
    for split in b.manifest.splits:
        x, y = load_split(a, split), load_split(b, split)
        assert x.keys == y.keys and torch.equal(x.has_audio, y.has_audio)
        for field in ("clip", "audio", "teacher"):
            assert torch.allclose(getattr(x, field).float(), getattr(y, field).float(), atol=2e-3, rtol=1e-2), (split, field)


def test_workers_together_or_apart_make_the_single_worker_set(videos, reference, plain, tmp_path):
    from data_shards.errors import ShardError
    from data_shards.merge import merge_shard_sets
    from data_shards import open_shards

    # ranks under accelerate launch share one directory; the last one to finish writes the manifest. Each rank starts
    # a decode worker of its own, as on a GPU node (a fresh process, from a job that accelerate's runner started)
    result = launch("local", "extract", "--accelerate-config", "cpu_ddp2", "--videos", str(videos), "--random-init", *TINY,
                    "--decode-workers", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "worker 0/2:" in result.stdout and "worker 1/2:" in result.stdout, "each rank must take its own half of the shards"
    assert result.stdout.count("1 decode workers") == 2
    run = only_run(tmp_path)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert_same_samples(open_shards(run / "shards"), open_shards(plain))  # one thread per rank: float sums may differ by an ulp
    # independent workers writing apart (kernels, nodes): slices that only a merge makes whole
    parts = [tmp_path / f"part{i}" for i in range(2)]
    workers = [subprocess.Popen(extract_command(videos, part, "--num-shards", "2", "--shard-index", str(i)), env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i, part in enumerate(parts)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0 and "other shards pending" in output, output[-3000:]
    with pytest.raises(ShardError, match="unfinished extraction"):
        open_shards(parts[0])
    with pytest.raises(ShardError, match="missing videos"):
        merge_shard_sets([parts[0]], tmp_path / "merged")
    shutil.copytree(parts[0], tmp_path / "copy")
    with pytest.raises(ShardError, match="duplicated"):
        merge_shard_sets([parts[0], tmp_path / "copy", parts[1]], tmp_path / "merged")
    merged = merge_shard_sets(parts, tmp_path / "merged")
    assert merged.source["complete"] and shard_bytes(tmp_path / "merged") == shard_bytes(plain)
    assert merged.source["failures"] == open_shards(reference).manifest.source["failures"]


def test_weights_load_from_files_and_are_recorded(tmp_path):
    """No --random-init: every encoder loads a checkpoint file (made here), and the manifest names them."""
    from data_shards.synthetic_videos import write_collection

    videos = write_collection(tmp_path / "videos", 2, seconds=2.0)  # what is checked is the manifest, not the features
    weights = [f"{key}={path}" for key, path in tiny_encoder_weights(tmp_path).items()]
    command = [sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(tmp_path / "out"), *TINY, "precision=bf16",
               *weights]  # bf16 autocast (what GPUs without fp32 speed use) runs on CPU too

    missing = subprocess.run([*command[:-1], f"teacher.imagebind.weights={tmp_path / 'nope.pth'}"], env=cli_env(),
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and f"teacher.imagebind.weights: {tmp_path / 'nope.pth'}: file not found" in missing.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()
    result = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    encoders = json.loads((tmp_path / "out" / "manifest.json").read_text())["encoders"]
    assert encoders["random_init"] is False and "RANDOM-INIT" not in result.stdout and encoders["precision"] == "bf16"
    clip_sha = encoders["clip"]["weights_sha256"]
    assert encoders["clip"]["pretrained"] == f"sha256:{clip_sha}" and len(clip_sha) == 64  # a path differs from machine to machine
    files = json.loads((tmp_path / "out" / "manifest.json").read_text())["source"]["files"]
    assert files["teacher.imagebind.weights"]["location"] == str(tmp_path / "imagebind.pt") and encoders["audio"]["weights_sha256"]
    size = (tmp_path / "clip.pt").stat().st_size
    assert files["student.clip.weights"] == {"location": str(tmp_path / "clip.pt"), "sha256": clip_sha, "bytes": size}


def test_frame_sampling_strategies():
    from data_shards.sampling import STRATEGIES, TooShort, sample_frames, video_rng

    for name in STRATEGIES:
        groups = sample_frames(name, 40, 3, video_rng(0, "a"))
        assert len(groups) == 3 and all(0 <= i < 40 for g in groups for i in g)
        assert groups == sample_frames(name, 40, 3, video_rng(0, "a"))  # seeded by the video, not the worker
    assert sample_frames("original", 40, 3, None) == [[1], [20], [38]]
    assert sample_frames("keyframes", 40, 3, None) == [[0], [20], [39]]
    assert sample_frames("uniform", 30, 3, None) == [[5], [15], [25]]
    mean = sample_frames("mean", 40, 2, None)
    assert len(mean[0]) == 8 and max(mean[0]) < 20 <= min(mean[1])
    weighted = [i for _ in range(200) for [i] in sample_frames("weighted", 40, 1, video_rng(_, "v"))]
    assert np.mean(weighted) > 24  # later frames favoured (uniform would average 19.5)
    kept = sample_frames("dropout", 100, 70, video_rng(0, "v"))
    assert len({i for [i] in kept}) == 70
    with pytest.raises(TooShort, match="needs 4"):
        sample_frames("original", 3, 3, None)
    with pytest.raises(ValueError, match="gives 3 frames"):
        sample_frames("keyframes", 40, 5, None)


def test_seeking_decoder_matches_a_full_decode(tmp_path):
    import av

    from data_shards.synthetic_videos import write_synthetic_video
    from data_shards.video import decode_audio, decode_frames, probe

    path = write_synthetic_video(tmp_path / "v.mp4", seconds=5.0, seed=3)
    with av.open(str(path)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    info = probe(path)
    assert info.frame_count == len(every) == 80 and info.has_audio_stream
    wanted = [0, 1, 40, 41, 79, 7, 63]
    found = decode_frames(info, wanted, seek_gap=4)
    assert all(np.array_equal(found[i], every[i]) for i in wanted)
    audio = decode_audio(path)
    assert audio.samples.dtype == np.float32 and audio.samples.shape[0] == 1 and audio.rate == 16_000
    assert abs(audio.seconds - 5.0) < 0.1 and 0.2 < np.abs(audio.samples).max() < 0.4


def test_bad_inputs_are_named(tmp_path, videos):
    from data_shards.errors import ShardError
    from data_shards.sources import MSRVTT_TEST, MSRVTT_TRAIN, list_videos

    (tmp_path / "bad.csv").write_text("name,file\na,a.mp4\n")
    with pytest.raises(ShardError, match=r"bad.csv line 2: needs 'id'"):
        list_videos(str(tmp_path / "bad.csv"))
    (tmp_path / "twice.csv").write_text("id,path\na,a.mp4\na,b.mp4\n")
    with pytest.raises(ShardError, match="'a' listed twice"):
        list_videos(str(tmp_path / "twice.csv"))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / MSRVTT_TRAIN).write_text("video_id\n" + "\n".join(f"video{i}" for i in range(10)) + "\n")
    (splits / MSRVTT_TEST).write_text("key,vid_key,video_id,sentence\nret0,msr9000,video9000,a man\n")
    entries = list_videos(str(videos.parent), str(splits))
    counts = {s: sum(e.split == s for e in entries) for s in ("train", "val", "test")}
    assert counts == {"train": 0, "val": 10, "test": 1}  # val carves up to 500 out of the train 7k
    bad = subprocess.run([sys.executable, "-m", "jobs.extract", "--videos", str(videos), "--out", str(tmp_path / "o"),
                          "--set", "student.sampling=sparse", "student.clip.modle=x"], env=cli_env(), capture_output=True, text=True)
    assert bad.returncode == 2 and "student.clip.modle: unknown config key (did you mean model?)" in bad.stderr


def test_teacher_targets_are_unit_vectors_fused_only_with_real_audio():
    from data_shards.video import Audio

    import torch

    from data_shards.synthetic_videos import moving_shapes, tone
    from model.encoders import ClipConfig, ClipImageEncoder
    from model.teachers import TeacherConfig, build_teacher

    clip = ClipImageEncoder(ClipConfig(model="tiny_clip", architecture=str(FIXTURES / "tiny_clip.json")), random_init=True)
    frames = list(moving_shapes(2.0, seed=1)[:10])
    dense = build_teacher(TeacherConfig(kind="dense_clip", sampling="uniform", frames=10), clip, True, torch.device("cpu"))
    expected = torch.nn.functional.normalize(torch.from_numpy(clip.encode(frames)).mean(0), dim=0)
    assert torch.allclose(torch.from_numpy(dense.embed(frames, None)), expected, atol=1e-6)

    config = TeacherConfig(imagebind={"architecture": str(FIXTURES / "tiny_imagebind.json")})
    imagebind = build_teacher(config, clip, True, torch.device("cpu"))
    waveform = tone(3.0)
    fused, vision_only = imagebind.embed(frames, Audio(waveform[None], 16_000)), imagebind.embed(frames, None)
    from model.imagebind_inputs import audio_clips, vision_views

    clips = torch.from_numpy(np.stack(frames)).reshape(5, 2, *frames[0].shape)
    with torch.inference_mode():
        out = imagebind.model({"vision": vision_views(clips)[None], "audio": audio_clips(torch.from_numpy(waveform))[None]})
    v, a = (torch.nn.functional.normalize(out[m][0].double(), dim=0) for m in ("vision", "audio"))
    assert np.allclose(fused, torch.nn.functional.normalize((v + a) / 2, dim=0).numpy(), atol=1e-5)
    assert np.allclose(vision_only, v.numpy(), atol=1e-5)
    assert abs(np.linalg.norm(fused) - 1) < 1e-5 and abs(np.linalg.norm(vision_only) - 1) < 1e-5


def test_vggish_example_count_is_torchvggish_framing():
    import numpy as np
    import torchvggish

    from model.encoders import vggish_examples

    for seconds in (0.96, 0.975, 1.5, 2.88, 2.895, 3.0, 4.8, 10.0):
        assert vggish_examples(seconds) == torchvggish.waveform_to_examples(np.zeros(int(seconds * 16_000)), 16_000).shape[0], seconds
    assert vggish_examples(2.88) == 2 and vggish_examples(3.0) == 3  # why the default segment is 3 s, not 3 x 0.96
