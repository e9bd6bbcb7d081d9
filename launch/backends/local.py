"""``launch local JOB``: this machine, under ``accelerate launch`` (the embedded default: one CPU process).

A unit is the job under ``launch.compute.unit``: its output on this terminal and in ``RUN/logs/unit-a<N>-rank0.log``,
its exit code in ``.exit`` beside it; Ctrl-C, SIGTERM and SIGHUP reach the job, and a killed launcher takes it along.
With ``--detach`` it runs on its own; ``launch status/logs/stop RUN`` find it from its pid and files.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from jobs import JOBS
from launch.accelerate import Command, Devices, UnknownConfig, bundled_configs, job_command, resolve_config
from launch.backends.base import Backend, Job, Run
from launch.compute.unit import exit_code, restore_signals, run_supervised, supervise
from launch.errors import LaunchError
from launch.inputs import job_check
from launch.record import Unit

UNIT_MODULE = "launch.compute.unit"


def unit_files(run_dir: Path, unit: Unit, rank: int = 0) -> str:
    """Where a unit's log, exit code and pid go, in the run directory (a rank's own files: ``-rank<k>.``)."""
    return f"{run_dir}/logs/unit-a{unit.attempt}-rank{rank}"


def read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)


def alive(pid: int) -> bool:
    """``pid`` is a unit runner on this machine."""
    try:
        return UNIT_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class Local(Backend):
    name = "local"
    help = "this machine, under accelerate launch (the default: one CPU process)"
    sends_code = False
    poll_interval = 0.5

    def __init__(self, options: argparse.Namespace):
        super().__init__(options)
        self.attached: dict[tuple[int, int], subprocess.Popen] = {}
        self.echoed: set[tuple[int, int]] = set()  # units whose output went to this terminal as they ran

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--accelerate-config", metavar="NAME_OR_PATH",
                            help=f"accelerate config file or bundled name ({', '.join(bundled_configs())}); "
                            "default: accelerate_config.yaml (one CPU process)")
        parser.add_argument("--num-processes", type=int, help="override the accelerate config's process count")

    def config(self) -> Path:
        try:
            return resolve_config(getattr(self.options, "accelerate_config", None))
        except UnknownConfig as exc:
            raise LaunchError(str(exc)) from None

    def command(self, module: str, args: list[str], distributed: bool) -> Command:
        processes = getattr(self.options, "num_processes", None)
        return job_command(sys.executable, module, args, distributed, Devices(per_node=processes) if processes else None,
                           config_file=self.config())

    @staticmethod
    def env(command: Command) -> dict:
        return {**os.environ, **command.env, "STREAMAPPROX_BACKEND": "local", "PYTHONUNBUFFERED": "1"}

    def run_here(self, name: str, job_args: list[str]) -> int:
        """A job that makes no run directory (evaluate) runs in the foreground, its output and exit code its own."""
        spec = JOBS[name]
        job_check(spec, job_args)
        command = self.command(spec.module, job_args, spec.distributed)
        return run_supervised(command.argv, self.env(command))

    def prepare(self, job: Job) -> None:
        self.config()

    def stage(self, job: Job, bundle) -> dict:
        return {"options": {"accelerate_config": str(self.config()), "num_processes": getattr(self.options, "num_processes", None)}}

    def start(self, run: Run, unit: Unit) -> None:
        spec = run.spec
        command = self.command(spec.module, run.arguments(unit, str(run.dir)), spec.distributed)
        files = unit_files(run.dir.resolve(), unit)
        print(f"launch local: {' '.join(command.argv)}", flush=True)
        detach = getattr(self.options, "detach", False)
        wrapper = [sys.executable, "-m", UNIT_MODULE, "--files", files, *([] if detach else ["--echo"]), "--", *command.argv]
        if detach:  # on its own: a session of its own, no terminal, nothing tying it to this process
            process = subprocess.Popen(wrapper, env=self.env(command), start_new_session=True, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            process = supervise(wrapper, self.env(command))
            self.attached[(unit.part, unit.attempt)] = process
            self.echoed.add((unit.part, unit.attempt))
        unit.name, unit.handle = f"pid {process.pid}", {"pid": process.pid, "host": platform.node(), "files": files}

    def poll(self, run: Run, unit: Unit) -> tuple[str, str]:
        process = self.attached.get((unit.part, unit.attempt))
        if process is not None:
            code = process.poll()
            if code is None:
                return "running", ""
            restore_signals(process)
            del self.attached[(unit.part, unit.attempt)]
            code = exit_code(code)
        else:
            done = Path(unit.handle["files"] + ".exit")
            if done.is_file():
                code = int(done.read_text().strip() or 1)
            elif unit.handle.get("host") == platform.node() and alive(unit.handle["pid"]):
                return "running", ""
            else:
                return "lost", "its process is gone and left no exit code"
        unit.exit_code = code
        return ("succeeded", "") if code == 0 else ("failed", f"exit {code}")

    def log(self, run: Run, unit: Unit, offset: int) -> tuple[str, int]:
        return read_from(Path(unit.handle["files"] + ".log"), offset)

    def echoes(self, unit: Unit) -> bool:
        return (unit.part, unit.attempt) in self.echoed

    def pull(self, run: Run, unit: Unit, target: Path) -> str:
        return ""  # the run directory is here already

    def stop(self, run: Run, unit: Unit) -> str:
        pid = unit.handle.get("pid")
        if unit.handle.get("host") != platform.node():
            raise LaunchError(f"{unit.name} runs on {unit.handle.get('host')}, not this machine; stop it there")
        if not pid or not alive(pid):
            return "not running"
        os.killpg(pid, signal.SIGTERM)  # the unit runner leads its group; it passes the signal on to the job
        return f"stop requested (SIGTERM to {unit.name})"
