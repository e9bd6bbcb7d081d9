"""What every backend is: the interface ``launch.driver`` runs the lifecycle through.

A backend knows one kind of compute and nothing about models. For a run it is asked, in order:

1. ``prepare``: reach the compute and refuse what it cannot do -- before anything is sent;
2. ``stage``: send the code bundle and the job's inputs (and, to continue a run made elsewhere, its run directory),
   and return the plan: whatever it needs later to start, follow and bring back the run (kept in ``launch.json``);
3. ``start`` a *unit* -- one process, launch, job or kernel: the run, a part of a fan-out, or a continuation;
4. ``poll`` it and read its ``log`` from an offset, as often as the driver asks;
5. ``pull`` the unit's run directory here once it finished, then ``settle`` it;
6. ``stop`` it when asked.

Trouble that passes (a dropped connection, a 5xx, a timeout) is raised as ``Unreachable``: the driver retries it under
its one policy. Everything else is a ``LaunchError`` carrying the exit code it means (``launch.errors``).
"""
from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from jobs import JOBS, JobSpec
from jobs.contract import JobInput
from launch.bundle import Bundle
from launch.record import LaunchRecord, Unit


@dataclass
class Job:
    """What the user asked to run: the job, its own arguments (the launcher's taken out, ``--run-dir``/``--resume``
    too), where its run directory is here, its inputs as its check reported them, and -- for a run continued on
    another compute than the one that made it -- that the run directory must travel."""

    name: str
    args: list[str]
    run_dir: Path
    inputs: dict[str, JobInput] = field(default_factory=dict)
    resume: bool = False  # the run directory holds a run to continue
    carry_run: bool = False  # ... made elsewhere: stage sends it to the compute

    @property
    def spec(self) -> JobSpec:
        return JOBS[self.name]


@dataclass
class Run:
    """A run as the driver holds it: its directory here and its launch record."""

    dir: Path
    record: LaunchRecord

    @property
    def spec(self) -> JobSpec:
        return JOBS[self.record.job]

    @property
    def plan(self) -> dict:
        return self.record.plan

    def save(self) -> None:
        self.record.write(self.dir)

    def arguments(self, unit: Unit, there: str) -> list[str]:
        return unit_arguments(self.spec, self.plan, self.record.parts, unit, there)


def unit_arguments(spec: JobSpec, plan: dict, parts: int, unit: Unit, there: str) -> list[str]:
    """The job's arguments for ``unit`` with its run directory at ``there`` on the compute: a new run gets the user's
    arguments, a continuation ``--resume``; both get the inputs' places on the compute (``plan["relocated"]``), and a
    part of a fan-out its slice."""
    moved = plan.get("relocated", [])
    moved = ["--set", *moved] if moved else []
    if unit.resume:
        return ["--resume", there, *unit.args, *moved]
    sliced = ["--slice", f"{unit.part}/{parts}"] if parts > 1 else []
    return [*plan.get("job_args", []), *moved, *sliced, *(["--run-dir", there] if spec.makes_run else [])]


class Backend(ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    sends_code: ClassVar[bool] = True  # runs elsewhere: needs the code bundle, and its run comes back by pull (all but local)
    poll_interval: ClassVar[float] = 5.0  # seconds between polls unless --poll-interval says otherwise

    def __init__(self, options: argparse.Namespace):
        self.options = options

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """This backend's own options (the driver adds --detach, --runs-dir, --poll-interval, --patience)."""

    @classmethod
    def reattach(cls, record: LaunchRecord) -> Backend:
        """The backend again for a run it started, from the options its plan kept (``launch status/logs/stop/pull``)."""
        return cls(argparse.Namespace(**record.plan.get("options", {})))

    def prepare(self, job: Job) -> None:
        """Reach the compute and refuse what it cannot run, before anything is sent. May take its own options out of
        ``job.args`` (Kaggle turns --time-budget into each kernel's budget)."""

    @abstractmethod
    def stage(self, job: Job, bundle: Bundle | None) -> dict | None:
        """Send the code and the job's inputs; return the plan kept in launch.json (None: a dry run, nothing to start)."""

    def parts(self, job: Job) -> int:
        """Units that run side by side, each a slice of the job (a fan-out); 1 for most."""
        return 1

    def continuations(self) -> int:
        """Continuation units a part may get when its run comes back incomplete (Kaggle's time limit)."""
        return 0

    def slots(self, run: Run) -> int | None:
        """How many units may run at once (None: all)."""
        return None

    def busy_wait(self) -> float:
        """How long to keep retrying a start the compute refuses as ``Busy``."""
        return 0.0

    @abstractmethod
    def start(self, run: Run, unit: Unit) -> None:
        """Start ``unit`` (``unit.resume``: continue its part's run directory); fill its ``name`` and ``handle``.
        ``Busy`` when the compute cannot take it now."""

    @abstractmethod
    def poll(self, run: Run, unit: Unit) -> tuple[str, str]:
        """(state, detail): queued, running, succeeded, failed, lost or stopped; may set ``unit.exit_code``."""

    @abstractmethod
    def log(self, run: Run, unit: Unit, offset: int) -> tuple[str, int]:
        """The unit's log from ``offset`` on ('' when nothing is new) and the offset after it."""

    def echoes(self, unit: Unit) -> bool:
        """The unit writes its output to this terminal itself (a local job): the driver does not print its log."""
        return False

    @abstractmethod
    def pull(self, run: Run, unit: Unit, target: Path) -> str:
        """Bring the unit's run directory to ``target`` (verified, incremental); says what moved. ``Incomplete`` if
        it cannot."""

    @abstractmethod
    def stop(self, run: Run, unit: Unit) -> str:
        """Stop the unit; says what happened."""

    def settle(self, run: Run, unit: Unit, target: Path) -> None:
        """A unit finished and came back: account for it (Kaggle counts GPU hours)."""

    def finished(self, run: Run) -> None:
        """The whole run came back complete: anything worth saying about where it is (Kaggle: how to reuse shards)."""

    def where(self, run: Run) -> str:
        """Where the run goes, in a few words (for the start line)."""
        return self.name
