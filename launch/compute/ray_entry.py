"""The cluster half of ``launch ray``: the Ray job's entrypoint (the job's driver, on the cluster).

    python -m launch.compute.ray_entry --run-dir RUN --storage URL --module M [--distributed --processes N
        --mixed-precision P] [--restore] -- JOB ARGS...                    run the job (under accelerate launch)
    python -m launch.compute.ray_entry ... --train-workers N ... -- JOB ARGS...   run it across nodes (Ray Train)
    python -m launch.compute.ray_entry [--check-storage PATH] [--check-input PATH ...]   can every node see these?

``--restore`` first brings the run directory from the storage URL (a run continued here). The entry copies the run
directory to the storage URL through sync -- every 5 minutes and at the end, also when the job failed, so its logs
come back -- and exits with the job's code.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

from sync import SyncError, sync
from tune.storage import ray_storage, without_ray_owned

MIRROR_EVERY_S = 300  # a long run's directory reaches storage meanwhile, not only at the end


def mirror(run_dir: str, storage: str) -> None:
    if os.path.isdir(run_dir):
        print(f"launch ray: {sync(run_dir, storage).summary()}", flush=True)


def check_reach(storage: str | None, inputs: list[str]) -> int:
    """Can every alive node see these paths? ``storage`` gets a marker written here (on the driver's node) that every
    node must see; each of ``inputs`` must exist on every node. Work spread over nodes (a sweep's trials, Ray Train's
    workers) needs a filesystem every node mounts. Prints ``{"nodes": N, "blind": {path: [node ids]}}``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(log_to_driver=False)
    marker = Path(storage) / f".streamapprox-probe-{secrets.token_hex(8)}" if storage else None
    if marker:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("probe\n")

    @ray.remote(num_cpus=0)
    def missing(paths: list[str]) -> list[str]:
        return [path for path in paths if not os.path.exists(path)]

    wanted = [str(marker)] * bool(marker) + inputs
    try:
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        answers = ray.get([missing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(wanted)
                           for node in nodes])
    finally:
        if marker:
            marker.unlink(missing_ok=True)
    blind: dict[str, list[str]] = {}
    for node, lacking in zip(nodes, answers):
        for path in lacking:
            blind.setdefault(storage if storage and path == str(marker) else path, []).append(node)
    print(json.dumps({"nodes": len(nodes), "blind": blind}), flush=True)
    return 0


def gpus_here() -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "jobs.hardware"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"launch ray: the hardware probe failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["gpus"]


def run_command(args: argparse.Namespace, job_args: list[str]) -> int:
    """The job on this node: one process, or accelerate launch over the GPUs Ray gave the entrypoint."""
    from launch.accelerate import Devices, job_command

    devices = Devices(gpus_here(), per_node=args.processes) if args.distributed else None
    command = job_command(sys.executable, args.module, job_args, args.distributed, devices, args.mixed_precision)
    env = {**os.environ, **command.env, "STREAMAPPROX_BACKEND": "ray", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command.argv, env=env).wait()


def run_trained(args: argparse.Namespace, job_args: list[str]) -> int:
    from launch.compute import ray_train

    os.environ["STREAMAPPROX_BACKEND"] = "ray"
    try:
        ray_train.fit(args.module, job_args, Path(args.run_dir), ray_storage(args.storage), args.train_workers, args.gpus_per_worker,
                      args.cpus_per_worker, args.placement_strategy, args.max_failures, args.mixed_precision,
                      restore=args.storage if args.restore else None)
    except RuntimeError as exc:
        print(f"launch ray: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.compute.ray_entry")
    parser.add_argument("--check-storage", metavar="PATH")
    parser.add_argument("--check-input", action="append", default=[], metavar="PATH")
    parser.add_argument("--run-dir")
    parser.add_argument("--storage")
    parser.add_argument("--train-workers", type=int)
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--placement-strategy", default="PACK")
    parser.add_argument("--max-failures", type=int, default=2)
    parser.add_argument("--mixed-precision", default="auto")
    parser.add_argument("--module")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--processes", type=int)
    parser.add_argument("--restore", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.check_storage or args.check_input:
        return check_reach(args.check_storage, args.check_input)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.restore and not args.train_workers:  # a run continued here: its directory as it was last persisted
        print(f"launch ray: {sync(args.storage, args.run_dir, select=without_ray_owned).summary()}", flush=True)
    stop = threading.Event()

    def periodic() -> None:
        while not stop.wait(MIRROR_EVERY_S):
            try:
                mirror(args.run_dir, args.storage)
            except SyncError as exc:
                print(f"launch ray: mirroring failed, will retry: {exc}", file=sys.stderr, flush=True)

    threading.Thread(target=periodic, daemon=True).start()
    code = run_trained(args, command) if args.train_workers else run_command(args, command)
    stop.set()
    try:
        mirror(args.run_dir, args.storage)
    except SyncError as exc:
        print(f"launch ray: the run could not be copied to {args.storage}: {exc}", file=sys.stderr, flush=True)
        return code or 4
    return code


if __name__ == "__main__":
    sys.exit(main())
