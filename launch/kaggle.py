"""``launch kaggle JOB``: run any job on Kaggle kernels and bring its run directory back.

1. credentials (the kaggle package's own chain), the job's own ``--check`` and the GPU quota, before any upload;
2. the code bundle and the job's inputs as private datasets of packs that Kaggle keeps as they are
   (``launch.kaggle_upload``), each uploaded once; shard sets that extraction kernels left on Kaggle
   (``data.shards=kaggle://...``) are mounted from those kernels instead;
3. kernels pushed as Kaggle allows -- at most ``--max-gpu-sessions`` (2) GPU sessions at a time, so a
   fan-out runs in waves and a refused push waits for a free session -- and followed, logs streamed;
4. each finished kernel's ``/kaggle/working/<run-id>`` pulled into ``runs/<run-id>`` through sync (digest-checked,
   interrupted downloads resumed), its GPU hours written into the quota ledger;
5. a run left ``incomplete`` by its time budget continues in a new kernel that mounts the previous
   kernel's output, up to ``--max-continuations``; the slices of a fan-out are merged here at the end.

Exit codes: 0 complete; 1 a kernel or its job failed; 2 refused before anything ran; 3 not complete here
(continuations used up, or the pull failed): ``launch kaggle JOB --resume RUN`` or ``launch pull RUN`` continues.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_shards.files import atomic_write_text
from jobs import JOBS, JobSpec, new_run_id, now
from launch import bundle as code_bundle
from launch import carry, kaggle_quota
from launch.inputs import job_inputs
from launch.kaggle_api import GpuSessionsBusy, KaggleService, TERMINAL
from launch.kaggle_remote import KERNEL_RECORD
from launch.kaggle_upload import Uploader, kernel_requirements
from launch.local import REPO_ROOT, LaunchError, option_value, summarize
from launch.runs import read_record, write_record

log = logging.getLogger("streamapprox.kaggle")
ACCELERATORS = {"t4x2": "NvidiaTeslaT4", "p100": "NvidiaTeslaP100", "none": None}  # Kaggle machine shapes
SESSION_LIMIT_S = 12 * 3600
MAX_GPU_SESSIONS = 2  # Kaggle runs at most two GPU sessions of an account at a time
INCOMPLETE_EXIT = 3


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
    parser.add_argument("--max-gpu-sessions", type=int, default=MAX_GPU_SESSIONS,
                        help=f"GPU kernels running at once (Kaggle allows {MAX_GPU_SESSIONS}); more kernels run in waves")
    parser.add_argument("--gpu-session-wait", type=float, default=3600,
                        help="seconds to keep retrying a push Kaggle refuses for want of a free GPU session (default 3600)")
    parser.add_argument("--quota-hours", type=float,
                        help="refuse, before anything is pushed, a launch whose GPU hours could take this week's total past this")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be uploaded and pushed, the kernels' waves and the GPU hours; do nothing")
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


# -- the kernel --------------------------------------------------------------------------------
ENTRY_MAIN = """
# -- StreamApprox kernel entry (generated by `launch kaggle`; no credentials inside). Everything above is
# launch/carry.py, so that the code can come out of its packs before any of it is importable.
import sys  # noqa: E402

PLAN = json.loads({plan!r})
ROOT = Path(os.environ.get("STREAMAPPROX_KAGGLE_ROOT", "/kaggle"))


def unpack_code() -> Path:
    try:
        code = Path(tempfile.gettempdir()) / "streamapprox-code"
        unpack(find(ROOT / "input", PLAN["bundle"]["digest"]), code)
        return code
    except PackError as exc:
        raise SystemExit(f"[streamapprox] error: the code bundle (dataset {{PLAN['bundle']['dataset']}}): {{exc}}")


CODE = unpack_code()
sys.path.insert(0, str(CODE))
from launch.kaggle_remote import main  # noqa: E402

sys.exit(main(PLAN, ROOT, CODE))
"""


def entry_script(plan: dict) -> str:
    """``entry.py``: the pack reader (``launch/carry.py`` as it is) followed by the few lines that unpack the code."""
    return Path(carry.__file__).read_text() + ENTRY_MAIN.format(plan=json.dumps(plan, sort_keys=True))


def write_kernel(folder: Path, owner: str, slug: str, plan: dict, accelerator: str, internet: bool, datasets: list[str],
                 kernels: list[str]) -> None:
    shape = ACCELERATORS[accelerator]
    metadata = {
        "id": f"{owner}/{slug}", "title": slug, "code_file": "entry.py", "language": "python", "kernel_type": "script",
        "is_private": True, "enable_gpu": shape is not None, "enable_internet": internet,
        "dataset_sources": datasets, "kernel_sources": kernels, "competition_sources": [], "model_sources": [],
    }
    if shape:
        metadata["machine_shape"] = shape
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / "entry.py").write_text(entry_script(plan))


# -- a run's kernels ---------------------------------------------------------------------------
def chain(record: dict, part: int) -> list[dict]:
    """The kernels of one slice, first push then its continuations."""
    return [k for k in record["kernels"] if k.get("part", 0) == part]


def part_dir(record: dict, run_dir: Path, part: int) -> Path:
    return run_dir / "slices" / str(part) if record["parts"] > 1 else run_dir


def run_info(run_dir: Path) -> dict:
    """The pulled run.json ({} before anything came back)."""
    path = run_dir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def log_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def pull(service: KaggleService, slug: str, run_id: str, run_dir: Path) -> tuple[str, dict | None]:
    """The kernel's run directory through sync (every output page, sha256-checked, interrupted downloads
    resumed), its log and its record; returns both."""
    from sync import SyncError, sync
    from sync.kaggle import KaggleKernelOutputStore

    kernel_record = None
    try:
        report = sync(f"kaggle://{service.owner}/{slug}/{run_id}", str(run_dir))
        print(f"launch kaggle: {report.summary()}", flush=True)
        outputs = KaggleKernelOutputStore(f"kaggle://{service.owner}/{slug}", service.owner, slug)
        listed = outputs.list()
        if KERNEL_RECORD in listed:
            target = run_dir / "logs" / f"kaggle-{slug}.json"
            outputs.download(KERNEL_RECORD, target, listed[KERNEL_RECORD], lambda n: None)
            kernel_record = json.loads(target.read_text())
    except SyncError as exc:
        raise LaunchError(f"pulling the outputs of {service.owner}/{slug}: {exc}") from None
    text = service.kernel_log(slug)
    atomic_write_text(run_dir / "logs" / f"kaggle-{slug}.log", text)
    return text, kernel_record


class Driver:
    """Pushes a run's kernels as Kaggle lets it, follows them side by side, pulls each one as it ends and
    continues a slice its budget stopped. One loop with one poll interval (backing off while nothing happens)."""

    def __init__(self, service: KaggleService, record: dict, run_dir: Path, options: argparse.Namespace):
        self.service, self.record, self.run_dir, self.options = service, record, run_dir, options
        self.gpu = ACCELERATORS[record["accelerator"]] is not None
        self.shown: dict[str, int] = {}  # kernel slug -> characters of its log printed
        self.codes: dict[int, int] = {}  # slice -> exit code, once it is settled
        self.waiting_since: float | None = None  # a push Kaggle refused for want of a GPU session
        # kernels a slice may have in all: those it has (at least the first) and --max-continuations more
        self.allowed = {part: max(len(chain(record, part)), 1) + options.max_continuations for part in range(record["parts"])}

    def say(self, message: str, error: bool = False) -> None:
        print(f"launch kaggle: {message}", file=sys.stderr if error else sys.stdout, flush=True)

    def push(self, part: int) -> None:
        record, service = self.record, self.service
        earlier = chain(record, part)
        resume = bool(earlier)
        slug = record["kernel_base"] + (f"-s{part}" if record["parts"] > 1 else "") + (f"-c{len(earlier)}" if earlier else "")
        plan = {**record["plan"], "kernel": f"{service.owner}/{slug}", "resume": resume,
                "slice": [part, record["parts"]] if record["parts"] > 1 else None}
        sources = [*record.get("kernel_sources", []), *([f"{service.owner}/{earlier[-1]['slug']}"] if resume else [])]
        for dataset in record["datasets"]:
            service.wait_dataset_ready(dataset.split("/", 1)[1], self.options.dataset_timeout, self.options.poll_interval)
        with tempfile.TemporaryDirectory(prefix="streamapprox-kernel-") as folder:
            write_kernel(Path(folder), service.owner, slug, plan, record["accelerator"], record["plan"]["internet"], record["datasets"],
                         sources)
            url = service.push_kernel(Path(folder))
        record["kernels"].append({"slug": slug, "part": part, "url": url, "pushed_at": now(), "state": "QUEUED", "continuation": resume})
        write_record(self.run_dir, record)
        self.say(f"pushed kernel {service.owner}/{slug}{' (continuation)' if resume else ''}: {url}")

    def waiting_parts(self) -> list[int]:
        """Slices to push: never pushed, or their last kernel finished an incomplete run with continuations left."""
        return [part for part in range(self.record["parts"]) if part not in self.codes
                and (not chain(self.record, part) or chain(self.record, part)[-1].get("continue"))]

    def active(self) -> list[dict]:
        return [k for k in self.record["kernels"] if k.get("state") not in TERMINAL]

    def push_waiting(self) -> None:
        for part in self.waiting_parts():
            if self.gpu and len(self.active()) >= self.options.max_gpu_sessions:
                return
            try:
                self.push(part)
                self.waiting_since = None
            except GpuSessionsBusy as exc:
                if self.waiting_since is None:
                    self.waiting_since = time.monotonic()
                    self.say(f"{exc}; waiting for one of the account's GPU sessions to end (up to {self.options.gpu_session_wait:.0f} s)")
                elif time.monotonic() - self.waiting_since > self.options.gpu_session_wait and not self.active():
                    for waiting in self.waiting_parts():
                        self.codes[waiting] = 1
                    self.say(f"no GPU session became free within {self.options.gpu_session_wait:.0f} s; continue later with: "
                             f"launch kaggle {self.record['job']} --resume {self.run_dir}", error=True)
                return

    def poll(self, kernel: dict) -> bool:
        """One status poll of a running kernel; prints its new log text; True when something happened."""
        state = self.service.kernel_state(kernel["slug"])
        changed = state.status != kernel.get("state")
        if changed:
            self.say(f"kernel {self.service.owner}/{kernel['slug']}: {state.status.lower()}")
            kernel["state"] = state.status
        text = self.service.kernel_log(kernel["slug"]) if state.status != "QUEUED" else ""
        shown = self.shown.get(kernel["slug"], 0)
        if len(text) > shown:
            prefix = f"[s{kernel['part']}] " if self.record["parts"] > 1 else ""
            sys.stdout.write("".join(prefix + line for line in text[shown:].splitlines(keepends=True)))
            sys.stdout.flush()
            self.shown[kernel["slug"]] = len(text)
            changed = True
        if state.finished:
            kernel.update(state=state.status, failure=state.failure, finished_at=now())
        write_record(self.run_dir, self.record)
        return changed

    def settle(self, kernel: dict) -> None:
        """A kernel ended: pull it, count its GPU hours, then decide its slice's fate."""
        record, part = self.record, kernel["part"]
        target = part_dir(record, self.run_dir, part)
        text, kernel_record = None, None
        if record["makes_run"] or kernel["state"] != "COMPLETE":
            try:
                text, kernel_record = pull(self.service, kernel["slug"], record["run_id"], target)
            except LaunchError as exc:
                if kernel["state"] == "COMPLETE":
                    self.codes[part] = INCOMPLETE_EXIT
                    kernel["pulled"] = False
                    self.say(f"kernel {kernel['slug']} finished, but {exc}. Continue with: launch pull {self.run_dir}", error=True)
                    return self._count(kernel, None)
                self.say(f"nothing pulled: {exc}", error=True)
        kernel["pulled"] = True
        self._count(kernel, kernel_record)
        if kernel["state"] != "COMPLETE":
            text = self.service.kernel_log(kernel["slug"]) if text is None else text
            self.say(f"kernel {self.service.owner}/{kernel['slug']} ended {kernel['state'].lower()}"
                     f"{': ' + kernel['failure'] if kernel.get('failure') else ''}. Last lines of its log:\n{log_tail(text)}", error=True)
            self.codes[part] = 1
            return
        if not record["makes_run"]:
            self.codes[part] = 0
            return
        info = run_info(target)
        if info.get("status") != "incomplete":
            self.codes[part] = 0 if info.get("status") == "complete" else 1
            return
        kernels = chain(record, part)
        kernel["global_step"] = info.get("global_step", 0)
        if len(kernels) > 1 and kernel["global_step"] <= kernels[-2].get("global_step", 0):
            self.codes[part] = INCOMPLETE_EXIT
            self.say(f"kernel {kernel['slug']} made no progress within its time budget (still at step {kernel['global_step']}); give "
                     f"the job a larger --time-budget, then: launch kaggle {record['job']} --resume {self.run_dir}", error=True)
        elif len(kernels) >= self.allowed[part]:
            self.codes[part] = INCOMPLETE_EXIT
            self.say(f"run still incomplete after {len(kernels) - 1} continuations; continue with: "
                     f"launch kaggle {record['job']} --resume {self.run_dir}", error=True)
        else:
            kernel["continue"] = True

    def _count(self, kernel: dict, kernel_record: dict | None) -> None:
        if self.gpu and not kernel.get("gpu_hours"):
            kernel["gpu_hours"] = round(kaggle_quota.record_kernel(self.service.owner, kernel, self.record["run_id"],
                                                                   self.record["accelerator"], kernel_record), 4)
        write_record(self.run_dir, self.record)

    def run(self) -> int:
        for kernel in self.record["kernels"]:  # kernels that ended while nobody followed them
            if kernel.get("state") in TERMINAL and not kernel.get("pulled") and kernel is chain(self.record, kernel["part"])[-1]:
                self.settle(kernel)
        delay = self.options.poll_interval
        while True:
            self.push_waiting()
            if not self.active() and not self.waiting_parts():
                break
            changed = False
            for kernel in self.active():
                if self.poll(kernel):
                    changed = True
                if kernel["state"] in TERMINAL:
                    self.settle(kernel)
            if changed:
                delay = self.options.poll_interval
            else:
                time.sleep(delay)
                delay = min(delay * 1.5, self.options.poll_interval * 6)
        for kernel in self.record["kernels"]:
            kernel.pop("continue", None)
        write_record(self.run_dir, self.record)
        code = max(self.codes.values(), default=0)
        if code:
            return code
        if self.record["parts"] > 1:
            merge = subprocess.run([sys.executable, "-m", JOBS[self.record["job"]].module, "--merge-slices", str(self.run_dir)])
            if merge.returncode != 0:
                return merge.returncode
        if self.record["makes_run"]:
            print(summarize(self.run_dir, "kaggle"), flush=True)
            self.say_reuse()
        return 0

    def say_reuse(self) -> None:
        """After an extraction: how to train on its shards where they are, without downloading them."""
        if self.record["job"] != "extract":
            return
        last = [chain(self.record, part)[-1]["slug"] for part in range(self.record["parts"])]
        urls = ",".join(f"kaggle://{self.service.owner}/{slug}/{self.record['run_id']}/shards" for slug in last)
        self.say(f"train on these shards on Kaggle without moving them: launch kaggle train_mlp --set data.shards={urls}")


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


def planned_gpu_hours(options: argparse.Namespace, spec: JobSpec, budget: float) -> float:
    """The most GPU hours a launch can use: every kernel to its budget plus the margin (capped by the session
    limit), and every continuation it is allowed."""
    if ACCELERATORS[options.accelerator] is None:
        return 0.0
    per_kernel = min(options.session_limit, budget + options.margin) if spec.resumable else options.session_limit
    chain_length = 1 + options.max_continuations if spec.resumable else 1
    return options.num_kernels * chain_length * per_kernel / 3600


def check_options(name: str, spec: JobSpec, options: argparse.Namespace) -> None:
    if options.num_kernels < 1 or options.max_gpu_sessions < 1 or options.max_continuations < 0:
        raise LaunchError("--num-kernels and --max-gpu-sessions must be at least 1, --max-continuations at least 0")
    if options.num_kernels > 1 and not spec.sliceable:
        sliceable = ", ".join(n for n, s in JOBS.items() if s.sliceable)
        raise LaunchError(f"{name} does not split into slices; --num-kernels N works with: {sliceable}")


def describe_plan(service: KaggleService, options: argparse.Namespace, uploader: Uploader, planned: float, budget: float) -> None:
    """What ``--dry-run`` prints: uploads, kernels, waves, time and GPU hours."""
    shape = ACCELERATORS[options.accelerator]
    waves = -(-options.num_kernels // options.max_gpu_sessions) if shape else 1
    print("launch kaggle (dry run): nothing is uploaded or pushed")
    for dataset, size in uploader.planned:
        print(f"  upload: {dataset} ({size / 1e6:.1f} MB)" if size else f"  upload: {dataset} (built here first)")
    if not uploader.planned:
        print("  upload: nothing (code and inputs are already on Kaggle)")
    print(f"  kernels: {options.num_kernels} x {options.accelerator} ({shape or 'CPU'})"
          + (f", at most {options.max_gpu_sessions} at a time: {waves} wave{'s' if waves > 1 else ''}" if shape else ""))
    print(f"  each kernel: a budget of {budget / 3600:.2f} h (session limit {options.session_limit / 3600:g} h), "
          f"up to {options.max_continuations} continuation(s)")
    print(f"  {kaggle_quota.usage_line(service.owner, planned, options.quota_hours)}")


def resume(service: KaggleService, run_dir: Path, options: argparse.Namespace) -> int:
    """Follow a run again (from another shell, after Ctrl-C), continue one left incomplete, push slices never pushed."""
    record = read_record(run_dir)
    for part in range(record["parts"]):
        kernels = chain(record, part)
        if kernels and kernels[-1].get("state") == "COMPLETE" and kernels[-1].get("pulled") \
                and run_info(part_dir(record, run_dir, part)).get("status") == "incomplete":
            kernels[-1]["continue"] = True
    return Driver(service, record, run_dir, options).run()


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    service = KaggleService(options.owner)  # no credentials: stop here, before anything else
    resumed = option_value(job_args, "--resume")
    if resumed:
        return resume(service, Path(resumed), options)
    if option_value(job_args, "--run-dir"):
        raise LaunchError("launch kaggle names the run itself; drop --run-dir (the run comes back to --runs-dir/<run-id>)")
    check_options(name, spec, options)
    job_args, budget = split_budget(job_args, options) if spec.resumable else (job_args, options.session_limit - options.margin)
    inputs = job_inputs(spec, job_args)
    planned = planned_gpu_hours(options, spec, budget)
    if options.quota_hours is not None and kaggle_quota.used_hours(service.owner) + planned > options.quota_hours:
        raise LaunchError(f"{kaggle_quota.usage_line(service.owner, planned, options.quota_hours)}: over the limit. Lower --time-budget, "
                          "--max-continuations or --num-kernels, or raise --quota-hours; nothing was uploaded or pushed")
    bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb)
    job_args = bundled_file_arguments(job_args, bundle, {value["location"] for value in inputs.values()})
    uploader = Uploader(service, options, dry_run=options.dry_run)
    code = uploader.code(bundle)
    carried = {key: value for key, value in inputs.items() if value.get("kind") == "kaggle_outputs"}
    carried.update({key: uploader.carry(key, value) for key, value in inputs.items() if not value["regenerable"] and key not in carried})
    requirements = kernel_requirements(spec)
    wheels = uploader.wheels(requirements) if options.no_internet else None
    if options.dry_run:
        describe_plan(service, options, uploader, planned, budget)
        return 0
    print(f"launch kaggle: {kaggle_quota.usage_line(service.owner, planned, options.quota_hours)}", flush=True)
    datasets = [code["dataset"], *(c["dataset"] for c in carried.values() if "dataset" in c), *([wheels["dataset"]] if wheels else [])]
    kernel_sources = sorted({s["kernel"] for c in carried.values() for s in c.get("sources", [])})
    print(f"launch kaggle: uploaded {uploader.bytes_uploaded} bytes of datasets", flush=True)

    run_id = new_run_id(name)
    run_dir = Path(options.runs_dir) / run_id
    run_dir.mkdir(parents=True)
    plan = {"run_id": run_id, "job": name, "job_args": job_args, "bundle": code, "inputs": carried, "requirements": requirements,
            "internet": not options.no_internet, "wheels": wheels, "time_budget_s": budget if spec.resumable else 0.0,
            "mixed_precision": options.mixed_precision}
    record = {"backend": "kaggle", "run_id": run_id, "job": name, "owner": service.owner, "makes_run": spec.makes_run,
              "kernel_base": slugify(run_id), "accelerator": options.accelerator, "datasets": datasets, "kernel_sources": kernel_sources,
              "plan": plan, "kernels": [], "parts": options.num_kernels, "created_at": now(), "bytes_uploaded": uploader.bytes_uploaded,
              "planned_gpu_hours": round(planned, 2)}
    write_record(run_dir, record)
    driver = Driver(service, record, run_dir, options)
    if options.detach:
        driver.push_waiting()
        print(f"launch kaggle: detached with {len(record['kernels'])} of {record['parts']} kernels pushed; follow (and push the rest) "
              f"with: launch kaggle {name} --resume {run_dir} | launch status {run_dir} | launch logs {run_dir}")
        return 0
    return driver.run()


# -- launch status / logs / pull RUN -----------------------------------------------------------
def show_status(record: dict, run_dir: Path) -> int:
    service = KaggleService(record["owner"])
    for kernel in record["kernels"]:
        state = service.kernel_state(kernel["slug"])
        kernel["state"] = state.status
        print(f"kernel {service.owner}/{kernel['slug']}: {state.status.lower()}{' - ' + state.failure if state.failure else ''}")
    waiting = [part for part in range(record["parts"]) if not chain(record, part)]
    if waiting:
        print(f"{len(waiting)} slice(s) not pushed yet: launch kaggle {record['job']} --resume {run_dir}")
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
        kernels = chain(record, part)
        if not kernels:
            print(f"slice {part} was never pushed; launch kaggle {record['job']} --resume {run_dir} pushes it", file=sys.stderr)
            return INCOMPLETE_EXIT
        kernel = kernels[-1]
        state = service.kernel_state(kernel["slug"])
        if not state.finished:
            print(f"kernel {service.owner}/{kernel['slug']} is {state.status.lower()}; its outputs exist once it ends", file=sys.stderr)
            return 1
        kernel["state"] = state.status
        try:
            pull(service, kernel["slug"], record["run_id"], part_dir(record, run_dir, part))
        except LaunchError as exc:
            print(f"launch kaggle: {exc}. Try again: launch pull {run_dir}", file=sys.stderr)
            return INCOMPLETE_EXIT
        kernel["pulled"] = True
        write_record(run_dir, record)
    print(summarize(run_dir, "kaggle"))
    return 0
