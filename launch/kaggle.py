"""``launch kaggle JOB``: run any job on a Kaggle kernel and bring its run directory back.

1. credentials (the kaggle package's own chain) and the job's own ``--check``, before any upload;
2. the code bundle as the private dataset ``OWNER/streamapprox-code``, versioned only when its
   content digest changed; local shard sets as private datasets named by their manifest digest
   (unchanged shards are never uploaded again); without internet, a wheels dataset built once;
3. wait until every dataset is ready, push a generated script kernel, follow its status and log;
4. pull ``/kaggle/working/<run-id>`` into ``runs/<run-id>`` through sync (digest-checked);
5. a run left ``incomplete`` by its time budget continues in a new kernel that mounts the previous
   kernel's output, up to ``--max-continuations``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from data_shards.files import atomic_write_text, cache_root
from jobs import JOBS, JobSpec, new_run_id, now
from launch import bundle as code_bundle
from launch.kaggle_api import TERMINAL, KaggleService, KernelState
from launch.inputs import job_inputs, staged_form
from launch.kaggle_remote import KERNEL_RECORD
from launch.local import REPO_ROOT, LaunchError, option_value, summarize
from launch.runs import read_record, write_record

log = logging.getLogger("streamapprox.kaggle")
ACCELERATORS = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "none": None}  # Kaggle machine shapes
SESSION_LIMIT_S = 12 * 3600
NOT_ON_KERNEL = {"torch", "torchvision", "torchaudio", "kaggle", "boto3", "six", "requests"}  # in the image, or launcher-only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accelerator", choices=sorted(ACCELERATORS), default="t4x2",
                        help="Kaggle machine: t4x2 (2 x T4, fp16; the default), p100 (needs a torch with sm_60 kernels), none (CPU)")
    parser.add_argument("--no-internet", action="store_true",
                        help="run the kernel without internet: dependencies come from a wheels dataset built here once")
    parser.add_argument("--owner", help="Kaggle user that owns the datasets and kernels (default: your username)")
    parser.add_argument("--max-continuations", type=int, default=2,
                        help="continuation kernels allowed when the time budget stops a run (default 2)")
    parser.add_argument("--num-kernels", type=int, default=1,
                        help="fan out: N kernels, each doing 1/N of a sliceable job; their outputs are merged here")
    parser.add_argument("--session-limit", type=float, default=SESSION_LIMIT_S,
                        help=f"Kaggle's session limit in seconds (default {SESSION_LIMIT_S}); the job's time budget stays below it")
    parser.add_argument("--margin", type=float, default=1800, help="seconds kept free for setup and saving outputs (default 1800)")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                        help="auto: fp16 on GPUs without bf16 (T4, P100), bf16 on newer ones")
    parser.add_argument("--poll-interval", type=float, default=10.0, help="first status poll interval in seconds (backs off to 6x)")
    parser.add_argument("--dataset-timeout", type=float, default=1800, help="seconds to wait for an uploaded dataset to be ready")
    parser.add_argument("--detach", action="store_true", help="push and return; follow with launch status/logs/pull RUN")
    parser.add_argument("--max-bundle-mb", type=float, default=code_bundle.DEFAULT_MAX_MB, help="code bundle size guard")
    parser.add_argument("--runs-dir", default="runs", help="where run directories come back to (default: ./runs)")


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- what goes up ------------------------------------------------------------------------------
def stage_dir(owner: str, name: str) -> Path:
    path = cache_root() / "kaggle" / owner / name
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.iterdir():
        stale.unlink()
    return path


def write_code_dataset(bundle: code_bundle.Bundle, folder: Path) -> None:
    """``code.tar`` (byte-identical for identical content: sorted, zeroed times and owners) + ``BUNDLE.json``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in bundle.files:
            data = (bundle.root / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if os.access(bundle.root / rel, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    (folder / "code.tar").write_bytes(buffer.getvalue())
    (folder / code_bundle.MANIFEST).write_text(json.dumps({"digest": bundle.digest, "commit": bundle.commit, "dirty": bundle.dirty}) + "\n")


def kernel_requirements(spec: JobSpec) -> list[str]:
    """The project's dependencies (plus the job's extras) that a Kaggle image may lack (torch comes with the image)."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in spec.extras for r in project["optional-dependencies"][extra]]
    return [r for r in declared if re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() not in NOT_ON_KERNEL]


def build_wheels(requirements: list[str], folder: Path, digest: str) -> None:
    """Wheels for a Kaggle image (CPython 3.11, manylinux x86_64), no dependencies: the image has those."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(folder),
               "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11",
               "--implementation", "cp", *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"building the wheels dataset failed (pip download exit {result.returncode}): {result.stderr[-1500:]}")
    (folder / "WHEELS.json").write_text(json.dumps({"digest": digest, "requirements": requirements}) + "\n")


class Uploader:
    """Datasets on Kaggle, each uploaded only when its content changed; counts the bytes it sent."""

    def __init__(self, service: KaggleService, options: argparse.Namespace):
        self.service, self.options = service, options
        self.bytes_uploaded = 0

    def _upload(self, folder: Path, slug: str, title: str, new: bool, notes: str) -> None:
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        print(f"launch kaggle: uploading {title} ({size / 1e6:.1f} MB) to {self.service.owner}/{slug}", flush=True)
        self.service.upload_dataset(folder, slug, title, new, notes)
        self.bytes_uploaded += size

    def code(self, bundle: code_bundle.Bundle) -> dict:
        """One dataset versioned by the bundle digest (kept in its BUNDLE.json)."""
        slug, owner = "streamapprox-code", self.service.owner
        status = self.service.dataset_status(slug)
        if status not in (None, "ready", "failed"):  # a version still processing: Kaggle refuses a new one meanwhile
            self.service.wait_dataset_ready(slug, self.options.dataset_timeout, self.options.poll_interval)
        remote = self.service.dataset_file(slug, code_bundle.MANIFEST) if status is not None else None
        if remote is None or json.loads(remote).get("digest") != bundle.digest:
            folder = stage_dir(owner, "code")
            write_code_dataset(bundle, folder)
            self._upload(folder, slug, "StreamApprox code", new=status is None, notes=f"bundle {bundle.digest[:16]}")
        else:
            print(f"launch kaggle: code bundle {bundle.digest[:12]} already on Kaggle ({owner}/{slug})", flush=True)
        return {"dataset": f"{owner}/{slug}", "digest": bundle.digest}

    def carry(self, key: str, spec: dict) -> dict:
        """An input (shard set, video collection, file) as a dataset named by its content: never uploaded twice."""
        staged = staged_form(spec)
        slug = f"streamapprox-{staged.name}"
        if self.service.dataset_status(slug) is None:
            folder = stage_dir(self.service.owner, slug)
            staged.link(folder)
            self._upload(folder, slug, f"StreamApprox {staged.name}", new=True, notes=key)
        else:
            print(f"launch kaggle: {key} ({spec['location']}) already on Kaggle as {self.service.owner}/{slug}", flush=True)
        return {"dataset": f"{self.service.owner}/{slug}", **staged.locator}

    def wheels(self, requirements: list[str]) -> dict:
        digest = hashlib.sha256(json.dumps(["cp311-manylinux_x86_64", *requirements]).encode()).hexdigest()
        slug = f"streamapprox-wheels-{digest[:16]}"
        if self.service.dataset_status(slug) is None:
            folder = stage_dir(self.service.owner, slug)
            build_wheels(requirements, folder, digest)
            self._upload(folder, slug, f"StreamApprox wheels {digest[:8]}", new=True, notes="")
        return {"dataset": f"{self.service.owner}/{slug}", "digest": digest}


# -- the kernel --------------------------------------------------------------------------------
ENTRY_TEMPLATE = '''"""StreamApprox kernel entry for run {run_id}, generated by `launch kaggle` (no credentials inside).
Finds the code bundle among the kernel's inputs by its digest, unpacks it and hands over to
launch.kaggle_remote."""
import json, os, shutil, sys, tarfile, tempfile
from pathlib import Path

PLAN = json.loads({plan!r})
ROOT = Path(os.environ.get("STREAMAPPROX_KAGGLE_ROOT", "/kaggle"))


def unpack_code():
    for marker in sorted((ROOT / "input").rglob("BUNDLE.json")):
        if json.loads(marker.read_text()).get("digest") != PLAN["bundle"]["digest"]:
            continue
        target, archive = Path(tempfile.mkdtemp(prefix="streamapprox-code-")), marker.parent / "code.tar"
        if archive.is_dir():  # mounted already unpacked
            shutil.copytree(archive, target, dirs_exist_ok=True)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(target, **({{"filter": "data"}} if hasattr(tarfile, "data_filter") else {{}}))
        return target
    sys.exit("[streamapprox] error: the code bundle " + PLAN["bundle"]["dataset"] + " (digest " + PLAN["bundle"]["digest"][:12]
             + ") is not mounted under " + str(ROOT / "input"))


CODE = unpack_code()
sys.path.insert(0, str(CODE))
from launch.kaggle_remote import main  # noqa: E402

sys.exit(main(PLAN, ROOT, CODE))
'''


def write_kernel(folder: Path, owner: str, slug: str, plan: dict, options: argparse.Namespace, datasets: list[str],
                 kernels: list[str]) -> None:
    shape = ACCELERATORS[options.accelerator]
    metadata = {
        "id": f"{owner}/{slug}", "title": slug, "code_file": "entry.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": shape is not None, "enable_internet": not options.no_internet,
        "dataset_sources": datasets, "kernel_sources": kernels, "competition_sources": [], "model_sources": [],
    }
    if shape:
        metadata["machine_shape"] = shape
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / "entry.py").write_text(ENTRY_TEMPLATE.format(run_id=plan["run_id"], plan=json.dumps(plan, sort_keys=True)))


# -- following a kernel ------------------------------------------------------------------------
def follow(service: KaggleService, slug: str, poll_s: float) -> KernelState:
    """Poll with backoff (reset whenever the log grows), printing new log text as it appears."""
    delay, last, shown = poll_s, None, 0
    while True:
        state = service.kernel_state(slug)
        if state.status != last:
            print(f"launch kaggle: kernel {service.owner}/{slug}: {state.status.lower()}", flush=True)
            last = state.status
        text = service.kernel_log(slug) if state.status != "QUEUED" else ""
        if len(text) > shown:
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown, delay = len(text), poll_s
        if state.finished:
            return state
        time.sleep(delay)
        delay = min(delay * 1.5, poll_s * 6)


def pull(service: KaggleService, slug: str, run_id: str, run_dir: Path) -> str:
    """The kernel's run directory through sync (every output page, sha256-checked), its log and record;
    returns the log."""
    from sync import SyncError, sync
    from sync.kaggle import KaggleKernelOutputStore

    try:
        report = sync(f"kaggle://{service.owner}/{slug}/{run_id}", str(run_dir))
        print(f"launch kaggle: {report.summary()}", flush=True)
        outputs = KaggleKernelOutputStore(f"kaggle://{service.owner}/{slug}", service.owner, slug)
        listed = outputs.list()
        if KERNEL_RECORD in listed:
            outputs.download(KERNEL_RECORD, run_dir / "logs" / f"kaggle-{slug}.json", listed[KERNEL_RECORD], lambda n: None)
    except SyncError as exc:
        raise LaunchError(f"pulling the outputs of {service.owner}/{slug}: {exc}") from None
    text = service.kernel_log(slug)
    atomic_write_text(run_dir / "logs" / f"kaggle-{slug}.log", text)
    return text


def log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_info(run_dir: Path) -> dict:
    """The pulled run.json ({} before anything came back)."""
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def chain(record: dict, part: int) -> list[dict]:
    """The kernels of one slice, first push then its continuations."""
    return [k for k in record["kernels"] if k.get("part", 0) == part]


def part_dir(record: dict, run_dir: Path, part: int) -> Path:
    return run_dir / "slices" / str(part) if record["parts"] > 1 else run_dir


def drive_chain(service: KaggleService, record: dict, run_dir: Path, options: argparse.Namespace, part: int) -> int:
    """Follow one slice's kernel, pull it, and continue it while it is incomplete and continuations remain."""
    target = part_dir(record, run_dir, part)
    allowed = len(chain(record, part)) + options.max_continuations
    while True:
        kernels = chain(record, part)
        kernel = kernels[-1]
        if kernel.get("state") not in TERMINAL:
            state = follow(service, kernel["slug"], options.poll_interval)
            kernel.update(state=state.status, failure=state.failure, finished_at=now())
            write_record(run_dir, record)
        if kernel["state"] != "COMPLETE":
            text = None
            if record["makes_run"]:
                try:
                    text = pull(service, kernel["slug"], record["run_id"], target)
                except LaunchError as exc:
                    print(f"launch kaggle: nothing pulled: {exc}", file=sys.stderr)
            text = service.kernel_log(kernel["slug"]) if text is None else text
            print(f"launch kaggle: kernel {service.owner}/{kernel['slug']} ended {kernel['state'].lower()}"
                  f"{': ' + kernel['failure'] if kernel['failure'] else ''}. Last lines of its log:\n{log_tail(text)}", file=sys.stderr)
            return 1
        if not record["makes_run"]:
            return 0
        pull(service, kernel["slug"], record["run_id"], target)
        info = run_info(target)
        if info.get("status") != "incomplete":
            return 0 if info.get("status") == "complete" else 1
        kernel["global_step"] = info.get("global_step", 0)
        write_record(run_dir, record)
        if len(kernels) > 1 and kernel["global_step"] <= kernels[-2].get("global_step", 0):
            raise LaunchError(f"kernel {kernel['slug']} made no progress within its time budget (still at step {kernel['global_step']}); "
                              f"give the job a larger --time-budget, then: launch kaggle {record['job']} --resume {run_dir}")
        if len(kernels) >= allowed:
            print(f"launch kaggle: run still incomplete after {options.max_continuations} continuations; "
                  f"continue with: launch kaggle {record['job']} --resume {run_dir}", file=sys.stderr)
            return 3
        push(service, record, run_dir, options, part, resume=True)


def drive(service: KaggleService, record: dict, run_dir: Path, options: argparse.Namespace) -> int:
    """Every slice to its end (they run side by side on Kaggle); then merge the slices, if several."""
    codes = [drive_chain(service, record, run_dir, options, part) for part in range(record["parts"])]
    if any(codes):
        return max(codes)
    if record["parts"] > 1:
        merge = subprocess.run([sys.executable, "-m", JOBS[record["job"]].module, "--merge-slices", str(run_dir)])
        if merge.returncode != 0:
            return merge.returncode
    if record["makes_run"]:
        print(summarize(run_dir, "kaggle"), flush=True)
    return 0


def push(service: KaggleService, record: dict, run_dir: Path, options: argparse.Namespace, part: int, resume: bool) -> None:
    earlier = chain(record, part)
    slug = record["kernel_base"] + (f"-s{part}" if record["parts"] > 1 else "") + (f"-c{len(earlier)}" if earlier else "")
    plan = {**record["plan"], "kernel": f"{service.owner}/{slug}", "resume": resume,
            "slice": [part, record["parts"]] if record["parts"] > 1 else None}
    previous = [f"{service.owner}/{earlier[-1]['slug']}"] if resume else []
    for dataset in record["datasets"]:
        service.wait_dataset_ready(dataset.split("/", 1)[1], options.dataset_timeout, options.poll_interval)
    with tempfile.TemporaryDirectory(prefix="streamapprox-kernel-") as folder:
        write_kernel(Path(folder), service.owner, slug, plan, options, record["datasets"], previous)
        url = service.push_kernel(Path(folder))
    record["kernels"].append({"slug": slug, "part": part, "url": url, "pushed_at": now(), "state": "QUEUED", "continuation": resume})
    write_record(run_dir, record)
    print(f"launch kaggle: pushed kernel {service.owner}/{slug}{' (continuation)' if resume else ''}: {url}", flush=True)


# -- the command -------------------------------------------------------------------------------
def bundled_file_arguments(job_args: list[str], bundle: code_bundle.Bundle, carried: set[str] = frozenset()) -> list[str]:
    """A job argument naming a local file (a sweep's --space my.yaml, a --set key=my.json value)
    reaches the kernel only inside the code bundle: rewrite it relative to the project root, or refuse
    before anything is pushed. Inputs that travel as datasets (``carried`` locations) are left as they are."""
    def bundled(text: str) -> str:
        try:
            rel = Path(text).resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            rel = None
        if rel not in bundle.files:
            raise LaunchError(f"{text}: a local file the job needs is not in the code bundle (only git-tracked files of "
                              f"{REPO_ROOT} travel); put it in the project and `git add` it, or use a bundled name")
        return rel

    rewritten = []
    for arg in job_args:
        key, _, value = arg.rpartition("=")
        if arg in carried or value in carried:
            rewritten.append(arg)
        elif not arg.startswith("-") and key and Path(value).is_file():
            rewritten.append(f"{key}={bundled(value)}")
        elif not arg.startswith("-") and not key and Path(arg).is_file():
            rewritten.append(bundled(arg))
        else:
            rewritten.append(arg)
    return rewritten


def split_budget(job_args: list[str], options: argparse.Namespace) -> tuple[list[str], float]:
    """The job's --time-budget (or the session limit minus the margin) becomes the kernel's budget."""
    given = option_value(job_args, "--time-budget")
    rest = [a for i, a in enumerate(job_args) if not (a == "--time-budget" or a.startswith("--time-budget=")
                                                       or (i and job_args[i - 1] == "--time-budget"))]
    budget = float(given) if given else options.session_limit - options.margin
    if budget <= 0 or budget > options.session_limit:
        raise LaunchError(f"time budget {budget:.0f} s must be positive and within the session limit ({options.session_limit:.0f} s)")
    return rest, budget


def resume(service: KaggleService, run_dir: Path, options: argparse.Namespace) -> int:
    """Follow a run again (from another shell, after Ctrl-C), or continue one left incomplete."""
    record = read_record(run_dir)
    for part in range(record["parts"]):
        if chain(record, part)[-1].get("state") == "COMPLETE" and run_info(part_dir(record, run_dir, part)).get("status") == "incomplete":
            push(service, record, run_dir, options, part, resume=True)
    return drive(service, record, run_dir, options)


# -- launch status / logs / pull RUN -----------------------------------------------------------
def show_status(record: dict, run_dir: Path) -> int:
    service = KaggleService(record["owner"])
    for kernel in record["kernels"]:
        state = service.kernel_state(kernel["slug"])
        kernel["state"] = state.status
        print(f"kernel {service.owner}/{kernel['slug']}: {state.status.lower()}{' - ' + state.failure if state.failure else ''}")
    write_record(run_dir, record)
    print(summarize(run_dir, "kaggle") if (run_dir / "run.json").is_file() else "run directory not pulled yet: launch pull " + str(run_dir))
    return 0


def show_logs(record: dict, run_dir: Path) -> int:
    service = KaggleService(record["owner"])
    for kernel in record["kernels"]:
        print(f"==> kernel {service.owner}/{kernel['slug']} <==")
        print(service.kernel_log(kernel["slug"]), end="", flush=True)
    return 0


def pull_run(record: dict, run_dir: Path) -> int:
    service = KaggleService(record["owner"])
    for part in range(record["parts"]):
        kernel = chain(record, part)[-1]
        state = service.kernel_state(kernel["slug"])
        if not state.finished:
            print(f"kernel {service.owner}/{kernel['slug']} is {state.status.lower()}; its outputs exist once it ends", file=sys.stderr)
            return 1
        kernel["state"] = state.status
        write_record(run_dir, record)
        pull(service, kernel["slug"], record["run_id"], part_dir(record, run_dir, part))
    print(summarize(run_dir, "kaggle"))
    return 0


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    service = KaggleService(options.owner)  # no credentials: stop here, before anything else
    resumed = option_value(job_args, "--resume")
    if resumed:
        return resume(service, Path(resumed), options)
    if option_value(job_args, "--run-dir"):
        raise LaunchError("launch kaggle names the run itself; drop --run-dir (the run comes back to --runs-dir/<run-id>)")
    if options.num_kernels > 1 and not spec.sliceable:
        sliceable = ", ".join(n for n, s in JOBS.items() if s.sliceable)
        raise LaunchError(f"{name} does not split into slices; --num-kernels N works with: {sliceable}")
    job_args, budget = split_budget(job_args, options) if spec.resumable else (job_args, 0.0)
    inputs = job_inputs(spec, job_args)
    bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb)
    job_args = bundled_file_arguments(job_args, bundle, {value["location"] for value in inputs.values()})
    uploader = Uploader(service, options)
    code = uploader.code(bundle)
    carried = {key: uploader.carry(key, value) for key, value in inputs.items() if not value["regenerable"]}
    requirements = kernel_requirements(spec)
    wheels = uploader.wheels(requirements) if options.no_internet else None
    datasets = [code["dataset"], *(c["dataset"] for c in carried.values()), *([wheels["dataset"]] if wheels else [])]
    print(f"launch kaggle: uploaded {uploader.bytes_uploaded} bytes of datasets", flush=True)

    run_id = new_run_id(name)
    run_dir = Path(options.runs_dir) / run_id
    run_dir.mkdir(parents=True)
    plan = {"run_id": run_id, "job": name, "job_args": job_args, "bundle": code, "inputs": carried, "requirements": requirements,
            "internet": not options.no_internet, "wheels": wheels, "time_budget_s": budget, "mixed_precision": options.mixed_precision}
    record = {"backend": "kaggle", "run_id": run_id, "job": name, "owner": service.owner, "makes_run": spec.makes_run,
              "kernel_base": slugify(run_id), "accelerator": options.accelerator, "datasets": datasets, "plan": plan,
              "kernels": [], "parts": options.num_kernels, "created_at": now(), "bytes_uploaded": uploader.bytes_uploaded}
    for part in range(options.num_kernels):
        push(service, record, run_dir, options, part, resume=False)
    if options.detach:
        print(f"launch kaggle: detached; follow with: launch status {run_dir} | launch logs {run_dir} | launch pull {run_dir}")
        return 0
    return drive(service, record, run_dir, options)
