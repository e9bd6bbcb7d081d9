"""Search spaces over the training job's config keys, declared in YAML.

A space file (``tune/spaces/<name>.yaml`` or any path)::

    preset: train_transformer          # the training preset every trial starts from
    metric: s2t_r1                     # validation metric to select on (default: the preset's)
    set: {train.epochs: 8}             # fixed overrides for every trial
    space:                             # searched keys -> distributions
      loss.temperature: loguniform(0.02, 0.2)
      model.depth: choice([1, 2, 3, 4])

Distributions: ``uniform(lo, hi)``, ``loguniform(lo, hi)``, ``quniform(lo, hi, q)``,
``randint(lo, hi)`` (hi exclusive), ``choice([...])``, ``grid([...])`` (every value, times
``--num-samples``). Every key and every value a distribution can produce is validated against the
typed config before Ray starts, so a typo fails in a second, not in trial 7.
"""
from __future__ import annotations

import ast
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.config import ConfigError, JobConfig, load_yaml, preset_data, set_value, validate_config

SPACES = Path(__file__).parent / "spaces"
FILE_KEYS = {"description", "preset", "metric", "set", "space"}


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(repr(a) for a in self.args)})"

    @property
    def log_scale(self) -> bool:
        return self.kind == "loguniform"

    def edge_values(self) -> list[Any]:
        """Values this distribution can produce that validation must accept (its ends, or all of them)."""
        if self.kind in ("choice", "grid"):
            return list(self.args[0])
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        if self.kind == "quniform":
            low, high, q = self.args
            return [round(low / q) * q, round(high / q) * q]
        return [float(self.args[0]), float(self.args[1])]

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.kind == "choice":
            return tune.choice(list(self.args[0]))
        return getattr(tune, self.kind)(*self.args)

    def grid_size(self) -> int:
        return len(self.args[0]) if self.kind == "grid" else 1


def _check_range(kind: str, args: tuple) -> str | None:
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            return f"{kind} takes one non-empty list, e.g. {kind}([1, 2, 3])"
        return None
    count = 3 if kind == "quniform" else 2
    if len(args) != count or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        return f"{kind} takes {count} numbers"
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        return "randint takes two integers (high exclusive)"
    low, high = args[0], args[1]
    if not low < high:
        return f"{kind} needs low < high, got {low} and {high}"
    if kind == "loguniform" and low <= 0:
        return f"loguniform needs low > 0, got {low}"
    if kind == "quniform" and args[2] <= 0:
        return f"quniform needs q > 0, got {args[2]}"
    return None


KINDS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")


def parse_distribution(text: Any, where: str) -> Distribution:
    """``loguniform(0.02, 0.2)`` -> Distribution; anything else is an error naming ``where``."""
    example = "e.g. loguniform(0.02, 0.2) or choice([1, 2, 3])"
    if not isinstance(text, str):
        raise ConfigError(f"{where}: {text!r} is a fixed value, not a distribution; put fixed values under 'set:' ({example})")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"{where}: cannot parse {text!r} ({example})") from None
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.keywords:
        raise ConfigError(f"{where}: {text!r} is not a distribution ({example})")
    kind = node.func.id
    if kind not in KINDS:
        raise ConfigError(f"{where}: unknown distribution {kind!r} (one of {', '.join(KINDS)})")
    try:
        args = tuple(ast.literal_eval(arg) for arg in node.args)
    except ValueError:
        raise ConfigError(f"{where}: {text!r}: arguments must be plain numbers or lists") from None
    problem = _check_range(kind, args)
    if problem:
        raise ConfigError(f"{where}: {text!r}: {problem}")
    return Distribution(kind, args)


def native(value: Any) -> Any:
    """Ray samples numpy scalars; the typed config wants Python ones."""
    return value.item() if hasattr(value, "item") else value


@dataclass
class SearchSpace:
    source: str  # the file it came from
    preset: str
    fixed: dict[str, Any]
    params: dict[str, Distribution]
    description: str = ""
    base: dict = field(default_factory=dict)  # preset + fixed (+ the sweep's --set): every trial's starting config
    # the validation metric trials select on: the base config's train.select_metric, resolved by load_space once base is
    # validated (the file's 'metric:' is how it is chosen)
    metric: str = field(init=False)

    def trial_config(self, values: dict[str, Any]) -> JobConfig:
        data = copy.deepcopy(self.base)
        for key, value in values.items():
            set_value(data, key, native(value))
        return validate_config(data)

    def grid_size(self) -> int:
        return math.prod(d.grid_size() for d in self.params.values())

    def to_tune(self) -> dict:
        return {key: dist.to_tune() for key, dist in self.params.items()}

    def max_epochs(self) -> int:
        searched = self.params.get("train.epochs")
        if searched is None:
            return validate_config(self.base).train.epochs
        return max(int(v) for v in searched.edge_values())

    def apply(self, overrides: dict[str, Any]) -> None:
        """Fix more keys for every trial (the sweep's ``--set``), then validate the space against them."""
        clash = sorted(set(overrides) & set(self.params))
        if clash:
            raise ConfigError(f"{self.source}: {', '.join(clash)} searched by the space and also fixed (by its 'set:' or --set); drop one of them")
        for key, value in overrides.items():
            set_value(self.base, key, value)
        self.validate()

    def validate(self, check: Callable[[JobConfig], None] = lambda cfg: None) -> None:
        """Validate the base config and every edge value of every searched key, each in the config a trial would
        get, and put each of those configs through ``check`` (what the shards demand: dims, batch size)."""
        try:
            check(validate_config(self.base))
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: base config (preset {self.preset!r} + set): {exc}") from None
        for key, dist in self.params.items():
            for value in dist.edge_values():
                try:
                    check(self.trial_config({key: value}))
                except ConfigError as exc:
                    raise ConfigError(f"{self.source}: space key {key} = {dist} (value {value!r}): {exc}") from None


def resolve_space_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--space {name_or_path}: no such file")
        return path
    bundled = SPACES / f"{name_or_path}.yaml"
    if not bundled.is_file():
        names = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
        raise ConfigError(f"--space {name_or_path!r}: not a file and not a bundled space ({names})")
    return bundled


def load_space(name_or_path: str, preset: str | None = None) -> SearchSpace:
    """Read and validate a space file; ``preset`` replaces the file's preset."""
    path = resolve_space_path(name_or_path)
    data = load_yaml(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'preset', 'set' and 'space'")
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(FILE_KEYS))})")
    fixed, raw = data.get("set") or {}, data.get("space") or {}
    if not isinstance(fixed, dict) or not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: 'space' must map config keys to distributions (and 'set', if present, keys to values)")
    chosen = preset or data.get("preset")
    if not chosen:
        raise ConfigError(f"{path}: no 'preset' (e.g. preset: train_mlp), and none given with --preset")
    params = {str(key): parse_distribution(text, f"{path}: space key {key}") for key, text in raw.items()}
    space = SearchSpace(source=str(path), preset=chosen, fixed=dict(fixed), params=params,
                        description=str(data.get("description", "")), base=preset_data(chosen))
    requested_metric = data.get("metric")
    if requested_metric:
        fixed.setdefault("train.select_metric", requested_metric)
    space.apply({str(k): v for k, v in fixed.items()})
    space.metric = validate_config(space.base).train.select_metric
    return space
