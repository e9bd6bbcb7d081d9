"""What one video costs: the student's sparse inputs against the dense teacher, measured side by side.

    .venv/bin/python bench/extract.py [--seconds 10] [--size 320x240] [--repeats 5] [--teacher-repeats 1]
                                      [--clip-model ViT-B-32 --clip-architecture JSON] [--imagebind-architecture huge|JSON]

Student inputs: probe + seek-decode the 3 sampled frames + CLIP ViT-B/32 on them, and decode the audio
+ VGGish on its 3 s segment (3 examples). Teacher: decode ImageBind's 10 frames + ImageBind-huge's vision tower
on its 15 views (5 clips x 2 frames x 3 crops) and audio tower on 3 x 2 s clips. Real architectures
with random weights (random weights cost the same). FLOPs are counted by torch's flop counter
(FLOPs = 2 x MACs, model forwards only); wall times are medians after a warm-up, on this machine's
CPU (or GPU when present), one video at a time as the extractor runs them. The architecture options swap in other
(tiny) encoders: bench/gpu_check.sh --smoke measures the same rows with the test fixtures on a CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_shards.sampling import sample_frames, video_rng  # noqa: E402
from data_shards.synthetic_videos import FPS, moving_shapes, tone  # noqa: E402
from data_shards.video import decode_audio, decode_frames, probe, write_video  # noqa: E402
from jobs.extract import AudioInputConfig  # noqa: E402
from jobs.prepare import mean_image  # noqa: E402
from model.costs import count_flops, count_parameters, time_call  # noqa: E402
from model.encoders import ClipConfig, ClipImageEncoder, VGGishConfig, VGGishEncoder  # noqa: E402
from model.teachers import ImageBindTeacherConfig, TeacherConfig, build_teacher  # noqa: E402


SEGMENT_S = AudioInputConfig().segment_s


def make_video(path: Path, seconds: float, width: int, height: int) -> Path:
    square = moving_shapes(seconds, size=max(width, height))
    write_video(path, np.ascontiguousarray(square[:, :height, :width]), FPS, tone(seconds))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="320x240", help="frame WIDTHxHEIGHT of the test video")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the student pipeline")
    parser.add_argument("--teacher-repeats", type=int, default=1, help="timed repeats of the teacher pipeline (slow on CPU)")
    parser.add_argument("--clip-model", default="ViT-B-32", help="the student's CLIP (an open_clip model name)")
    parser.add_argument("--clip-architecture", default=None, help="a JSON architecture file for --clip-model")
    parser.add_argument("--imagebind-architecture", default="huge", help="the teacher: 'huge' or a JSON file of its sizes")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_video(Path(tmp) / "bench.mp4", args.seconds, width, height))
        clip = ClipImageEncoder(ClipConfig(model=args.clip_model, architecture=args.clip_architecture), random_init=True, device=device)
        vggish = VGGishEncoder(VGGishConfig(), random_init=True, device=device)
        imagebind = ImageBindTeacherConfig(architecture=args.imagebind_architecture)
        teacher = build_teacher(TeacherConfig(kind="imagebind", imagebind=imagebind), clip, random_init=True, device=device)
        info = probe(path)
        rng = video_rng(0, "bench")
        student_groups = sample_frames("original", info.frame_count, 3, rng)
        teacher_groups = teacher.inputs.frame_groups(info, rng)

        def student_decode():
            frames = decode_frames(info, [i for g in student_groups for i in g])
            return [mean_image(frames, g) for g in student_groups], decode_audio(path).segment(SEGMENT_S, "middle")

        def teacher_decode():
            frames = decode_frames(info, [i for g in teacher_groups for i in g])
            return [mean_image(frames, g) for g in teacher_groups], decode_audio(path)

        images, segment = student_decode()
        teacher_images, waveform = teacher_decode()
        rows = {
            "student decode (3 frames + audio)": (student_decode, None, args.repeats),
            f"student encode (CLIP {args.clip_model} x3 + VGGish)": (lambda: (clip.encode(images), vggish.encode(segment)), True,
                                                                      args.repeats),
            "teacher decode (10 frames + audio)": (teacher_decode, None, args.repeats),
            f"teacher encode (ImageBind-{args.imagebind_architecture if args.imagebind_architecture == 'huge' else 'custom'} "
            "15 views + 3 audio clips)": (lambda: teacher.embed(teacher_images, waveform), True, args.teacher_repeats),
        }
        results = {}
        for name, (fn, counted, repeats) in rows.items():
            flops = count_flops(fn) if counted else 0
            results[name] = (time_call(fn, repeats=repeats, warmup=1), flops)
            print(f"{name:<58} {str(results[name][0]):<36} {flops / 1e9:10.1f} GFLOPs", flush=True)

    student_s = sum(results[n][0].median_s for n in list(rows)[:2])
    teacher_s = sum(results[n][0].median_s for n in list(rows)[2:])
    student_flops, teacher_flops = results[list(rows)[1]][1], results[list(rows)[3]][1]
    params_student = count_parameters(clip.model) + count_parameters(vggish.model)
    params_teacher = count_parameters(teacher.model)
    print(f"\nper video ({args.seconds:.0f} s, {width}x{height}, {device}):")
    print(f"  student inputs  {student_s * 1e3:9.1f} ms  {student_flops / 1e9:9.1f} GFLOPs  {params_student / 1e6:7.1f} M params")
    print(f"  teacher         {teacher_s * 1e3:9.1f} ms  {teacher_flops / 1e9:9.1f} GFLOPs  {params_teacher / 1e6:7.1f} M params")
    print(f"  ratio teacher/student: wall {teacher_s / student_s:.1f}x, FLOPs {teacher_flops / student_flops:.1f}x")
    encode_s = results[list(rows)[3]][0].median_s
    print(f"  teacher encode alone {encode_s * 1e3:.1f} ms: {teacher_flops / encode_s / 1e12:.2f} TFLOP/s achieved")


if __name__ == "__main__":
    main()
