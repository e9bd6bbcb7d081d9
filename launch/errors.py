"""The launcher's errors, and the one table of exit codes every ``launch`` command follows.

Each error carries its exit code; ``launch.cli`` turns any of them into one line on stderr and that code.
"""
from __future__ import annotations

EXIT_CODES = {
    0: "complete: the run directory is here (`runs/<run-id>`), or the command did what it says",
    1: "the job failed: it ran and exited non-zero, a kernel or node failed, a sweep had errored trials, training diverged",
    2: "refused before anything ran: bad config, inputs, options or credentials, an unreachable compute; nothing was sent",
    3: "not complete here: the run is still incomplete, the connection was lost, or it could not be pulled -- it goes on "
       "or waits: `launch <backend> JOB --resume RUN` or `launch pull RUN` continues",
    130: "interrupted (Ctrl-C): a local job is stopped; a remote one goes on (`launch logs RUN --follow`)",
}


class LaunchError(RuntimeError):
    """Refused before anything ran; the message says what to change. ``code`` overrides the class's exit code (a job's
    own refusal keeps its code); ``said``: the job already printed the one line that explains it."""

    code = 2

    def __init__(self, message: str, code: int | None = None, said: bool = False):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.said = said


class JobFailed(LaunchError):
    """The job ran and failed (on whichever compute)."""

    code = 1


class Incomplete(LaunchError):
    """The run is not complete here; the message says the command that continues it."""

    code = 3


class Unreachable(LaunchError):
    """The compute did not answer this time (a dropped connection, a 5xx, a timeout): the driver retries, and past its
    patience the run counts as ``Incomplete`` -- it goes on without us."""

    code = 3


class Busy(LaunchError):
    """The compute refused to start more now (Kaggle's two GPU sessions): the driver waits and starts it later."""

    code = 3


def exit_code_table() -> str:
    """The table as ``launch --help`` prints it."""
    return "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())


def exit_code_markdown() -> str:
    """The table as the README and docs/errors.md show it (a test holds them to it)."""
    return "\n".join(["| code | meaning |", "|---|---|", *(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items())])
