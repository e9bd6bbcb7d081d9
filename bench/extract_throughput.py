"""Extraction throughput: the sequential path (decode, then encode, one video after the other) against the pipeline
(decode workers ahead of the encoders, encoders batched across videos), side by side in one run on the same videos.

    .venv/bin/python bench/extract_throughput.py [--videos 12] [--size 1280x720] [--seconds 12] [--teacher-frames 8]

The videos are synthetic (textured, moving, 25 fps, a keyframe every 10 s, 48 kHz stereo audio) so that decoding costs
what it costs on real footage; the encoders are the real architectures with random weights (the same cost): CLIP
ViT-B/32 for the student frames and a dense-CLIP teacher. Prints videos/s of each path, the share of the wall time the
encoders were busy, whether the shards are byte-identical, and on the last line the ratio with PASS or FAIL. Targets:
on a GPU, >= 3x with the encoders busy >= 80 %; on a CPU, where the extractor's default is no decode worker, the
pipeline (one worker unless --decode-workers says otherwise) must not beat that default by more than 10 % -- if it
does, the default is wrong for this machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.extract import default_batch, default_workers, run_worker, validate_extract_config  # noqa: E402

FPS, KEYFRAME_S, RATE = 25, 10, 48_000


def write_test_video(path: Path, seconds: float, width: int, height: int, seed: int) -> None:
    """Blocky texture panning under a moving bar: costly to decode like real footage, cheap to make."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 8 + 16, width // 8 + 16, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    t = np.arange(int(seconds * RATE)) / RATE
    audio = np.stack([0.3 * np.sin(2 * np.pi * (220 + 20 * seed) * t), 0.2 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS, options={"g": str(FPS * KEYFRAME_S), "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=RATE, layout="stereo")
        for i in range(int(seconds * FPS)):
            oy, ox = (3 * i) % 64, (5 * i) % 64
            image = np.ascontiguousarray(texture[oy:oy + height, ox:ox + width])
            image[:, (7 * i) % width: (7 * i) % width + 40] = 255
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        for offset in range(0, audio.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, offset:offset + 1024]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = RATE, offset
            container.mux(sound.encode(frame))
        container.mux(sound.encode())


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the decode workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def shard_digests(out: Path) -> list[str]:
    return [shard["sha256"] for shard in json.loads((out / "manifest.json").read_text())["shards"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the test videos")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--teacher-frames", type=int, default=8, help="frames the dense-CLIP teacher averages")
    parser.add_argument("--decode-workers", type=int, help="the pipeline's (default: the extractor's own on a GPU, 1 on a CPU)")
    parser.add_argument("--encode-batch", type=int, help="the pipeline's (default: the extractor's own default)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.decode_workers if args.decode_workers is not None else default_workers(device) if device.type == "cuda" else 1
    batch = default_batch(device) if args.encode_batch is None else args.encode_batch

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with open(root / "videos.csv", "w", newline="") as handle:
            rows = csv.writer(handle)
            rows.writerow(["id", "path", "split"])
            for i in range(args.videos):
                write_test_video(root / f"v{i:03d}.mp4", args.seconds, width, height, seed=i)
                rows.writerow([f"v{i:03d}", f"v{i:03d}.mp4", "train"])
        cfg = validate_extract_config({"input": {"videos": str(root / "videos.csv")}, "random_init": True,
                                       "samples_per_shard": max(args.videos // 3, 1),
                                       "teacher": {"kind": "dense_clip", "sampling": "uniform", "frames": args.teacher_frames}})
        results = {}
        for name, (w, b) in {"sequential": (0, 1), "pipeline": (workers, batch)}.items():
            before = cpu_seconds()
            summary, finished = run_worker(cfg, root / name, 0, 1, None, None, w, b)
            assert finished and summary["videos"] == args.videos, summary
            results[name] = {**summary, "cores": (cpu_seconds() - before) / summary["seconds"]}
        identical = shard_digests(root / "sequential") == shard_digests(root / "pipeline")

    print(f"{args.videos} videos {width}x{height}, {args.seconds:g} s, keyframe every {KEYFRAME_S} s; CLIP ViT-B/32 + dense-CLIP "
          f"teacher ({args.teacher_frames} frames), random weights; {device.type}, {torch.get_num_threads()} torch threads")
    print(f"{'path':<11} {'decode workers':>14} {'videos/call':>11} {'videos/s':>9} {'encoders busy':>13} {'CPU cores used':>14}")
    for name, (w, b) in {"sequential": (0, 1), "pipeline": (workers, batch)}.items():
        summary = results[name]
        print(f"{name:<11} {w:>14} {b:>11} {summary['videos'] / summary['extract_s']:>9.3f} {100 * summary['encoders_busy']:>12.0f}% "
              f"{summary['cores']:>14.2f}")
    ratio = results["sequential"]["extract_s"] / results["pipeline"]["extract_s"]
    busy = results["pipeline"]["encoders_busy"]
    print(f"shards byte-identical to the sequential path's: {identical}" + ("" if identical or batch == 1 else
          " (several videos per encoder call may change the last bit of a feature)"))
    passed = (ratio >= 3.0 and busy >= 0.8) if device.type == "cuda" else ratio <= 1.1
    passed = passed and (identical or batch > 1)
    target = ">= 3x, encoders busy >= 80 %" if device.type == "cuda" else "<= 1.1x: no decode worker, the CPU default, is as fast"
    print(f"pipeline / sequential: {ratio:.2f}x, encoders busy {100 * busy:.0f} % (target {target}; {device.type}): "
          f"{'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
