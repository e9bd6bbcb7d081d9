"""The backends, found by looking: every ``Backend`` subclass in a module of this package is one, under its ``name``.
Adding a backend is adding a module here (``docs/extending.md``)."""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from launch.backends.base import Backend, Job, Run

ORDER = ("local", "kaggle", "ssh", "ray")  # the order people meet them in; others after, by name


@cache
def registry() -> dict[str, type[Backend]]:
    found: dict[str, type[Backend]] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, Backend) and value is not Backend and value.__module__ == loaded.__name__:
                found[value.name] = value
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0])))


__all__ = ["Backend", "Job", "Run", "registry"]
