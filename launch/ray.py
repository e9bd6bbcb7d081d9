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
import os
import sys
import time
from pathlib import Path

from data_shards.files import cache_root
from jobs import JobSpec, new_run_id, now
from launch import bundle as code_bundle
from launch.inputs import job_inputs
from launch.local import REPO_ROOT, LaunchError, option_value, summarize
from launch.runs import write_record

AGENT_WAIT_S = 120  # Ray answers "No available agent to submit job, please try again later" while a head starts
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_JOBS_ADDRESS"),
                        help="the cluster's dashboard / Jobs API, e.g. http://HEAD:8265 (default: $RAY_JOBS_ADDRESS)")
    parser.add_argument("--storage", required=True,
                        help="where the cluster writes the run directory: a path it shares with you, or s3://BUCKET/PREFIX")
    parser.add_argument("--entrypoint-num-cpus", type=float, help="CPUs reserved for the job's driver (default 1; a sweep 0)")
    parser.add_argument("--entrypoint-num-gpus", type=float, default=0,
                        help="GPUs for the job's driver; a distributed job runs one process per GPU")
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


def entrypoint(spec: JobSpec, job_args: list[str], run_rel: str, storage_run: str, gpus: float) -> str:
    command = ["python", "-m", spec.module, *job_args]
    processes = int(gpus) if gpus >= 1 else 1
    if spec.distributed:
        command = ["python", "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1",
                   "--dynamo_backend", "no", *(["--multi_gpu"] if processes > 1 else []),
                   *(["--cpu"] if gpus == 0 else []), "-m", spec.module, *job_args]
    import shlex

    return " ".join(shlex.quote(a) for a in ["python", "-m", "launch.ray_remote", "--run-dir", run_rel, "--storage", storage_run,
                                              "--", *command])


def run(name: str, spec: JobSpec, job_args: list[str], options: argparse.Namespace) -> int:
    if not options.address:
        raise LaunchError("--address http://HEAD:8265 (or $RAY_JOBS_ADDRESS) names the cluster")
    if option_value(job_args, "--run-dir") or option_value(job_args, "--resume"):
        raise LaunchError("launch ray names the run itself; drop --run-dir/--resume")
    jobs_api = client(options.address)
    inputs = job_inputs(spec, job_args)
    check_inputs(inputs)
    bundle = code_bundle.collect(REPO_ROOT, options.max_bundle_mb)
    staged = bundle.write(cache_root() / "ray" / "bundle")
    run_id = new_run_id(name)
    storage_run = f"{options.storage.rstrip('/')}/{run_id}"
    run_rel = f"runs/{run_id}"
    job_args = [*job_args, *(["--run-dir", run_rel] if spec.makes_run else [])]
    cpus = options.entrypoint_num_cpus if options.entrypoint_num_cpus is not None else (0 if name == "sweep" else 1)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            submission = jobs_api.submit_job(
                entrypoint=entrypoint(spec, job_args, run_rel, storage_run, options.entrypoint_num_gpus),
                submission_id=run_id.replace("-", "_"), entrypoint_num_cpus=cpus, entrypoint_num_gpus=options.entrypoint_num_gpus,
                runtime_env={"working_dir": str(staged), "env_vars": {"PYTHONUNBUFFERED": "1"}},
                metadata={"streamapprox_job": name, "bundle": bundle.digest[:16]})
            break
        except Exception as exc:
            if "No available agent" in str(exc) and time.monotonic() < deadline:  # a head still starting its job agent
                print("launch ray: the cluster's job agent is not up yet; retrying", file=sys.stderr, flush=True)
                time.sleep(2)
                continue
            raise LaunchError(f"submitting to {options.address}: {type(exc).__name__}: {str(exc)[:500]}") from None
    run_dir = Path(options.runs_dir) / run_id
    run_dir.mkdir(parents=True)
    record = {"backend": "ray", "run_id": run_id, "job": name, "address": options.address, "submission_id": submission,
              "storage": storage_run, "makes_run": spec.makes_run, "created_at": now(), "bundle": bundle.digest}
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


def pull_run(record: dict, run_dir: Path) -> int:
    from sync import SyncError, sync

    try:
        report = sync(record["storage"], str(run_dir))
    except SyncError as exc:
        print(f"launch ray: {exc}", file=sys.stderr)
        return 1
    print(f"launch ray: {report.summary()}", flush=True)
    print(summarize(run_dir, "ray"))
    return 0
