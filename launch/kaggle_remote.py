"""The kernel half of ``launch kaggle``: runs on the Kaggle kernel, started by the generated entry
script once it has found and unpacked the code bundle.

It probes the hardware before installing anything, installs what the job needs (pip, or the wheels
dataset when the kernel has no internet), finds its inputs by content wherever Kaggle mounted them
(``/kaggle/input/<slug>`` on older images, ``/kaggle/input/datasets/<owner>/<slug>`` on current
ones), runs the job under ``accelerate launch`` with one process per GPU, and leaves the run
directory in ``/kaggle/working/<run-id>`` with a content manifest so the pull is verified.
``STREAMAPPROX_KAGGLE_ROOT`` relocates ``/kaggle`` (the tests' sandbox does).

Standard library only, plus the project's light modules: the job's own dependencies may not be
installed yet when this starts.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_shards.manifest import sha256_file
from jobs import JOBS
from launch.inputs import VIDEO_LISTING
from launch.local import mixed_precision as auto_precision
from sync.local import write_content_manifest

KERNEL_RECORD = "streamapprox-kernel.json"  # beside the run directory in /kaggle/working
HARDWARE_EXIT = 3


class KernelFailure(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"[streamapprox] {message}", flush=True)


def find_input(input_root: Path, marker: str, accept) -> Path | None:
    """The directory under the kernel's inputs holding a ``marker`` file that ``accept`` recognises."""
    for path in sorted(input_root.rglob(marker)):
        try:
            if accept(path):
                return path.parent
        except (OSError, ValueError):
            continue
    return None


def probe(env: dict) -> dict:
    """GPUs and torch, from the image's own torch; a GPU that torch cannot drive ends the kernel here."""
    result = subprocess.run([sys.executable, "-m", "jobs.hardware"], env=env, capture_output=True, text=True)
    if result.returncode == HARDWARE_EXIT:
        raise KernelFailure(result.stderr.strip(), HARDWARE_EXIT)
    if result.returncode != 0:
        raise KernelFailure(f"hardware probe failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def install(plan: dict, input_root: Path, env: dict) -> None:
    requirements = plan["requirements"]
    if not requirements:
        return
    command, origin = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"], "the package index"
    if not plan["internet"]:
        digest = plan["wheels"]["digest"]
        wheels = find_input(input_root, "WHEELS.json", lambda p: json.loads(p.read_text()).get("digest") == digest)
        if wheels is None:
            raise KernelFailure(f"the kernel has no internet and the wheels dataset {plan['wheels']['dataset']} "
                                f"(digest {digest[:12]}) is not mounted under {input_root}")
        command, origin = command + ["--no-index", "--find-links", str(wheels)], f"the wheels dataset at {wheels}"
    say(f"installing {' '.join(requirements)} from {origin}")
    result = subprocess.run([*command, *requirements], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelFailure(f"pip install failed (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def accelerate_arguments(gpus: list[dict], mixed_precision: str, code_dir: Path) -> list[str]:
    """One process per GPU; fp16 where a GPU lacks bf16 (T4, P100: capability below 8.0)."""
    if not gpus:
        return ["--config_file", str(code_dir / "accelerate_config.yaml")]
    mixed_precision = auto_precision(mixed_precision, gpus)
    arguments = ["--num_processes", str(len(gpus)), "--num_machines", "1", "--mixed_precision", mixed_precision,
                 "--dynamo_backend", "no"]
    return arguments + (["--multi_gpu"] if len(gpus) > 1 else [])


def job_arguments(plan: dict, input_root: Path, run_dir: Path) -> list[str]:
    """The job's arguments with inputs pointed at wherever Kaggle mounted them."""
    spec = JOBS[plan["job"]]
    relocated = []
    for key, wanted in plan["inputs"].items():
        if wanted.get("kind") == "videos":
            found = find_input(input_root, VIDEO_LISTING, lambda p: json.loads(p.read_text()).get("digest") == wanted["digest"])
            what, value = f"the videos with listing digest {wanted['digest'][:12]}", found and found / VIDEO_LISTING
        elif wanted.get("kind") == "file":
            found = find_input(input_root, wanted["name"], lambda p: sha256_file(p) == wanted["sha256"])
            what, value = f"{wanted['name']} with sha256 {wanted['sha256'][:12]}", found and found / wanted["name"]
        else:
            found = find_input(input_root, "manifest.json", lambda p: sha256_file(p) == wanted["manifest_sha256"])
            what, value = f"the shard set with manifest sha256 {wanted['manifest_sha256'][:12]}", found
        if found is None:
            raise KernelFailure(f"input {key}: no mounted dataset holds {what} (dataset {wanted['dataset']}); is it attached and ready?")
        relocated += ["--set", f"{key}={value}", *(f"{k}={json.dumps(v)}" for k, v in wanted.get("also_set", {}).items())]
    if plan["resume"]:  # the run's saved config rules; only the inputs' new places are passed
        previous = find_input(input_root, "run.json", lambda p: p.parent.name == plan["run_id"]
                              and json.loads(p.read_text()).get("run_id") == plan["run_id"])
        if previous is None:
            raise KernelFailure(f"continuation: the previous kernel's run directory {plan['run_id']} is not mounted under {input_root}")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(previous, run_dir)
        say(f"continuing {plan['run_id']} from {previous}")
        return ["--resume", str(run_dir), *relocated]
    arguments = [*plan["job_args"], *relocated]
    if plan.get("slice"):
        arguments += ["--slice", "{}/{}".format(*plan["slice"])]
    return arguments + (["--run-dir", str(run_dir)] if spec.makes_run else [])


def run_job(plan: dict, root: Path, code_dir: Path, started: float) -> tuple[int, dict]:
    spec = JOBS[plan["job"]]
    input_root, run_dir = root / "input", root / "working" / plan["run_id"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "STREAMAPPROX_BACKEND": "kaggle", "PYTHONUNBUFFERED": "1"}
    hardware = probe(env)
    gpus = hardware["gpus"]
    say(f"torch {hardware['torch']}, " + (", ".join(f"{g['name']} (sm {g['capability']})" for g in gpus) if gpus else "no GPU"))
    install(plan, input_root, env)
    arguments = job_arguments(plan, input_root, run_dir)
    if spec.checkable:
        check = subprocess.run([sys.executable, "-m", spec.module, *arguments, "--check"], env=env, cwd=code_dir)
        if check.returncode != 0:
            raise KernelFailure(f"the job's input check failed (exit {check.returncode}); see above", check.returncode)
    if spec.resumable and plan["time_budget_s"]:
        remaining = plan["time_budget_s"] - (time.monotonic() - started)
        arguments += ["--time-budget", f"{max(remaining, 1.0):.1f}"]
    command = [sys.executable, "-m", spec.module, *arguments]
    if spec.distributed:
        command = [sys.executable, "-m", "accelerate.commands.launch",
                   *accelerate_arguments(gpus, plan["mixed_precision"], code_dir), "-m", spec.module, *arguments]
    say("running " + " ".join(command[1:]))
    return subprocess.run(command, env=env, cwd=code_dir).returncode, hardware


def main(plan: dict, root: Path, code_dir: Path) -> int:
    started = time.monotonic()
    working = root / "working"
    working.mkdir(parents=True, exist_ok=True)
    record: dict = {"run_id": plan["run_id"], "kernel": plan["kernel"], "bundle": plan["bundle"]["digest"]}
    try:
        exit_code, record["hardware"] = run_job(plan, root, code_dir, started)
    except KernelFailure as failure:
        say(f"error: {failure}")
        exit_code, record["error"] = failure.code, str(failure)
    record.update(exit_code=exit_code, seconds=round(time.monotonic() - started, 1))
    run_dir = working / plan["run_id"]
    if run_dir.is_dir():
        write_content_manifest(run_dir)
    (working / KERNEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    say(f"job exited with {exit_code}")
    return exit_code
