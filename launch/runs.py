"""``launch status RUN``, ``launch logs RUN``, ``launch pull RUN``: the same questions about any
run, answered by the backend that started it (its ``launch.json`` names it) or from the local run
directory. ``launch pull URL`` copies a run directory from storage instead."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_shards.files import atomic_write_text
from launch import transfer
from launch.local import LaunchError, summarize

RECORD = "launch.json"  # in the run directory: which backend started the run and where it runs (no credentials)


def read_record(run_dir: Path) -> dict:
    path = run_dir / RECORD
    if not path.is_file():
        raise LaunchError(f"{run_dir}: no {RECORD}; it was not started by a remote launcher (or the path is wrong)")
    return json.loads(path.read_text())


def write_record(run_dir: Path, record: dict) -> None:
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def locate(run: str, runs_dir: str) -> Path:
    for candidate in (Path(run), Path(runs_dir) / run):
        if (candidate / RECORD).is_file() or (candidate / "run.json").is_file():
            return candidate
    raise LaunchError(f"{run}: no run directory here or under {runs_dir}/ (looked for {RECORD} or run.json)")


def backend_of(run_dir: Path):
    if not (run_dir / RECORD).is_file():
        return None, None
    record = read_record(run_dir)
    if record.get("backend") == "kaggle":
        from launch import kaggle

        return kaggle, record
    if record.get("backend") == "ssh":
        from launch import ssh

        return ssh, record
    if record.get("backend") == "ray":
        from launch import ray

        return ray, record
    raise LaunchError(f"{run_dir / RECORD}: unknown backend {record.get('backend')!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory, or a run id under --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where run directories are (default: ./runs)")


def run_status(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    backend, record = backend_of(run_dir)
    if backend:
        return backend.show_status(record, run_dir)
    print(summarize(run_dir))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    backend, record = backend_of(run_dir)
    if backend:
        return backend.show_logs(record, run_dir)
    for path in sorted((run_dir / "logs").glob("*.log")):
        print(f"==> {path} <==\n{path.read_text()}", end="")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    backend, record = backend_of(run_dir)
    if backend is None or not hasattr(backend, "stop_run"):
        raise LaunchError(f"{run_dir}: launch stop works on ssh and ray runs (a local run stops with Ctrl-C; a Kaggle kernel "
                          "from its page)")
    return backend.stop_run(record, run_dir)


def run_pull(args: argparse.Namespace) -> int:
    if "://" not in args.run:
        run_dir = locate(args.run, args.runs_dir)
        backend, record = backend_of(run_dir)
        if backend is None:
            raise LaunchError(f"{run_dir}: a local run with no remote backend; nothing to pull")
        return backend.pull_run(record, run_dir)
    return transfer.run_pull(args)
