"""``python -m launch.compute.accelerate_run ACCELERATE-ARGS -m MODULE JOB-ARGS``: ``accelerate launch`` as every backend
runs it. When the job exits non-zero, ``accelerate launch`` reports it with a traceback of its own (a
CalledProcessError, or torch elastic's ChildFailedError table) under the job's one-line error; here the job's exit
code is passed on and nothing else is added. A SIGTERM or SIGHUP it gets reaches every process of the job.

One process (the embedded default, a Kaggle kernel, one GPU): accelerate's simple launcher would start the job as a
child with the environment it prepares, a second interpreter importing torch again (about 2 s on 2 cores, every
launch). Here the job runs in this process instead, with that same environment (accelerate's own
``prepare_simple_launcher_cmd_env``), after accelerate has read the config and chosen that launcher. Several
processes, DeepSpeed and the rest go through accelerate's launchers unchanged.
"""
from __future__ import annotations

import argparse
import logging
import os
import runpy
import signal
import subprocess
import sys


def pass_on(signum, frame) -> None:
    """A SIGTERM or SIGHUP for this process (the launcher died, or passed one on) goes to the whole job: its process
    group, which this process leads; then the signal ends this process too."""
    signal.signal(signum, signal.SIG_DFL)
    os.killpg(0, signum)


def run_here(args: argparse.Namespace) -> None:
    """accelerate's simple launcher, the job run in this process: the command and environment accelerate prepares
    for its child, applied here (the thread count too: torch read the old one when this process imported it)."""
    import torch
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    command, env = prepare_simple_launcher_cmd_env(args)
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if command[1] == "-m":  # [python, -m, module, *args]: runpy puts the module's file in argv[0], as python -m does
        sys.argv = command[2:]
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
    else:  # [python, script, *args]
        sys.argv = command[1:]
        runpy.run_path(command[1], run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    import accelerate.commands.launch as accelerate_launch
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure table repeats the job's error
    if os.getpgid(0) == os.getpid():  # the launcher started it as a group of its own
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, pass_on)
    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    accelerate_launch.simple_launcher = run_here  # the launcher accelerate picks for one process, when it picks it
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
