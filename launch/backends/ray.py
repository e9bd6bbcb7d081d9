"""``launch ray JOB --address http://HEAD:8265 --storage URL``: a Ray cluster, through Ray Jobs.

The code bundle is the job's ``runtime_env`` working_dir (with the bundle's size guard); inputs are never uploaded:
shards and videos are read where the cluster sees them (an absolute path it shares, or a URL) and synthetic shards
are regenerated there. The entrypoint (``launch.compute.ray_entry``) runs the job -- under ``accelerate launch`` for
distributed jobs, one process per entrypoint GPU, or across nodes with Ray Train (``--num-workers``) -- and copies
the run directory to ``--storage`` (``s3://`` or a path every node mounts; the cluster's own credentials), from where
it is pulled. ``launch ray sweep`` runs the Tune driver as the job, so its trials spread over the cluster's nodes.
A run continued here (``--resume``) is pushed to its storage first and restored from there.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import cache_root
from jobs import JOBS
from jobs.contract import FileInput, FolderInput, JobInput
from launch.accelerate import PRECISIONS
from pydantic import BaseModel

from launch.backends.base import Backend, BackendOptions, Handle, Job, Plan, Run
from launch.bundle import Bundle
from launch.errors import Incomplete, LaunchError
from launch.inputs import Staged, left_behind, staged_form
from launch.record import Unit
from launch.transports.ray_jobs import RayJobs
from tune.storage import RAY_OWNED

PROBE_WAIT_S = 300
ENDED_CHECK_S = 1.0  # while a job runs, how often its state is asked between polls (a cheap call to the Jobs API)


@dataclass
class RayOptions(BackendOptions):
    address: str | None = None  # None: $RAY_JOBS_ADDRESS
    storage: str | None = None
    entrypoint_num_cpus: float | None = None  # None: the job's own
    entrypoint_num_gpus: float = 0
    num_workers: int | None = None  # None: no Ray Train
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    placement_strategy: str = "PACK"
    max_failures: int = 2
    mixed_precision: str = "auto"


class RayTrain(BaseModel):
    """Training across the cluster's nodes with Ray Train (``--num-workers``)."""

    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    placement_strategy: str
    max_failures: int


class RayPlan(Plan):
    address: str
    storage: str  # the run's own place in --storage
    working_dir: str  # the code bundle as the jobs' runtime_env
    bundle: str
    cpus: float
    gpus: float
    precision: str
    train: RayTrain | None = None


class RayHandle(Handle):
    submission_id: str


class Ray(Backend):
    name = "ray"
    help = "a Ray cluster through Ray Jobs (--address http://HEAD:8265 --storage URL); the run comes back to ./runs"
    Options = RayOptions
    options: RayOptions

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        defaults = RayOptions()
        parser.add_argument("--address", default=os.environ.get("RAY_JOBS_ADDRESS"),
                            help="the cluster's dashboard / Jobs API, e.g. http://HEAD:8265 (default: $RAY_JOBS_ADDRESS)")
        parser.add_argument("--storage",
                            help="where the cluster writes the run directory: s3://BUCKET/PREFIX, or an absolute path every node "
                            "(and you) mount; sweeps and --num-workers persist through Ray there, from every node")
        parser.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver (default: the job's)")
        parser.add_argument("--entrypoint-num-gpus", type=float, default=defaults.entrypoint_num_gpus,
                            help="GPUs for the job's driver; a distributed job runs one process per GPU")
        parser.add_argument("--num-workers", type=int,
                            help="train across the cluster: N Ray Train workers (on several nodes if needed), one process each")
        parser.add_argument("--gpus-per-worker", type=float, default=defaults.gpus_per_worker,
                            help="with --num-workers: GPUs per worker (default 0: CPU)")
        parser.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker,
                            help="with --num-workers: CPUs per worker (default 1)")
        parser.add_argument("--placement-strategy", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), default=defaults.placement_strategy,
                            help="with --num-workers: how Ray places the workers (PACK: as few nodes as possible; SPREAD: across nodes)")
        parser.add_argument("--max-failures", type=int, default=defaults.max_failures,
                            help="with --num-workers: restarts of the worker group (from the last epoch's checkpoint) after a failure")
        parser.add_argument("--mixed-precision", choices=PRECISIONS, default=defaults.mixed_precision,
                            help="auto: bf16 on GPUs that have it, fp16 on others, none on CPU")

    def __init__(self, options: BackendOptions):
        super().__init__(options)
        self._jobs: RayJobs | None = None

    def jobs(self, address: str) -> RayJobs:
        if self._jobs is None or self._jobs.address != address:
            self._jobs = RayJobs(address)
        return self._jobs

    # -- before anything is sent ------------------------------------------------------------------
    def prepare(self, job: Job) -> None:
        options, spec = self.options, job.spec
        if not options.address:
            raise LaunchError("--address http://HEAD:8265 (or $RAY_JOBS_ADDRESS) names the cluster")
        if not options.storage:
            raise LaunchError("--storage s3://BUCKET/PREFIX (or an absolute path every node mounts) is where the run goes")
        if "://" not in options.storage and not Path(options.storage).is_absolute():
            raise LaunchError(f"--storage {options.storage}: give an absolute path every node mounts, or s3://BUCKET/PREFIX")
        if options.num_workers is not None and (options.num_workers < 1 or not spec.epoch_hook):
            raise LaunchError(f"--num-workers: {job.name} cannot train across nodes; Ray Train runs the training jobs "
                              f"({', '.join(n for n, s in JOBS.items() if s.epoch_hook)}) with N >= 1")
        self.jobs(options.address)

    # -- sending ----------------------------------------------------------------------------------
    def stage(self, job: Job, bundle: Bundle | None) -> RayPlan:
        options = self.options
        assert bundle is not None and options.address and options.storage  # sends_code; prepare refused them missing
        self.check_inputs(job)
        working_dir = bundle.write(cache_root() / "ray" / f"bundle-{bundle.digest[:16]}")
        storage_run = f"{options.storage.rstrip('/')}/{job.run_dir.name}"
        if job.name == "sweep" or options.num_workers:
            self.check_reach(str(working_dir), job)
        if job.carry_run:  # a run made elsewhere: into its storage, where the entrypoint restores it from
            from sync import SyncError, sync

            try:
                print(f"launch ray: {sync(str(job.run_dir), storage_run, select=carried).summary()}", flush=True)
            except SyncError as exc:
                raise LaunchError(f"--resume {job.run_dir}: copying it to {storage_run}: {exc}") from None
        relocated = self.send_inputs(job)
        cpus = options.entrypoint_num_cpus
        if cpus is None:
            cpus = 0 if options.num_workers else job.spec.driver_cpus
        train = RayTrain(workers=options.num_workers, gpus_per_worker=options.gpus_per_worker, cpus_per_worker=options.cpus_per_worker,
                         placement_strategy=options.placement_strategy, max_failures=options.max_failures) if options.num_workers else None
        return RayPlan(address=options.address, storage=storage_run, working_dir=str(working_dir), bundle=bundle.digest, cpus=cpus,
                       gpus=options.entrypoint_num_gpus, precision=options.mixed_precision, job_args=job.args, train=train,
                       relocated=relocated)

    def travels(self, spec: JobInput) -> bool:
        """A file or folder here that goes to ``--storage``: one the job also reads from s3://, or any when the storage
        is a path every node mounts."""
        assert self.options.storage
        return isinstance(spec, (FileInput, FolderInput)) and (spec.reads_urls or "://" not in self.options.storage)

    def send_inputs(self, job: Job) -> list[str]:
        """Files and folders of this machine the job names (encoder weights, split files, a checkpoint) go to
        ``--storage``/inputs/<content digest>/ -- once: a later launch finds them there and sends nothing -- and the job
        is pointed at them there. Returns those ``--set`` values."""
        from sync import SyncError, sync

        assert self.options.storage
        relocated = []
        for key, spec in job.inputs.items():
            if not self.travels(spec):
                continue
            staged = staged_form(spec)
            where = f"{self.options.storage.rstrip('/')}/inputs/{staged.name}"
            try:
                if holds(where, staged):
                    sent = 0
                else:
                    folder = cache_root() / "ray" / staged.name
                    staged.link(folder)
                    sent = sync(str(folder), where).bytes_moved
            except SyncError as exc:
                raise LaunchError(f"{key}={spec.location}: copying it to {where}: {exc}") from None
            print(f"launch ray: {key} as {where}: " + (f"{sent:,} bytes sent" if sent else "there already, 0 bytes sent"), flush=True)
            relocated += staged.assignments(key, where)
        return relocated

    def check_inputs(self, job: Job) -> None:
        """Inputs that do not travel are read in place on the cluster: they must be absolute paths (or URLs) it can see."""
        for key, spec in job.inputs.items():
            if self.travels(spec):
                continue
            if spec.kind == "kaggle_outputs":
                raise LaunchError(f"{key}={spec.location}: shards in Kaggle kernels' outputs are read where they are by launch kaggle "
                                  "only; copy them to storage the cluster shares first (launch sync URL s3://...)")
            if spec.location.startswith("ssh://"):
                raise LaunchError(f"{key}={spec.location}: read through this machine's ssh, which a Ray worker does not have; put it on "
                                  "storage the cluster shares (an absolute path there, or s3://)")
            if not spec.regenerable and "://" not in spec.location and not Path(spec.location).is_absolute():
                raise LaunchError(f"{key}={spec.location}: a Ray job reads inputs where the cluster sees them; give an absolute path "
                                  "on storage the cluster shares (nothing is uploaded besides the code)")

    def check_reach(self, working_dir: str, job: Job) -> None:
        """Work spread over nodes (a sweep's trials, Ray Train's workers) reads its inputs and writes its storage from
        every node: a path there must be a filesystem every node mounts. A probe job writes a marker in the storage
        path and asks every alive node whether it sees it and the input paths, before the job itself is submitted."""
        options = self.options
        assert options.address and options.storage  # prepare refused them missing
        storage = None if "://" in options.storage else options.storage.rstrip("/")
        paths = {key: spec.location for key, spec in job.inputs.items()
                 if not spec.regenerable and "://" not in spec.location and not self.travels(spec)}
        if storage is None and not paths:
            return
        command = ["python", "-m", "launch.compute.ray_entry", *(["--check-storage", storage] if storage else []),
                   *(arg for path in paths.values() for arg in ("--check-input", path))]
        jobs = self.jobs(options.address)
        probe = jobs.submit(" ".join(shlex.quote(a) for a in command), f"streamapprox_probe_{secrets.token_hex(4)}", 0, 0, working_dir,
                            {"streamapprox_job": "storage probe"})
        deadline = time.monotonic() + PROBE_WAIT_S
        while jobs.state(probe)[0] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(1)
        lines = [line for line in jobs.logs(probe).splitlines() if line.startswith('{"nodes"')]
        if not lines:
            raise LaunchError(f"{options.address}: the probe of the cluster's nodes did not finish; check the cluster")
        seen = json.loads(lines[-1])
        if storage in seen["blind"]:
            raise LaunchError(f"--storage {options.storage}: {len(seen['blind'][storage])} of the cluster's {seen['nodes']} nodes do not see "
                              "this path (it is on the head's disk, not a filesystem every node mounts); pass s3://BUCKET/PREFIX or a shared mount")
        for key, path in paths.items():
            if path in seen["blind"]:
                raise LaunchError(f"{key}={path}: {len(seen['blind'][path])} of the cluster's {seen['nodes']} nodes do not see it; put it on "
                                  "s3:// or a filesystem every node mounts")

    # -- a unit -----------------------------------------------------------------------------------
    def entrypoint(self, run: Run, unit: Unit) -> str:
        plan, spec = RayPlan.of(run), run.spec
        run_rel = f"runs/{run.record.run_id}"
        args = run.arguments(unit, run_rel)
        if spec.storage_arg:  # the job persists through Ray itself (a sweep), and restores from there on --resume
            args += ["--storage", plan.storage]
        entry = ["python", "-m", "launch.compute.ray_entry", "--run-dir", run_rel, "--storage", plan.storage, "--module", spec.module,
                 "--mixed-precision", plan.precision, *(["--restore"] if unit.resume and not spec.storage_arg else [])]
        train = plan.train
        if train:
            entry += ["--train-workers", str(train.workers), "--gpus-per-worker", str(train.gpus_per_worker),
                      "--cpus-per-worker", str(train.cpus_per_worker), "--placement-strategy", train.placement_strategy,
                      "--max-failures", str(train.max_failures)]
        elif spec.distributed:
            entry += ["--distributed", "--processes", str(max(int(plan.gpus), 1))]
        return " ".join(shlex.quote(a) for a in [*entry, "--", *args])

    def start(self, run: Run, unit: Unit) -> None:
        plan = RayPlan.of(run)
        if not Path(plan.working_dir, "BUNDLE.json").is_file():
            raise LaunchError(f"{plan.working_dir}: the code bundle this run was sent with is gone from the cache; start a new run")
        submission = run.record.run_id.replace("-", "_") + (f"_p{unit.part}" if run.record.parts > 1 else "") + \
            (f"_r{unit.attempt}" if unit.attempt else "")
        unit.name = self.jobs(plan.address).submit(self.entrypoint(run, unit), submission, plan.cpus, plan.gpus, plan.working_dir,
                                                   {"streamapprox_job": run.record.job, "bundle": plan.bundle[:16]})
        RayHandle(submission_id=unit.name).store(unit)

    def poll(self, run: Run, unit: Unit) -> tuple[str, str]:
        return self.jobs(RayPlan.of(run).address).state(RayHandle.of(unit).submission_id)

    def wait(self, run: Run, units: list[Unit], seconds: float) -> None:
        """Until the next poll, or until one of ``units`` leaves Ray's queued and running states: a job that ended is
        seen within a second, not at the end of a poll interval grown long while it ran quietly."""
        jobs, deadline = self.jobs(RayPlan.of(run).address), time.monotonic() + seconds
        ids = [RayHandle.of(unit).submission_id for unit in units]
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(ENDED_CHECK_S, left))
            try:
                if any(jobs.state(submission)[0] not in ("queued", "running") for submission in ids):
                    return
            except LaunchError:
                return  # the poll asks again and says what went wrong

    def log(self, run: Run, unit: Unit, offset: int) -> tuple[str, int]:
        text = self.jobs(RayPlan.of(run).address).logs(RayHandle.of(unit).submission_id)
        return text[offset:], len(text)

    def pull(self, run: Run, unit: Unit, target: Path) -> str:
        """The run directory from storage, without Ray's own state (``launch pull STORAGE_URL/<run-id> --only all`` brings it)."""
        from sync import SyncError, sync

        storage = RayPlan.of(run).storage
        try:
            return sync(storage, str(target), select=carried).summary()
        except SyncError as exc:
            raise Incomplete(f"pulling {storage}: {exc}") from None

    def stop(self, run: Run, unit: Unit) -> str:
        stopped = self.jobs(RayPlan.of(run).address).stop(RayHandle.of(unit).submission_id)
        return "stop requested" if stopped else "already finished"

    def where(self, run: Run) -> str:
        plan = RayPlan.of(run)
        return f"{plan.address} (the run goes to {plan.storage})"


def holds(where: str, staged: Staged) -> bool:
    """Whether storage at ``where`` already holds every file of ``staged`` with the sha256 the job's check found. Asked
    before ``sync``, which would hash each file here again: a whole read of a 4.8 GB checkpoint on every launch."""
    from sync import open_store

    store = open_store(where)
    present = store.list()
    return all(name in present and store.complete(name, present[name]).sha256 == digest for name, digest in staged.digests.items())


def carried(entries: dict) -> dict:
    """A run directory as it travels to and from storage: without Ray's own state, and without what belongs to the
    machine it is on (``launch.inputs.LEFT_BEHIND``)."""
    return {rel: entry for rel, entry in entries.items() if not rel.startswith(RAY_OWNED) and not left_behind(rel)}
