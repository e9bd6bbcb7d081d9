"""``python -m launch.compute.accelerate_run ACCELERATE-ARGS -m MODULE JOB-ARGS``: ``accelerate launch`` as every backend
runs it. When the job exits non-zero, ``accelerate launch`` reports it with a traceback of its own (a
CalledProcessError, or torch elastic's ChildFailedError table) under the job's one-line error; here the job's exit
code is passed on and nothing else is added. A SIGTERM or SIGHUP it gets reaches every process of the job.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys


def pass_on(signum, frame) -> None:
    """A SIGTERM or SIGHUP for this process (the launcher died, or passed one on) goes to the whole job: its process
    group, which this process leads; then the signal ends this process too."""
    signal.signal(signum, signal.SIG_DFL)
    os.killpg(0, signum)


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure table repeats the job's error
    if os.getpgid(0) == os.getpid():  # the launcher started it as a group of its own
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, pass_on)
    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    except ChildFailedError as exc:
        codes = [failure.exitcode for _, failure in sorted(exc.failures.items())]
        return next((code for code in codes if code > 0), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
