"""The training job's typed config: YAML preset -> optional --config file -> --set overrides.

Unknown keys and wrong types are errors that name the key, raised before anything runs.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from model.config import STUDENT_CONFIGS, LossConfig, MLPStudentConfig, Strict, StudentConfig
from model.selection import RECALL_AT

PRESETS = Path(__file__).parent / "presets"
INIT_CHECKPOINTS = ("best", "last")  # train.init_from=RUN:<which> takes RUN/checkpoints/<which>.pt
STUDENT_KINDS = {config.model_fields["kind"].default for config in STUDENT_CONFIGS}
SELECTABLE = sorted(
    [f"{d}_{m}" for d in ("s2t", "t2s") for m in [f"r{k}" for k in RECALL_AT] + ["medr", "meanr", "cos_gap"]] + ["mean_cos", "mse"]
)


class ConfigError(ValueError):
    """A config problem; the message names the key."""


class DataConfig(Strict):
    shards: str = "synthetic://msrvtt"
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    cache: Literal["auto", "memory", "stream"] = "auto"
    cache_max_gb: float = Field(4.0, ge=0)
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(2000, ge=0)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


class OptimConfig(Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.98], min_length=2, max_length=2)
    eps: float = Field(1e-8, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    # early stopping: the run ends, complete, once this many epochs in a row bring no better validation select_metric
    # (best.pt is the best epoch either way); None = every epoch runs
    patience: int | None = Field(None, ge=1)
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None  # None: as the accelerate config says
    log_every: int = Field(20, ge=1)
    select_metric: str = "s2t_r1"
    checkpoint_every: int = Field(0, ge=0)  # steps between mid-epoch last.pt saves; 0 = epoch ends only
    evaluate_test: bool = True
    audit: bool = False  # per-rank sample ids + parameter digests per step in logs/audit-rank*.jsonl
    # where metrics.jsonl's figures also go, through Accelerate's trackers (jobs/trackers.py); [] = metrics.jsonl only
    log_with: list[Literal["tensorboard", "wandb", "mlflow"]] = ["tensorboard"]  # pydantic copies it for each config
    tracker_project: str = Field("streamapprox", min_length=1)  # the W&B project and MLflow experiment; a run is named by its id

    @field_validator("log_with", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``--set train.log_with=tensorboard,wandb`` reads as one string: a comma-separated list. Each tracker once."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(part, str) for part in value):
            return list(dict.fromkeys(value))
        return value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_not_false(cls, value: Any) -> Any:
        """YAML reads a bare ``no`` (``--set train.mixed_precision=no``) as false: it meant the string."""
        return "no" if value is False else value

    # steps per session (the first run and each resume): stop resumably after this many, like a time budget
    # that does not depend on how fast the machine is; None = no limit
    session_steps: int | None = Field(None, ge=1)
    # fine-tune: start the student from another run's weights (RUN = its best.pt, RUN:last, RUN:best, or a .pt file),
    # with a fresh optimizer and schedule; jobs/init_from.py. None = random initialisation
    init_from: str | None = None

    @field_validator("init_from")
    @classmethod
    def _local_checkpoint(cls, value: str | None) -> str | None:
        """Only the form is checked here: the file is opened by the job (never on --resume, which continues from last.pt)."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("empty: give a run directory (RUN, RUN:best, RUN:last) or a checkpoint file, or null")
        if "://" in value:
            raise ValueError("a run directory or checkpoint file on this machine; bring a remote run here first (launch pull RUN)")
        which = value.rpartition(":")[2]
        if ":" in value and which.isalpha() and which not in INIT_CHECKPOINTS:
            raise ValueError(f"':{which}': a run's checkpoint is RUN:best or RUN:last")
        return value

    @field_validator("select_metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in SELECTABLE:
            raise ValueError(f"must be one of {SELECTABLE}")
        return value


class JobConfig(Strict):
    job: str
    data: DataConfig = Field(default_factory=DataConfig)
    model: StudentConfig = Field(default_factory=MLPStudentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def load_yaml(text: str, where: str) -> Any:
    """YAML, or one line naming ``where`` (a file, or a --set argument), the line and column, and what is wrong."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{position}: {exc.problem or exc.context}"
                          + (f" ({exc.context})" if exc.problem and exc.context else "")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None


def parse_value(text: str, where: str = "the value") -> Any:
    """YAML scalar/list syntax, plus plain float forms YAML 1.1 leaves as strings (``1e-3``)."""
    value = load_yaml(text, where) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_value(data: dict, key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key="a.b"``, creating sections as needed."""
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set loss.temperature=0.05")
    key, text = assignment.split("=", 1)
    return key.strip(), parse_value(text, f"--set {assignment!r}")


def apply_override(data: dict, assignment: str) -> None:
    key, value = parse_assignment(assignment)
    try:
        set_value(data, key, value)
    except ConfigError as exc:
        raise ConfigError(f"--set {exc}") from None


def _known_keys(loc: tuple, root: type[Strict]) -> list[str]:
    """Field names valid where ``loc`` points (for "did you mean")."""
    if root is JobConfig and len(loc) == 2 and loc[0] == "model":
        return sorted({name for config in STUDENT_CONFIGS for name in config.model_fields})
    node: type[BaseModel] | None = root
    for part in loc[:-1]:
        field = node.model_fields.get(part) if node is not None else None
        if field is None:
            return []
        node = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ())) if hasattr(a, "model_fields")), None)
    return sorted(node.model_fields) if node is not None else []


def format_validation_error(exc: ValidationError, root: type[Strict] | None = None) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"] if part not in STUDENT_KINDS)  # pydantic's union tags
        key = ".".join(loc)
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _known_keys(loc, root or JobConfig), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            lines.append(f"{key}: unknown config key{hint}")
        else:
            given = error.get("input")
            lines.append(f"{key}: {error['msg']}" + ("" if isinstance(given, dict) else f" (got {given!r})"))
    return "invalid config:\n  " + "\n  ".join(lines)


def preset_names(job: str | None = None) -> list[str]:
    """Every preset, or those of one job."""
    names = sorted(p.stem for p in PRESETS.glob("*.yaml"))
    return names if job is None else [name for name in names if preset_data(name).get("job") == job]


def preset_data(preset: str, _chain: tuple[str, ...] = ()) -> dict:
    """A preset's YAML; ``extends: OTHER`` starts from another preset (one changed key, not a copy)."""
    path = PRESETS / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {preset!r} in {PRESETS} (presets: {', '.join(preset_names())})")
    if preset in _chain:
        raise ConfigError(f"{path}: 'extends' loops: {' -> '.join((*_chain, preset))}")
    data = load_yaml(path.read_text(), str(path)) or {}
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = preset_data(base, (*_chain, preset))
    deep_merge(merged, data)
    return merged


def layered(data: dict, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """``data`` with a YAML file merged over it, then ``--set`` overrides applied."""
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"{config_file}: config file not found")
        try:
            text = Path(config_file).read_text()
        except OSError as exc:
            raise ConfigError(f"--config {config_file}: cannot read it ({exc.strerror})") from None
        extra = load_yaml(text, str(config_file)) or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{config_file}: expected a mapping of config sections")
        deep_merge(data, extra)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def load_config(preset: str, config_file: str | None = None, overrides: list[str] | None = None) -> JobConfig:
    return validate_config(layered(preset_data(preset), config_file, overrides))


def validate_config(data: dict) -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def deep_merge(base: dict, extra: dict) -> None:
    """``extra`` into ``base``, in place: sections merge key by key, anything else replaces."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
