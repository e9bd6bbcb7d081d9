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
from dataclasses import dataclass
from pathlib import Path

from jobs import JOBS
from launch.accelerate import Command, Devices, UnknownConfig, bundled_configs, job_command, resolve_config
from launch.backends.base import Backend, BackendOptions, Handle, Job, Plan, Run
from launch.compute.unit import Supervised, exit_code, restore_signals, run_supervised, supervise
from launch.errors import LaunchError
from launch.inputs import job_check
from launch.record import Unit

UNIT_MODULE = "launch.compute.unit"


def unit_files(run_dir: Path | str, unit: Unit, rank: int = 0) -> str:
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


@dataclass
class LocalOptions(BackendOptions):
    accelerate_config: str | None = None  # a file or bundled name; None: accelerate_config.yaml
    num_processes: int | None = None  # None: as the accelerate config says


class LocalPlan(Plan):
    accelerate_config: str
    num_processes: int | None = None


class LocalHandle(Handle):
    pid: int
    host: str  # the machine whose process it is: only there can it be asked or stopped
    files: str  # the prefix of its log, exit code and pid files (``unit_files``)


def alive(pid: int) -> bool:
    """``pid`` is a unit runner on this machine."""
    try:
        return UNIT_MODULE in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class Local(Backend):
    name = "local"
    help = "this machine, under accelerate launch (the default: one CPU process)"
    Options = LocalOptions
    options: LocalOptions
    sends_code = False
    poll_interval = 0.5

    def __init__(self, options: BackendOptions):
        super().__init__(options)
        self.attached: dict[tuple[int, int], Supervised] = {}
        self.echoed: set[tuple[int, int]] = set()  # units whose output went to this terminal as they ran

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--accelerate-config", metavar="NAME_OR_PATH",
                            help=f"accelerate config file or bundled name ({', '.join(bundled_configs())}); "
                            "default: accelerate_config.yaml (one CPU process)")
        parser.add_argument("--num-processes", type=int, help="override the accelerate config's process count")

    def config(self) -> Path:
        try:
            return resolve_config(self.options.accelerate_config)
        except UnknownConfig as exc:
            raise LaunchError(str(exc)) from None

    def command(self, module: str, args: list[str], distributed: bool) -> Command:
        processes = self.options.num_processes
        return job_command(sys.executable, module, args, distributed, Devices(per_node=processes) if processes else None,
                           config_file=self.config())

    @staticmethod
    def env(command: Command) -> dict:
        return {**os.environ, **command.env, "STREAMAPPROX_BACKEND": "local", "PYTHONUNBUFFERED": "1"}

    def run_here(self, name: str, job_args: list[str]) -> int | None:
        """A job that makes no run directory (evaluate) runs in the foreground, its output and exit code its own."""
        if self.options.detach:
            raise LaunchError(f"--detach: {name} makes no run directory to follow; run it in the foreground")
        spec = JOBS[name]
        job_check(spec, job_args)
        command = self.command(spec.module, job_args, spec.distributed)
        return run_supervised(command.argv, self.env(command))

    def prepare(self, job: Job) -> None:
        self.config()

    def stage(self, job: Job, bundle: object) -> LocalPlan:
        return LocalPlan(accelerate_config=str(self.config()), num_processes=self.options.num_processes, job_args=job.args)

    def start(self, run: Run, unit: Unit) -> None:
        spec = run.spec
        command = self.command(spec.module, run.arguments(unit, str(run.dir)), spec.distributed)
        files = unit_files(run.dir.resolve(), unit)
        print(f"launch local: {' '.join(command.argv)}", flush=True)
        detach = self.options.detach
        wrapper = [sys.executable, "-m", UNIT_MODULE, "--files", files, *([] if detach else ["--echo"]), "--", *command.argv]
        if detach:  # on its own: a session of its own, no terminal, nothing tying it to this process
            process = subprocess.Popen(wrapper, env=self.env(command), start_new_session=True, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            process = supervise(wrapper, self.env(command))
            self.attached[(unit.part, unit.attempt)] = process
            self.echoed.add((unit.part, unit.attempt))
        unit.name = f"pid {process.pid}"
        LocalHandle(pid=process.pid, host=platform.node(), files=files).store(unit)

    def wait(self, run: Run, units: list[Unit], seconds: float) -> None:
        """A job started from this launcher is waited on itself: its end is seen at once."""
        attached = [self.attached[key] for key in ((unit.part, unit.attempt) for unit in units) if key in self.attached]
        if len(attached) != 1:
            super().wait(run, units, seconds)
            return
        try:
            attached[0].wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

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
            handle = LocalHandle.of(unit)
            done = Path(handle.files + ".exit")
            if done.is_file():
                code = int(done.read_text().strip() or 1)
            elif handle.host == platform.node() and alive(handle.pid):
                return "running", ""
            else:
                return "lost", "its process is gone and left no exit code"
        unit.exit_code = code
        return ("succeeded", "") if code == 0 else ("failed", f"exit {code}")

    def log(self, run: Run, unit: Unit, offset: int) -> tuple[str, int]:
        return read_from(Path(LocalHandle.of(unit).files + ".log"), offset)

    def echoes(self, unit: Unit) -> bool:
        return (unit.part, unit.attempt) in self.echoed

    def pull(self, run: Run, unit: Unit, target: Path) -> str:
        return ""  # the run directory is here already

    def stop(self, run: Run, unit: Unit) -> str:
        handle = LocalHandle.of(unit)
        if handle.host != platform.node():
            raise LaunchError(f"{unit.name} runs on {handle.host}, not this machine; stop it there")
        if not alive(handle.pid):
            return "not running"
        os.killpg(handle.pid, signal.SIGTERM)  # the unit runner leads its group; it passes the signal on to the job
        return f"stop requested (SIGTERM to {unit.name})"
