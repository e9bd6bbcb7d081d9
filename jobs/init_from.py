"""``train.init_from``: a new run starts its student from another run's weights (the original project's second stage).

``RUN`` takes ``RUN/checkpoints/best.pt``, ``RUN:last`` its ``last.pt`` (``RUN:best`` says best explicitly), and any
other value is a checkpoint file. Only the student's weights are taken: optimizer, schedule, epoch and step start
afresh, and the loss (with its temperature) is the new run's own config. The source is opened once, before training
(and by ``--check``): every architecture field of its saved config must equal this run's, else one line names the
field. A resumed run never opens it again: it continues from its own ``last.pt``.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from jobs.config import INIT_CHECKPOINTS, ConfigError, JobConfig
from jobs.contract import FileInput, InitFrom
from model.config import StudentConfig

FREE_FIELDS = ("dropout", "modality_dropout")  # training-time regularisation: a fine-tuning stage may change it
STUDENT_PREFIX = "student."  # the Distiller's state dict: student.* and loss.*

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class InitSource:
    """The opened source: what run.json records, and the student's weights to load."""

    record: InitFrom
    student: dict[str, torch.Tensor]

    def load_into(self, student: nn.Module) -> None:
        """The weights into a student built from this run's config (before Accelerate wraps it: DDP then broadcasts
        them, DeepSpeed partitions them)."""
        try:
            student.load_state_dict(self.student)
        except RuntimeError as exc:
            raise ConfigError(f"train.init_from={self.record.location}: its weights do not fit the student its config describes "
                              f"({' '.join(str(exc).split())[:200]})") from None

    def check_input(self) -> FileInput:
        """The source as a launcher carries it to a remote compute (by its sha256, like ``index``'s checkpoint)."""
        return FileInput(location=self.record.location, path=self.record.path, sha256=self.record.sha256)


def checkpoint_file(location: str) -> Path:
    """The checkpoint ``train.init_from`` names, or a one-line ConfigError saying why there is none."""
    base, colon, which = location.rpartition(":")
    run = Path(base) if colon and which in INIT_CHECKPOINTS else Path(location) if Path(location).is_dir() else None
    if run is None:
        if not Path(location).is_file():
            raise ConfigError(f"train.init_from={location}: no such run directory or checkpoint file")
        return Path(location)
    form, which = (f"RUN:{which}", which) if colon and which in INIT_CHECKPOINTS else ("RUN", "best")
    path = run / "checkpoints" / f"{which}.pt"
    if not run.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"train.init_from={location}: {run} is not a run directory ({form} takes RUN/checkpoints/{which}.pt)")
    if not path.is_file():
        other = "RUN:last takes its last.pt" if which == "best" else "it has not saved one"
        raise ConfigError(f"train.init_from={location}: no {which}.pt in {path.parent} (a run that never finished an epoch? {other})")
    return path


def source_run_id(path: Path) -> str | None:
    """The run a checkpoint belongs to, when it still sits in its run directory (RUN/checkpoints/*.pt beside run.json)."""
    info = path.parent.parent / "run.json"
    if path.parent.name != "checkpoints" or not info.is_file():
        return None
    try:
        return json.loads(info.read_text()).get("run_id") or path.parent.parent.name
    except (OSError, ValueError):
        return path.parent.parent.name


def architecture_mismatch(source: StudentConfig, here: StudentConfig) -> list[str]:
    """The ``model.*`` fields (other than ``FREE_FIELDS``) on which the source's student differs from this run's;
    a different kind is the only difference named, since the other fields follow from it."""
    if source.kind != here.kind:
        return ["kind"]
    theirs, ours = source.model_dump(mode="json"), here.model_dump(mode="json")
    return [name for name in ours if name not in FREE_FIELDS and theirs.get(name) != ours[name]]


def open_source(cfg: JobConfig) -> InitSource:
    """Read ``cfg.train.init_from`` (once: the sha256 is of the very bytes loaded), check that its student is this
    run's architecture, and return its weights. Every problem is one ConfigError line naming the key and the source."""
    location = cfg.train.init_from
    assert location is not None
    path = checkpoint_file(location)
    where = f"train.init_from={location}"
    data = path.read_bytes()
    import torch  # here, not at the top: a training job's --check without init_from imports no torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many kinds (unpickling, zip, EOF) on a file that is not a checkpoint
        raise ConfigError(f"{where}: {path} is not a training checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"{where}: {path} is not a training checkpoint (no saved config and model weights inside)")
    try:
        source = TypeAdapter(StudentConfig).validate_python(state["config"].get("model", {}))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {path} holds no student config this version reads ({exc.errors()[0]['msg']})") from None
    differing = architecture_mismatch(source, cfg.model)
    if differing:
        theirs, ours = source.model_dump(mode="json"), cfg.model.model_dump(mode="json")
        said = "; ".join(f"model.{name} is {_value(theirs[name])} there, {_value(ours[name])} here" for name in differing)
        fix = (f"start from a {cfg.model.kind} student" if differing == ["kind"] else
               "train with the source's architecture (--set " + " ".join(f"model.{name}={_value(theirs[name])}" for name in differing) + ")")
        raise ConfigError(f"{where}: not this run's student ({path}): {said}; {fix} or without train.init_from")
    student = {key[len(STUDENT_PREFIX):]: value for key, value in state["model"].items() if key.startswith(STUDENT_PREFIX)}
    record = InitFrom(location=location, path=str(path.resolve()), run_id=source_run_id(path), sha256=hashlib.sha256(data).hexdigest())
    return InitSource(record, student)


def _value(value: object) -> str:
    """A config value as ``--set`` takes it (``[64,64]``, ``mlp``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
