"""The GPU paths, each run once on small inputs and checked, in one summary table (``bench/gpu_check.sh`` runs this).

    bench/gpu_check.sh            # on a GPU machine: about 5 minutes on one H100
    bench/gpu_check.sh --smoke    # the same steps on this CPU at tiny sizes (part of the test suite, so it cannot rot)

Steps: training in bf16, in fp16 with gradient scaling, and under DeepSpeed ZeRO-2 (finite losses, test R@1 well above
chance after 2 epochs); extraction on the GPU with random-init encoders (shards valid); what one video costs, student
inputs and ImageBind-huge teacher, decode included (bench/extract.py); the report's latency columns on
the GPU; the extraction pipeline's throughput against the sequential path (bench/extract_throughput.py). Inputs are
synthetic (shards, videos) and the encoders random-init. Exit code 1 if any step failed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures"
TRAIN_EPOCHS = 2  # each training step's run; its epoch loss must fall
SMOKE_STEP_S = 240  # a smoke step takes 5-70 s here; past this it is hung
TINY_ENCODERS = ["student.clip.model=tiny_clip", f"student.clip.architecture={TINY / 'tiny_clip.json'}",
                 f"teacher.imagebind.architecture={TINY / 'tiny_imagebind.json'}"]


class Check:
    def __init__(self, work: Path, smoke: bool):
        self.work, self.smoke, self.rows = work, smoke, []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **({"OMP_NUM_THREADS": "1"} if smoke else {})}
        # smoke: dims of the tiny encoder fixtures, so the report can measure them with the trained head
        size = "train=600&val=120&test=200&samples_per_shard=128&clip_dim=32&teacher_dim=32" if smoke else "train=4000&val=500&test=1000"
        self.shards = f"synthetic://msrvtt?{size}"
        self.student = ["model.hidden=[64]", "data.batch_size=64", "model.clip_dim=32", "model.out_dim=32"] if smoke else ["data.batch_size=256"]

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """``timeout``: a GPU run's; a smoke run gets at most SMOKE_STEP_S, so a step that hangs is one failed row."""
        command = [sys.executable, *args]
        with subprocess.Popen(command, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) as process:
            try:
                out, err = process.communicate(timeout=min(timeout, SMOKE_STEP_S) if self.smoke else timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # with its children (accelerate's ranks, decode workers)
                process.communicate()
                raise
        return subprocess.CompletedProcess(command, process.returncode, out, err)

    def step(self, name: str, what) -> None:
        began = time.monotonic()
        try:
            ok, detail = what()
        except Exception as exc:  # a step that breaks is a failed row, not the end of the check
            ok, detail = False, f"{type(exc).__name__}: {str(exc)[-300:]}"
        self.rows.append((name, "PASS" if ok else "FAIL", time.monotonic() - began, detail))
        print(f"{name}: {'PASS' if ok else 'FAIL'} ({detail})", flush=True)

    def train(self, config: str | None, precision: str) -> tuple[bool, str]:
        """``config``: a bundled accelerate config, or None for accelerate_config.yaml (one CPU process)."""
        run = self.work / f"train-{config or 'default'}-{precision}"
        result = self.run("-m", "launch.cli", "local", "train_mlp", *(["--accelerate-config", config] if config else []),
                          "--run-dir", str(run), "--set",
                          f"data.shards={self.shards}", f"train.epochs={TRAIN_EPOCHS}", f"train.mixed_precision={precision}", "train.log_every=1",
                          *self.student, timeout=600)
        if result.returncode != 0:
            return False, f"exit {result.returncode}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        info = json.loads((run / "run.json").read_text())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in records if r["kind"] == "step"]
        epoch_losses = [r["train_loss"] for r in records if r["kind"] == "epoch"]
        results = json.loads((run / "eval" / "results.json").read_text())["metrics"]
        chance = 100 / results["n"]
        hardware = info.get("hardware", {})
        distributed = hardware.get("distributed_type", "?")
        ok = (info["status"] == "complete" and losses and all(map(math.isfinite, losses)) and results["s2t_r1"] > 2 * chance
              and len(epoch_losses) == TRAIN_EPOCHS and epoch_losses[-1] < epoch_losses[0]
              and ("deepspeed" in (config or "")) == ("DEEPSPEED" in distributed))  # DeepSpeed ran where asked, only there
        return bool(ok), (f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, test R@1 {results['s2t_r1']:.1f} "
                          f"(chance {chance:.2f}); {hardware.get('device', '?')} x{hardware.get('num_processes', '?')}, "
                          f"{hardware.get('mixed_precision', precision)}, {distributed}")

    def extract(self) -> tuple[bool, str]:
        sys.path.insert(0, str(REPO))
        from data_shards.synthetic_videos import write_collection

        listing = write_collection(self.work / "videos", 4 if self.smoke else 24, seconds=3.0)
        out = self.work / "extracted"
        encoders = ["--set", *TINY_ENCODERS, "samples_per_shard=2"] if self.smoke else ["--set", "teacher.kind=imagebind"]
        result = self.run("-m", "jobs.extract", "--videos", str(listing), "--out", str(out), "--random-init", *encoders, timeout=900)
        if result.returncode != 0:
            return False, f"exit {result.returncode}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        valid = self.run("-m", "data_shards.cli", "validate", str(out), timeout=300)
        busy = next((line.split("encoders busy")[1].strip() for line in result.stdout.splitlines() if "encoders busy" in line), "?")
        return valid.returncode == 0, f"{valid.stdout.strip().splitlines()[0] if valid.stdout.strip() else valid.stderr[-200:]}; " \
                                      f"encoders busy {busy}"

    def report(self) -> tuple[bool, str]:
        device = "cpu" if self.smoke else "cuda"
        run = self.work / "train-gpu-bf16" if not self.smoke else self.work / "train-default-bf16"
        out = self.work / "report"
        encoders = ["--set", *TINY_ENCODERS] if self.smoke else []
        result = self.run("-m", "launch.cli", "report", str(run), "--out", str(out), "--devices", device, "--batches", "1,8",
                          "--repeats", "2", *encoders, timeout=900)
        made = next((p for p in (out / "report.md", run / "eval" / "report.md") if p.is_file()), None)  # one run's goes beside it
        text = made.read_text() if made else ""
        ok = result.returncode == 0 and f"{device} ms, batch 8" in text
        return ok, f"latency columns for {device}" if ok else f"exit {result.returncode}: {(result.stderr or '').strip()[-300:]}"

    def per_video(self) -> tuple[bool, str]:
        """What one video costs on this card (bench/extract.py): the student's inputs and the teacher, decode included,
        and the FLOP/s the teacher's forward reaches -- what GPU-hour estimates should be made of."""
        size = ["--seconds", "3", "--size", "160x120", "--repeats", "1", "--clip-model", "tiny_clip",
                "--clip-architecture", str(TINY / "tiny_clip.json"), "--imagebind-architecture", str(TINY / "tiny_imagebind.json")] \
            if self.smoke else ["--repeats", "5", "--teacher-repeats", "5"]
        result = self.run(str(REPO / "bench" / "extract.py"), *size, timeout=900)
        lines = [line.strip() for line in result.stdout.splitlines()]
        student = next((line for line in lines if line.startswith("student inputs")), "")
        teacher = next((line for line in lines if line.startswith("teacher ") and " GFLOPs " in line), "")
        encode = next((line for line in lines if line.startswith("teacher encode alone")), "")
        if result.returncode != 0 or not (student and teacher and encode):
            return False, f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[-300:]}"
        return True, (f"a video: student inputs {student.split()[2]} ms, teacher {teacher.split()[1]} ms "
                      f"({teacher.split()[3]} GFLOPs; its forward alone {encode.split()[3]} ms, {encode.split()[5]} TFLOP/s)")

    def throughput(self) -> tuple[bool, str]:
        size = ["--videos", "2", "--size", "320x180", "--seconds", "2"] if self.smoke else ["--videos", "24"]
        result = self.run(str(REPO / "bench" / "extract_throughput.py"), *size, timeout=900)
        lines = result.stdout.strip().splitlines()
        last = lines[-1] if lines else result.stderr[-300:]
        if self.smoke:  # on a CPU the ratio is measured, not judged: 2 cores leave the pipeline little to overlap
            ok = "byte-identical to the sequential path's: True" in result.stdout and "pipeline / sequential" in last
            return ok, last.split(" (target")[0] + " (measured; judged on a GPU only)" if ok else last
        return result.returncode == 0, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU at tiny sizes")
    args = parser.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or --smoke for the CPU version", file=sys.stderr)
        return 2
    card = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(Path(tmp), args.smoke)
        gpu = None if args.smoke else "gpu"
        check.step("train bf16", lambda: check.train(gpu, "bf16"))
        check.step("train fp16 + grad scaling" if not args.smoke else "train fp32 (fp16 needs a GPU)",
                   lambda: check.train(gpu, "no" if args.smoke else "fp16"))
        check.step("DeepSpeed ZeRO-2", lambda: check.train("deepspeed_zero2_cpu" if args.smoke else "deepspeed_zero2", "bf16"))
        check.step("extract (random-init)", check.extract)
        check.step("per-video cost", check.per_video)
        check.step("report latency", check.report)
        check.step("extraction pipeline", check.throughput)
    print(f"\ngpu_check on {card}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
    print("| step | result | seconds | detail |\n|---|---|---|---|")
    for name, status, seconds, detail in check.rows:
        print(f"| {name} | {status} | {seconds:.0f} | {detail} |")
    failed = [row[0] for row in check.rows if row[1] != "PASS"]
    print(f"gpu_check: {len(check.rows) - len(failed)}/{len(check.rows)} steps passed" + (f"; failed: {', '.join(failed)}" if failed else "")
          + f": {'FAIL' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
