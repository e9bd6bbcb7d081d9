"""The kernel half of ``launch kaggle``: runs on the Kaggle kernel, started by the generated entry
script once it has found and unpacked the code.

It probes the hardware before installing anything, installs what the job needs (pip, or the wheels
dataset when the kernel has no internet), brings its inputs out of their packs (``launch.carry``; found by
content wherever Kaggle mounted them: ``/kaggle/input/<slug>`` on older images,
``/kaggle/input/datasets/<owner>/<slug>`` on current ones), finds the files of users' own datasets and models
where they are mounted, or, for earlier kernels' outputs (a
continuation's run directory, shards written by extraction kernels), restores them verified whether
Kaggle left their archives as files or unpacked them (``launch.unpacked``). It runs the job under
``accelerate launch`` with one process per GPU (``launch.accelerate``) and leaves the run directory in ``/kaggle/working/<run-id>``
with a content manifest and the layouts of its archives, so the pull, and any later kernel, is verified.
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
import tempfile
import time
import zipfile
from pathlib import Path

from data_shards.manifest import sha256_file
from jobs import JOBS, now
from launch import carry
from launch.accelerate import Devices, job_command
from launch.unpacked import LAYOUTS, RestoreError, read_layouts, record_layouts, restore, restore_tree
from sync.base import SYNC_MANIFEST
from sync.local import write_content_manifest

KERNEL_RECORD = "streamapprox-kernel.json"  # beside the run directory in /kaggle/working
HARDWARE_EXIT = 3
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the date of a checkpoint's entries when it is zipped again


class KernelFailure(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    print(f"[streamapprox] {message}", flush=True)


def scratch() -> Path:
    """Local disk for inputs brought out of packs (``/kaggle/input`` is read-only; ``/kaggle/working`` is the output)."""
    return Path(tempfile.gettempdir()) / "streamapprox-inputs"


def find_input(input_root: Path, marker: str, accept) -> Path | None:
    """The directory under the kernel's inputs holding a ``marker`` file that ``accept`` recognises."""
    for path in sorted(input_root.rglob(marker)):
        try:
            if path.is_file() and accept(path):
                return path.parent
        except (OSError, ValueError):
            continue
    return None


def unpacked(input_root: Path, pack_id: str, what: str) -> Path:
    """The files of the packs with ``pack_id`` (from any mounted dataset), verified, in a scratch folder."""
    try:
        packs = carry.find(input_root, pack_id)
        folder = scratch() / pack_id[:16]
        carry.unpack(packs, folder)
    except carry.PackError as exc:
        raise KernelFailure(f"{what}: {exc}; is its dataset attached and ready?") from None
    return folder


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
    # --no-compile: byte-compiling every installed module (Ray, pandas, pyarrow: thousands) costs more than compiling, as
    # they are imported, the few the job uses (docs/backends/kaggle.md has the figures)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
    origin = "the package index"
    if not plan["internet"]:
        wheels = unpacked(input_root, plan["wheels"]["digest"], f"the wheels dataset {plan['wheels']['dataset']}")
        command, origin = command + ["--no-index", "--find-links", str(wheels)], f"the wheels dataset ({plan['wheels']['dataset']})"
    say(f"installing {' '.join(requirements)} from {origin}")
    result = subprocess.run([*command, *requirements], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelFailure(f"pip install failed (exit {result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def output_root(path: Path, input_root: Path) -> Path:
    """The mount of the kernel output that holds ``path``: the folder with that kernel's record."""
    for parent in [path, *path.parents]:
        if (parent / KERNEL_RECORD).is_file() or parent == input_root:
            return parent
    return input_root


def kernel_shards(key: str, wanted: dict, input_root: Path, env: dict, code_dir: Path) -> Path:
    """Shard sets that extraction kernels left in their outputs (mounted as kernel sources): every shard restored
    and verified against its slice's manifest, the slices merged when there are several."""
    parts = []
    for i, source in enumerate(wanted["sources"]):
        found = find_input(input_root, "manifest.json", lambda p, s=source: sha256_file(p) == s["manifest_sha256"])
        if found is None:
            raise KernelFailure(f"input {key}: the output of kernel {source['kernel']} (manifest sha256 {source['manifest_sha256'][:12]}) "
                                f"is not mounted under {input_root}")
        root = output_root(found, input_root)
        layouts, rel_root = read_layouts(root), found.relative_to(root).as_posix()
        manifest = json.loads((found / "manifest.json").read_text())
        part = scratch() / key / str(i)
        part.mkdir(parents=True, exist_ok=True)
        (part / "manifest.json").write_bytes((found / "manifest.json").read_bytes())
        try:
            for shard in manifest["shards"]:
                restore(found / shard["name"], part / shard["name"], shard["bytes"], shard["sha256"],
                        layouts.get(f"{rel_root}/{shard['name']}"), f"{source['kernel']}: {rel_root}/{shard['name']}", link=True)
        except RestoreError as exc:
            raise KernelFailure(f"input {key}: {exc}") from None
        parts.append(part)
    say(f"input {key}: {sum(len(json.loads((p / 'manifest.json').read_text())['shards']) for p in parts)} shards from "
        f"{len(parts)} kernel output(s), verified")
    if len(parts) == 1:
        return parts[0]
    merged = scratch() / key / "merged"
    result = subprocess.run([sys.executable, "-m", "data_shards.cli", "merge", *map(str, parts), "--out", str(merged)], env=env,
                            cwd=code_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise KernelFailure(f"input {key}: merging the {len(parts)} slices failed: {(result.stderr or result.stdout).strip()[-1500:]}")
    return merged


def mounted_file(key: str, wanted: dict, input_root: Path) -> Path:
    """A file (or folder) of a user's dataset, where Kaggle mounted it: ``datasets/OWNER/SLUG/PATH`` on current images,
    ``SLUG/PATH`` on older ones."""
    owner, slug = wanted["dataset"].split("/")
    return found_mounted(key, input_root, (input_root / "datasets" / owner / slug, input_root / slug), Path(wanted["path"]),
                         f"dataset {wanted['dataset']}", "the dataset (kaggle datasets files OWNER/SLUG)")


def mounted_model_file(key: str, wanted: dict, input_root: Path) -> Path:
    """A file of a model variation's version, where Kaggle mounted it: ``models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION/PATH``
    on current images, ``MODEL/FRAMEWORK/...`` on older ones; the framework in lower case (``pyTorch`` in a URL is
    ``pytorch`` there)."""
    owner, model, framework, variation, version = wanted["model"].split("/")
    handles = [(model, spelled, variation, version) for spelled in dict.fromkeys((framework, framework.lower()))]  # pyTorch: pytorch
    roots = tuple(root for handle in handles for root in (input_root.joinpath("models", owner, *handle), input_root.joinpath(*handle)))
    return found_mounted(key, input_root, roots, Path(wanted["path"]), f"model {wanted['model']}",
                         "the model's files (kaggle models variations versions files)")


def found_mounted(key: str, input_root: Path, roots: tuple[Path, ...], inside: Path, source: str, listing: str) -> Path:
    """``inside`` under the first of ``roots`` that holds it. Kaggle unpacks archives it is given, and a torch checkpoint
    is a zip: found as a folder, it is zipped again (stored entries, as ``torch.save`` writes them) into scratch space,
    where ``torch.load`` reads it -- the same bytes on every kernel (no timestamps), so kernels that mount the same
    checkpoint extract under one plan."""
    for root in roots:
        if (root / inside).exists():  # a file, or a folder of videos
            return root / inside
        folder = root / inside.parent / inside.stem
        if folder.is_dir():
            rebuilt = scratch() / "mounted" / root.relative_to(input_root) / inside
            rebuilt.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_STORED) as archive:
                for member in sorted(p for p in folder.rglob("*") if p.is_file()):
                    entry = zipfile.ZipInfo(member.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)  # not the mount's mtimes
                    with open(member, "rb") as data, archive.open(entry, "w", force_zip64=True) as target:
                        shutil.copyfileobj(data, target, 1 << 20)
            say(f"input {key}: {source}/{inside} was unpacked by Kaggle; zipped again as {rebuilt}")
            return rebuilt
    raise KernelFailure(f"input {key}: {inside} is not in {source} as mounted under {input_root}; check the path inside {listing}")


def previous_run(plan: dict, input_root: Path, run_dir: Path) -> None:
    """A continuation's starting point: the previous kernel's run directory, restored file by file (verified
    against its content manifest, archives rebuilt if Kaggle unpacked them) into ``run_dir`` -- or, for a run made
    on another backend, the run directory it was sent as (packs, verified)."""
    if plan.get("restore"):
        try:
            carry.unpack(carry.find(input_root, plan["restore"]["pack"]), run_dir)
        except carry.PackError as exc:
            raise KernelFailure(f"continuation: the run directory (dataset {plan['restore']['dataset']}): {exc}") from None
        say(f"continuing {plan['run_id']} as it was sent (dataset {plan['restore']['dataset']})")
        return
    previous = find_input(input_root, "run.json", lambda p: p.parent.name == plan["run_id"]
                          and json.loads(p.read_text()).get("run_id") == plan["run_id"])
    if previous is None:
        raise KernelFailure(f"continuation: the previous kernel's run directory {plan['run_id']} is not mounted under {input_root}")
    manifest = previous / SYNC_MANIFEST
    if not manifest.is_file():
        raise KernelFailure(f"continuation: {previous} has no content manifest ({SYNC_MANIFEST}); the previous kernel did not finish cleanly")
    root = output_root(previous, input_root)
    try:
        restore_tree(previous, previous.relative_to(root).as_posix(), run_dir, json.loads(manifest.read_text())["files"],
                     read_layouts(root))
    except RestoreError as exc:
        raise KernelFailure(f"continuation: {exc}") from None
    say(f"continuing {plan['run_id']} from {previous}")


def job_arguments(plan: dict, input_root: Path, run_dir: Path, env: dict, code_dir: Path) -> list[str]:
    """The job's arguments with inputs pointed at where they were brought on this kernel."""
    spec = JOBS[plan["job"]]
    relocated = []
    for key, wanted in plan["inputs"].items():
        if wanted["kind"] == "kaggle_outputs":
            value = kernel_shards(key, wanted, input_root, env, code_dir)
        elif wanted["kind"] == "mounted":
            value = mounted_file(key, wanted, input_root)
        elif wanted["kind"] == "mounted_model":
            value = mounted_model_file(key, wanted, input_root)
        else:
            folder = unpacked(input_root, wanted["pack"], f"input {key} (dataset {wanted['dataset']})")
            value = folder / wanted["target"] if wanted["target"] else folder
        relocated += ["--set", f"{key}={value}", *(f"{k}={json.dumps(v)}" for k, v in wanted.get("also_set", {}).items())]
    if plan["resume"]:  # the run's saved config rules; only the inputs' new places are passed
        previous_run(plan, input_root, run_dir)
        return ["--resume", str(run_dir), *plan.get("resume_args", []), *relocated]
    arguments = [*plan["job_args"], *relocated]
    if plan.get("slice"):
        arguments += ["--slice", "{}/{}".format(*plan["slice"])]
    return arguments + (["--run-dir", str(run_dir)] if spec.makes_run else [])


def tracker_environment(run_dir: Path) -> dict[str, str]:
    """A kernel holds no credentials (Kaggle attaches secrets to a notebook in its web editor only, not to one pushed
    through the API), so the trackers a config asks for keep their records in the run directory, which comes back
    with it: W&B offline (RUN/wandb, for ``wandb sync``), MLflow in a file store (RUN/mlruns)."""
    return {"WANDB_MODE": "offline", "MLFLOW_TRACKING_URI": (run_dir / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}


def run_job(plan: dict, root: Path, code_dir: Path, started: float) -> tuple[int, dict]:
    spec = JOBS[plan["job"]]
    input_root, run_dir = root / "input", root / "working" / plan["run_id"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "STREAMAPPROX_BACKEND": "kaggle", "PYTHONUNBUFFERED": "1", **tracker_environment(run_dir)}
    hardware = probe(env)
    gpus = hardware["gpus"]
    say(f"torch {hardware['torch']}, " + (", ".join(f"{g['name']} (sm {g['capability']})" for g in gpus) if gpus else "no GPU"))
    install(plan, input_root, env)
    arguments = job_arguments(plan, input_root, run_dir, env, code_dir)
    if spec.checkable:
        check = subprocess.run([sys.executable, "-m", spec.module, *arguments, "--check"], env=env, cwd=code_dir)
        if check.returncode != 0:
            raise KernelFailure(f"the job's input check failed (exit {check.returncode}); see above", check.returncode)
    if spec.resumable and plan["time_budget_s"]:
        remaining = plan["time_budget_s"] - (time.monotonic() - started)
        arguments += ["--time-budget", f"{max(remaining, 1.0):.1f}"]
    command = job_command(sys.executable, spec.module, arguments, spec.distributed, Devices(gpus), plan["mixed_precision"])
    say("running " + " ".join(command.argv[1:]))
    return subprocess.run(command.argv, env={**env, **command.env}, cwd=code_dir).returncode, hardware


def main(plan: dict, root: Path, code_dir: Path) -> int:
    started = time.monotonic()
    working = root / "working"
    working.mkdir(parents=True, exist_ok=True)
    record: dict = {"run_id": plan["run_id"], "kernel": plan["kernel"], "bundle": plan["bundle"]["digest"], "started_at": now()}
    try:
        exit_code, record["hardware"] = run_job(plan, root, code_dir, started)
    except KernelFailure as failure:
        say(f"error: {failure}")
        exit_code, record["error"] = failure.code, str(failure)
    record.update(exit_code=exit_code, seconds=round(time.monotonic() - started, 1), ended_at=now())
    run_dir = working / plan["run_id"]
    if run_dir.is_dir():
        files = json.loads(write_content_manifest(run_dir).read_text())["files"]
        layouts = record_layouts(working, [f"{plan['run_id']}/{rel}" for rel in files])
        (working / LAYOUTS).write_text(json.dumps(layouts) + "\n")
    (working / KERNEL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    say(f"job exited with {exit_code}")
    return exit_code
