"""``launch status|logs|stop|pull RUN``: the same questions about any run, answered through the backend that runs it
(its ``launch.json`` names it) under the driver's retry policy, or from the run directory alone when nothing
launched it. ``launch pull URL`` copies a run directory from storage instead."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from launch import transfer
from launch.backends import Run
from launch.driver import Follower, Retry, reattach, say, unit_code
from launch.errors import Incomplete, LaunchError, Unreachable
from launch.record import LaunchRecord
from launch.summary import summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory, or a run id under --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where run directories are (default: ./runs)")


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)
    parser.add_argument("--follow", "-f", action="store_true", help="keep printing as the run's units write, until they end")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between reads with --follow (default 2)")
    parser.add_argument("--patience", type=float, default=600, help="seconds of lost connection to retry with --follow")


def locate(run: str, runs_dir: str) -> Path:
    for candidate in (Path(run), Path(runs_dir) / run):
        if LaunchRecord.exists(candidate) or (candidate / "run.json").is_file():
            return candidate
    raise LaunchError(f"{run}: no run directory here or under {runs_dir}/ (looked for launch.json or run.json)")


def asked(what):
    """A backend call made once, from the command line: ``Unreachable`` is exit 3 with the way to try again."""
    try:
        return what()
    except Unreachable as exc:
        raise Incomplete(f"{exc}; try again when it answers") from None


def run_status(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    if not LaunchRecord.exists(run_dir):
        print(summarize(run_dir))
        return 0
    backend, run = reattach(run_dir)
    for unit in run.record.units:
        if not unit.finished:
            unit.see(*asked(lambda unit=unit: backend.poll(run, unit)))
        part = f"part {unit.part} " if run.record.parts > 1 else ""
        print(f"{part}{unit.standing}"
              + (" (not pulled yet)" if backend.sends_code and unit.finished and unit.pulled is not True else ""))
    waiting = [part for part in range(run.record.parts) if not run.record.chain(part)]
    if waiting:
        print(f"{len(waiting)} part(s) not started yet: launch {run.record.backend} {run.record.job} --resume {run_dir}")
    run.save()
    print(summarize(run_dir, run.record.backend))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    if not LaunchRecord.exists(run_dir):
        for path in sorted((run_dir / "logs").glob("*.log")):
            print(f"==> {path} <==\n{path.read_text()}", end="")
        return 0
    backend, run = reattach(run_dir)
    offsets: dict[tuple[int, int], int] = {}
    retry = Retry(backend.name, run_dir, args.patience)

    def read(unit, poll: bool) -> None:
        key = (unit.part, unit.attempt)
        text, offsets[key] = backend.log(run, unit, offsets.get(key, 0))
        sys.stdout.write(text)
        sys.stdout.flush()
        if poll and not unit.finished:
            unit.see(*backend.poll(run, unit))
            if unit.finished:  # what it wrote between the last read and its end
                text, offsets[key] = backend.log(run, unit, offsets[key])
                sys.stdout.write(text)
                say(backend.name, unit.standing)

    def retried(what) -> None:
        """With --follow, trouble is waited out under the retry policy; without it, one try."""
        if not args.follow:
            return asked(what)
        while True:
            try:
                what()
                retry.ok()
                return
            except Unreachable as exc:
                retry.failed(exc)
                time.sleep(args.poll_interval)

    for unit in run.record.units:
        print(f"==> {unit.name} <==", flush=True)
        retried(lambda unit=unit: read(unit, poll=False))
    while args.follow and (running := [unit for unit in run.record.units if not unit.finished]):
        for unit in running:
            retried(lambda unit=unit: read(unit, poll=True))
        time.sleep(args.poll_interval)
    run.save()
    return followed_code(run) if args.follow else 0


def followed_code(run: Run) -> int:
    """What ``logs --follow`` exits with once every unit ended, as the exit-code table has it: the worst of the parts'
    last units (0 succeeded, 1 failed, 2 or 3 where the unit said so); 3 for a part never started. Whether the run is
    complete comes out where its directory comes back: ``launch pull`` / ``launch status``."""
    return max((unit_code(chain[-1]) if chain else Incomplete.code for chain in map(run.record.chain, range(run.record.parts))),
               default=0)


def run_stop(args: argparse.Namespace) -> int:
    run_dir = locate(args.run, args.runs_dir)
    if not LaunchRecord.exists(run_dir):
        raise LaunchError(f"{run_dir}: no launch.json, so nothing launched it that could stop it (stop its process itself)")
    backend, run = reattach(run_dir)
    running = [unit for unit in run.record.units if not unit.finished]
    for unit in running:
        said = asked(lambda unit=unit: backend.stop(run, unit))
        unit.stop_requested = True
        run.save()
        print(f"{unit.name}: {said}")
    if not running:
        print(f"{run_dir}: nothing running")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    if "://" in args.run:
        return transfer.run_pull(args)
    run_dir = locate(args.run, args.runs_dir)
    if not LaunchRecord.exists(run_dir):
        raise LaunchError(f"{run_dir}: no launch.json; a run made here has nothing to pull")
    backend, run = reattach(run_dir)
    follower = Follower(backend, run, patience=0)
    for part in range(run.record.parts):
        chain = run.record.chain(part)
        if not chain:
            raise Incomplete(f"part {part} was never started; launch {run.record.backend} {run.record.job} --resume {run_dir} starts it")
        unit = chain[-1]
        if not unit.finished:
            unit.see(*asked(lambda: backend.poll(run, unit)))  # noqa: B023 (called at once)
        if not unit.finished:
            raise Incomplete(f"{unit.name} is {unit.state}; what it makes comes back once it ends: launch logs {run_dir} --follow")
        asked(lambda: follower.settle(unit))  # noqa: B023 (called at once)
        run.save()
    pulled = all(run.record.chain(part)[-1].pulled for part in range(run.record.parts))
    if pulled and run.record.makes_run:
        print(summarize(run_dir, run.record.backend))
    if not pulled:
        return Incomplete.code
    return max(follower.codes.get(part, Incomplete.code) for part in range(run.record.parts))  # what came back: as launch would
