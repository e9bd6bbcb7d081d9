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
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from jobs import JOBS, JobSpec
from jobs.contract import JobInput, WorkEstimate
from launch.bundle import DEFAULT_MAX_MB, Bundle
from launch.record import LaunchRecord, Unit

OptionsT = TypeVar("OptionsT", bound="BackendOptions")
PlanT = TypeVar("PlanT", bound="Plan")
HandleT = TypeVar("HandleT", bound="Handle")


@dataclass
class BackendOptions:
    """The options every backend has (the driver's); a backend's own options subclass it. Built once from the command
    line, so that a missing value is ``None`` in a typed field, never an attribute looked up by name."""

    runs_dir: str = "runs"
    detach: bool = False
    poll_interval: float | None = None  # None: the backend's own
    patience: float = 600.0
    max_bundle_mb: float = DEFAULT_MAX_MB

    @classmethod
    def from_namespace(cls: type[OptionsT], namespace: argparse.Namespace) -> OptionsT:
        given = vars(namespace)
        return cls(**{f.name: given[f.name] for f in fields(cls) if f.name in given})


class Plan(BaseModel):
    """What ``stage`` decided and a later shell needs to start, follow and bring back the run (``launch.json``'s
    ``plan``): each backend's plan subclasses it. Keys a newer checkout dropped are ignored when an older record is read."""

    model_config = ConfigDict(extra="ignore")

    job_args: list[str] = []  # the job's arguments (the launcher's taken out) for a new run
    relocated: list[str] = []  # --set values that point the job at its inputs where they were sent

    @classmethod
    def of(cls: type[PlanT], run: Run) -> PlanT:
        return cls.model_validate(run.record.plan)


class Handle(BaseModel):
    """A backend's own way back to a unit (``Unit.handle`` in ``launch.json``); each backend's subclasses it."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def of(cls: type[HandleT], unit: Unit) -> HandleT:
        return cls.model_validate(unit.handle)

    def store(self, unit: Unit) -> None:
        unit.handle = self.model_dump()


@dataclass
class Job:
    """What the user asked to run: the job, its own arguments (the launcher's taken out, ``--run-dir``/``--resume``
    too), where its run directory is here, its inputs as its check reported them, and -- for a run continued on
    another compute than the one that made it -- that the run directory must travel."""

    name: str
    args: list[str]
    run_dir: Path
    inputs: dict[str, JobInput] = field(default_factory=dict)
    work: WorkEstimate | None = None  # a sliceable job's shards and cost per item, as its check reported them
    resume: bool = False  # the run directory holds a run to continue
    carry_run: bool = False  # ... made elsewhere: stage sends it to the compute
    config_extras: tuple[str, ...] = ()  # optional dependency groups its config asks for (its check's report)

    @property
    def spec(self) -> JobSpec:
        return JOBS[self.name]

    @property
    def extras(self) -> tuple[str, ...]:
        """What a compute installs beyond the base: the job's own extras and its config's."""
        return tuple(dict.fromkeys([*self.spec.extras, *self.config_extras]))


@dataclass
class Run:
    """A run as the driver holds it: its directory here and its launch record."""

    dir: Path
    record: LaunchRecord

    @property
    def spec(self) -> JobSpec:
        return JOBS[self.record.job]

    def save(self) -> None:
        self.record.write(self.dir)

    def arguments(self, unit: Unit, there: str) -> list[str]:
        return unit_arguments(self.spec, Plan.of(self), self.record.parts, unit, there)


def unit_arguments(spec: JobSpec, plan: Plan, parts: int, unit: Unit, there: str) -> list[str]:
    """The job's arguments for ``unit`` with its run directory at ``there`` on the compute: a new run gets the user's
    arguments, a continuation ``--resume``; both get the inputs' places on the compute (``plan.relocated``), and a
    part of a fan-out its slice."""
    moved = ["--set", *plan.relocated] if plan.relocated else []
    if unit.resume:
        return ["--resume", there, *unit.args, *moved]
    sliced = ["--slice", f"{unit.part}/{parts}"] if parts > 1 else []
    return [*plan.job_args, *moved, *sliced, *(["--run-dir", there] if spec.makes_run else [])]


class Backend(ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    Options: ClassVar[type[BackendOptions]] = BackendOptions  # this backend's options, as add_arguments declares them
    sends_code: ClassVar[bool] = True  # runs elsewhere: needs the code bundle, and its run comes back by pull (all but local)
    poll_interval: ClassVar[float] = 5.0  # the most seconds between polls while a unit runs, unless --poll-interval says
    first_poll: ClassVar[float] = 0.5  # the first poll after a start or a change comes this soon; the wait grows from it

    def __init__(self, options: BackendOptions):
        self.options = options

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """This backend's own options (the driver adds --detach, --runs-dir, --poll-interval, --patience), their
        defaults taken from ``Options``."""

    @classmethod
    def reattach(cls, record: LaunchRecord) -> Backend:
        """The backend again for a run it started, with default options: everything about the run is in its plan
        (``launch status/logs/stop/pull``)."""
        return cls(cls.Options())

    def wait(self, run: Run, units: list[Unit], seconds: float) -> None:
        """Wait ``seconds`` before the next poll of ``units``; a backend that hears of a unit's progress (a log
        stream) returns as soon as it does."""
        time.sleep(seconds)

    def run_here(self, name: str, job_args: list[str]) -> int | None:
        """Run a job that makes no run directory in the foreground, here, and return its exit code; None: this backend
        runs such jobs through the lifecycle like any other."""
        return None

    def prepare(self, job: Job) -> None:
        """Reach the compute and refuse what it cannot run, before anything is sent. May take its own options out of
        ``job.args`` (Kaggle turns --time-budget into each kernel's budget)."""

    @abstractmethod
    def stage(self, job: Job, bundle: Bundle | None) -> Plan | None:
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
