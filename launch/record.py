"""``RUN/launch.json``: which backend started a run and how to reach it again, so ``launch status/logs/stop/pull RUN``
and ``--resume`` work from any shell. No credentials ever enter it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from data_shards.files import atomic_write_text
from jobs import now
from jobs.contract import JobInput

RECORD = "launch.json"
FINISHED = ("succeeded", "failed", "lost", "stopped")


class Unit(BaseModel):
    """One thing started on the compute for the run: a local process, a launch over SSH, a Ray job, a Kaggle kernel.
    A run has a unit per part (the slices of a fan-out), and a further one each time a part is continued."""

    model_config = ConfigDict(extra="forbid")

    part: int = 0
    attempt: int = 0  # 0: the first start; k: the k-th continuation
    name: str = ""  # how the backend names it to a person (a kernel's slug, a Ray submission id, a pid)
    handle: dict[str, Any] = Field(default_factory=dict)  # the backend's own way back to it
    state: str = "starting"  # starting | queued | running | succeeded | failed | lost | stopped
    detail: str = ""
    started_at: str = Field(default_factory=now)
    finished_at: str | None = None
    resume: bool = False
    args: list[str] = Field(default_factory=list)  # the job arguments given with the --resume that started it
    exit_code: int | None = None
    pulled: bool | None = None
    global_step: int | None = None
    account: dict[str, Any] = Field(default_factory=dict)  # what the backend counts for it (Kaggle: GPU hours)
    stop_requested: bool = False  # ``launch stop`` asked for its end

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def standing(self) -> str:
        """``name: state - detail``, as every command says how a unit stands."""
        return f"{self.name}: {self.state}{' - ' + self.detail if self.detail else ''}"

    def see(self, state: str, detail: str) -> bool:
        """Take the state its backend reports; one asked to stop that then ended without success was stopped, whatever
        the backend calls it (a signalled process fails, a Ray job stops). True when the state changed."""
        if self.stop_requested and state in ("failed", "lost"):
            state, detail = "stopped", f"on request ({detail})" if detail else "on request"
        changed = state != self.state
        self.state, self.detail = state, detail
        return changed


class LaunchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: str
    run_id: str
    job: str
    created_at: str = Field(default_factory=now)
    makes_run: bool = True
    parts: int = 1
    continues: bool = False  # its run directory already held the run when this record began: the first units resume it
    inputs: dict[str, JobInput] = Field(default_factory=dict)  # as the job's check reported them here, at the first launch
    plan: dict[str, Any] = Field(default_factory=dict)  # the backend's own: where code and inputs went, how to reach the compute
    units: list[Unit] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list)  # the records of the backends that ran it before this one

    def chain(self, part: int) -> list[Unit]:
        """A part's units, first start then its continuations."""
        return [unit for unit in self.units if unit.part == part]

    def part_dir(self, run_dir: Path, part: int) -> Path:
        """Where a part's run directory comes back to: the run directory, or ``slices/I`` of a fan-out."""
        return run_dir / "slices" / str(part) if self.parts > 1 else run_dir

    def write(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / RECORD, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> LaunchRecord:
        return cls.model_validate_json((Path(run_dir) / RECORD).read_text())

    @staticmethod
    def exists(run_dir: Path) -> bool:
        return (Path(run_dir) / RECORD).is_file()
