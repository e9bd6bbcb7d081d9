"""The cluster half of ``launch ray``: the Ray job's entrypoint. Runs the job command, then copies the
run directory to the storage URL through sync -- also when the job failed, so its logs come back --
and exits with the job's code.

    python -m launch.ray_remote --run-dir RUN --storage URL -- COMMAND...
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading

from sync import SyncError, sync

MIRROR_EVERY_S = 300  # a long run's directory reaches storage meanwhile, not only at the end


def mirror(run_dir: str, storage: str) -> None:
    if os.path.isdir(run_dir):
        print(f"launch ray: {sync(run_dir, storage).summary()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.ray_remote")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    job = subprocess.Popen(command, env={**os.environ, "STREAMAPPROX_BACKEND": "ray", "PYTHONUNBUFFERED": "1"})
    stop = threading.Event()

    def periodic() -> None:
        while not stop.wait(MIRROR_EVERY_S):
            try:
                mirror(args.run_dir, args.storage)
            except SyncError as exc:
                print(f"launch ray: mirroring failed, will retry: {exc}", file=sys.stderr, flush=True)

    threading.Thread(target=periodic, daemon=True).start()
    code = job.wait()
    stop.set()
    try:
        mirror(args.run_dir, args.storage)
    except SyncError as exc:
        print(f"launch ray: the run could not be copied to {args.storage}: {exc}", file=sys.stderr, flush=True)
        return code or 4
    return code


if __name__ == "__main__":
    sys.exit(main())
