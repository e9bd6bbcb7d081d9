"""Reading and rewriting a job's own command line (``--resume RUN``, ``--time-budget S``) without knowing the job."""
from __future__ import annotations


def option_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``), or None."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def without_option(args: list[str], flag: str) -> list[str]:
    """``args`` less ``flag`` and its value."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            kept.append(arg)
    return kept


def assignments(args: list[str]) -> dict[str, str]:
    """The ``--set key=value`` assignments in ``args`` (every value after a ``--set`` up to the next option)."""
    found, inside = {}, False
    for arg in args:
        if arg == "--set":
            inside = True
        elif arg.startswith("-"):
            inside = False
        elif inside and "=" in arg:
            key, value = arg.split("=", 1)
            found[key.strip()] = value
    return found
