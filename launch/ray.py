"""``launch ray JOB --address http://HEAD:8265 --storage URL``: run a job on a Ray cluster through Ray Jobs.

The code bundle is the job's ``runtime_env`` working_dir (with the bundle's size guard); inputs are
never uploaded: shards and videos are read where the cluster sees them (an absolute path it shares)
and synthetic shards are regenerated there. The entrypoint (``launch.ray_remote``) runs the job --
under ``accelerate launch`` for distributed jobs, one process per entrypoint GPU -- and copies the run
directory to ``--storage`` (a shared path or ``s3://``; the cluster's own credentials) through sync,
from where ``launch pull`` brings it back. ``launch ray sweep`` runs the Tune driver as the job, so its
trials spread over the cluster's nodes. Ray's token authentication works as Ray's own clients do
(``RAY_AUTH_TOKEN``, ``~/.ray/auth_token``); the token never enters the bundle or the record.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

from data_shards.files import cache_root
from jobs import JOBS, JobSpec, new_run_id, now
from launch import bundle as code_bundle
from launch.inputs import job_inputs
from launch.local import REPO_ROOT, LaunchError, option_value, summarize
from launch.runs import read_record, write_record

AGENT_WAIT_S = 120  # Ray answers "No available agent to submit job, please try again later" while a head starts
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_JOBS_ADDRESS"),
                        help="the cluster's dashboard / Jobs API, e.g. http://HEAD:8265 (default: $RAY_JOBS_ADDRESS)")
    parser.add_argument("--storage",
                        help="where the cluster writes the run directory: s3://BUCKET/PREFIX, or an absolute path every node (and "
                        "you) mount; sweeps and --num-workers persist through Ray there, from every node")
    parser.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver (default 1; a sweep 0)")
    parser.add_argument("--entrypoint-num-gpus", type=float, default=0,
                        help="GPUs for the job's driver; a distributed job runs one process per GPU")
    parser.add_argument("--num-workers", type=int,
                        help="train across the cluster: N Ray Train workers (on several nodes if needed), one process each")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="with --num-workers: GPUs per worker (default 0: CPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1, help="with --num-workers: CPUs per worker (default 1)")
    parser.add_argument("--placement-strategy", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"), default="PACK",
                        help="with --num-workers: how Ray places the workers (PACK: as few nodes as possible; SPREAD: across nodes)")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="with --num-workers: restarts of the worker group (from the last epoch's checkpoint) after a failure")
    parser.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                        help="with --num-workers: auto = bf16 on GPUs that have it, fp16 on others, none on CPU")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="seconds between status polls")
    parser.add_argument("--detach", action="store_true", help="submit and return; follow with launch status/logs/pull RUN")
    parser.add_argument("--max-bundle-mb", type=float, default=code_bundle.DEFAULT_MAX_MB, help="working_dir size guard")
    parser.add_argument("--runs-dir", default="runs", help="where run directories come back to (default: ./runs)")


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad token, not a Ray dashboard
        raise LaunchError(f"Ray Jobs at {address}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                          " (check --address, that the cluster runs the dashboard (ray[default]), and RAY_AUTH_TOKEN)") from None


def check_inputs(inputs: dict) -> None:
    """Inputs are read in place on the cluster: they must be absolute paths (or URLs) it can see."""
    for key, spec in inputs.items():
        location = str(spec["location"])
        if spec.get("kind") == "kaggle_outputs":
            raise LaunchError(f"{key}={location}: shards in Kaggle kernels' outputs are read where they are by launch kaggle only; "
                              "copy them to storage the cluster shares first (launch sync URL s3://...)")
        if not spec["regenerable"] and "://" not in location and not Path(location).is_absolute():
            raise LaunchError(f"{key}={location}: a Ray job reads inputs where the cluster sees them; give an absolute path "
                              "on storage the cluster shares (nothing is uploaded besides the code)")


def entrypoint(spec: JobSpec, job_args: list[str], run_rel: str, storage_run: str, gpus: float, options: argparse.Namespace) -> str:
    import shlex

    remote = ["python", "-m", "launch.ray_remote", "--run-dir", run_rel, "--storage", storage_run]
    if options.num_workers:
        precision = None if options.mixed_precision == "auto" and not options.gpus_per_worker else options.mixed_precision
        remote += ["--train-workers", str(options.num_workers), "--gpus-per-worker", str(options.gpus_per_worker), "--cpus-per-worker",
                   str(options.cpus_per_worker), "--placement-strategy", options.placement_strategy, "--max-failures",
                   str(options.max_failures), "--module", spec.module, *(["--mixed-precision", precision] if precision else [])]
        return " ".join(shlex.quote(a) for a in [*remote, "--", *job_args])
    command = ["python", "-m", spec.module, *job_args]
    processes = int(gpus) if gpus >= 1 else 1
    if spec.distributed:
        command = ["python", "-m", "launch.accelerate_run", "--num_processes", str(processes), "--num_machines", "1",
                   "--dynamo_backend", "no", *(["--multi_gpu"] if processes > 1 else []),
                   *(["--cpu"] if gpus == 0 else []), "-m", spec.module, *job_args]
    return " ".join(shlex.quote(a) for a in [*remote, "--", *command])


def submit(jobs_api, options: argparse.Namespace, entry: str, submission_id: str, cpus: float, gpus: float, staged: Path,
           metadata: dict) -> str:
    """One Ray job; a head still starting its job agent ("No available agent") is waited for."""
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return jobs_api.submit_job(entrypoint=entry, submission_id=submission_id, entrypoint_num_cpus=cpus, entrypoint_num_gpus=gpus,
                                       runtime_env={"working_dir": str(staged), "env_vars": {"PYTHONUNBUFFERED": "1",
                                                                                              "STREAMAPPROX_BACKEND": "ray"}},
                                       metadata=metadata)
        except Exception as exc:
            if "No available agent" in str(exc) and time.monotonic() < deadline:  # a head still starting its job agent
                print("launch ray: the cluster's job agent is not up yet; retrying", file=sys.stderr, flush=True)
                time.sleep(2)
                continue
            raise LaunchError(f"submitting to {options.address}: {type(exc).__name__}: {str(exc)[:500]}") from None


def check_reach(jobs_api, options: argparse.Namespace, staged: Path, inputs: dict) -> None:
    """Work spread over nodes (a sweep's trials, Ray Train's workers) reads its inputs and writes its storage from
    every node: a path there must be a filesystem every node mounts. A probe job writes a marker in the storage path
    and asks every alive node whether it sees it and the input paths, before the job itself is submitted."""
    import shlex

    storage = None if "://" in options.storage else options.storage.rstrip("/")
    paths = {key: str(spec["location"]) for key, spec in inputs.items() if not spec["regenerable"] and "://" not in str(spec["location"])}
    if storage is None and not paths:
        return
    command = ["python", "-m", "launch.ray_remote", *(["--check-storage", storage] if storage else []),
               *(arg for path in paths.values() for arg in ("--check-input", path))]
    probe = submit(jobs_api, options, " ".join(shlex.quote(a) for a in command), f"streamapprox_probe_{secrets.token_hex(4)}", 0, 0,
                   staged, {"streamapprox_job": "storage probe"})
    deadline = time.monotonic() + 300
    while str(jobs_api.get_job_status(probe).value) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    lines = [line for line in jobs_api.get_job_logs(probe).splitlines() if line.startswith('{"nodes"')]
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


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    if not options.address:
        raise LaunchError("--address http://HEAD:8265 (or $RAY_JOBS_ADDRESS) names the cluster")
    if option_value(job_args, "--run-dir"):
        raise LaunchError("launch ray names the run itself; drop --run-dir")
    resumed = option_value(job_args, "--resume")
    if resumed and name != "sweep":
        raise LaunchError(f"launch ray {name} --resume: only sweeps continue on Ray (a training run across nodes resumes itself "
                          "from its checkpoints in storage)")
    if options.num_workers is not None and (options.num_workers < 1 or not spec.distributed or not spec.resumable):
        raise LaunchError(f"--num-workers: {name} cannot train across nodes; Ray Train runs the training jobs "
                          f"({', '.join(n for n, s in JOBS.items() if s.distributed and s.resumable)}) with N >= 1")
    record = read_record(Path(resumed)) if resumed else None
    if record is None and not options.storage:
        raise LaunchError("--storage s3://BUCKET/PREFIX (or an absolute path every node mounts) is where the run goes")
    options.storage = options.storage or record["storage"].rsplit("/", 1)[0]
    if "://" not in options.storage and not Path(options.storage).is_absolute():
        raise LaunchError(f"--storage {options.storage}: give an absolute path every node mounts, or s3://BUCKET/PREFIX")
    jobs_api = client(options.address)
    inputs = job_inputs(spec, job_args) if not resumed else {}
    check_inputs(inputs)
    bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb)
    staged = bundle.write(cache_root() / "ray" / "bundle")
    if name == "sweep" or options.num_workers:
        check_reach(jobs_api, options, staged, inputs)
    run_id = record["run_id"] if record else new_run_id(name)
    storage_run = record["storage"] if record else f"{options.storage.rstrip('/')}/{run_id}"
    run_rel = f"runs/{run_id}"
    job_args = ["--resume", run_rel, "--storage", storage_run] if resumed else \
        [*job_args, *(["--run-dir", run_rel] if spec.makes_run else []), *(["--storage", storage_run] if name == "sweep" else [])]
    cpus = options.entrypoint_num_cpus if options.entrypoint_num_cpus is not None else (0 if name == "sweep" or options.num_workers else 1)
    attempt = len(record.get("submissions", [])) if record else 0
    submission = submit(jobs_api, options, entrypoint(spec, job_args, run_rel, storage_run, options.entrypoint_num_gpus, options),
                        run_id.replace("-", "_") + (f"_r{attempt}" if attempt else ""), cpus, options.entrypoint_num_gpus, staged,
                        {"streamapprox_job": name, "bundle": bundle.digest[:16]})
    run_dir = Path(options.runs_dir) / run_id if not resumed else Path(resumed)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = record or {"backend": "ray", "run_id": run_id, "job": name, "address": options.address, "storage": storage_run,
                        "makes_run": spec.makes_run, "created_at": now(), "num_workers": options.num_workers}
    record.update(submission_id=submission, bundle=bundle.digest, submissions=[*record.get("submissions", []), submission])
    write_record(run_dir, record)
    print(f"launch ray: submitted {submission} to {options.address}; the run goes to {storage_run}", flush=True)
    if options.detach:
        print(f"launch ray: detached; follow with: launch status {run_dir} | launch logs {run_dir} | launch pull {run_dir}")
        return 0
    return follow(record, run_dir, options.poll_interval)


def follow(record: dict, run_dir: Path, interval: float) -> int:
    jobs_api, printed = client(record["address"]), 0
    while True:
        status = str(jobs_api.get_job_status(record["submission_id"]).value)
        logs = jobs_api.get_job_logs(record["submission_id"])
        print(logs[printed:], end="", flush=True)
        printed = len(logs)
        if status in TERMINAL:
            break
        time.sleep(interval)
    pulled = pull_run(record, run_dir)
    return (0 if status == "SUCCEEDED" else 1) or pulled


def show_status(record: dict, run_dir: Path) -> int:
    info = client(record["address"]).get_job_info(record["submission_id"])
    print(f"ray job {record['submission_id']} at {record['address']}: {str(info.status.value).lower()}"
          f"{' - ' + info.message if info.message and info.status.value != 'SUCCEEDED' else ''}")
    print(summarize(run_dir, "ray") if (run_dir / "run.json").is_file() else "run directory not pulled yet: launch pull " + str(run_dir))
    return 0


def show_logs(record: dict, run_dir: Path) -> int:
    print(client(record["address"]).get_job_logs(record["submission_id"]), end="", flush=True)
    return 0


def stop_run(record: dict, run_dir: Path) -> int:
    stopped = client(record["address"]).stop_job(record["submission_id"])
    print(f"ray job {record['submission_id']}: {'stop requested' if stopped else 'already finished'}")
    return 0


RAY_STATE = ("tune/", "ray-train/")  # what Ray itself keeps in the run's storage (experiments, checkpoints): left there


def pull_run(record: dict, run_dir: Path) -> int:
    """The run directory from storage, without Ray's own state (``launch pull STORAGE_URL/<run-id> --only all`` brings it too)."""
    from sync import SyncError, sync

    try:
        report = sync(record["storage"], str(run_dir), select=lambda entries: {r: e for r, e in entries.items() if not r.startswith(RAY_STATE)})
    except SyncError as exc:
        print(f"launch ray: {exc}", file=sys.stderr)
        return 1
    print(f"launch ray: {report.summary()}", flush=True)
    print(summarize(run_dir, "ray"))
    return 0
