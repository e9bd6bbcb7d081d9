"""``python -m launch.compute.unit --files PREFIX [--echo] -- COMMAND...``: one unit of a run, as the local and SSH
backends start it.

The command runs in a process group of its own; its output goes to ``PREFIX.log`` (and, with ``--echo``, to this
process's stdout and stderr as it comes, each stream to its own); its exit code lands in ``PREFIX.exit`` when it
ends, and this process's pid in ``PREFIX.pid`` while it runs -- so whoever started it, or ``launch status/logs/stop``
from another shell, can follow it without holding a connection. Ctrl-C, SIGTERM and SIGHUP reach the whole job once;
if this process is killed outright, the job gets SIGTERM. Standard library only.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def die_with_parent() -> None:
    """In the child, before it runs: get SIGTERM when its parent dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervised(subprocess.Popen):
    """A process this one passes its signals on to, with the handlers it replaced (``restore_signals`` puts them back)."""

    previous_handlers: dict[int, Any] = {}


def supervise(command: list[str], env: dict | None = None, **popen: Any) -> Supervised:
    """Start ``command`` as the leader of its own process group and pass on every Ctrl-C, SIGTERM and SIGHUP this
    process gets, once; returns the process (wait on it, then call ``restore_signals``)."""
    process = Supervised(command, env=env, start_new_session=True, preexec_fn=die_with_parent, **popen)

    def forward(signum, frame) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass

    process.previous_handlers = {signum: signal.signal(signum, forward) for signum in SIGNALS}
    return process


def restore_signals(process: Supervised) -> None:
    for signum, handler in process.previous_handlers.items():
        signal.signal(signum, handler)


def run_supervised(command: list[str], env: dict | None = None) -> int:
    """``command`` to its end under ``supervise``; its exit code."""
    process = supervise(command, env)
    try:
        return process.wait()
    finally:
        restore_signals(process)


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as a shell says


def pump(source, sinks: list) -> None:
    """Copy ``source`` to every sink as it comes; a sink that fails (a full disk under the log) is dropped, the rest go on."""
    for chunk in iter(lambda: source.read1(65536), b""):
        for sink in list(sinks):
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sinks.remove(sink)


class Log:
    """The unit's log file, written by both pumps a chunk at a time; none when it cannot be opened (the job still runs)."""

    def __init__(self, path: Path):
        self.lock = threading.Lock()
        self.handle: BinaryIO | None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(path, "ab", buffering=0)
        except OSError:
            self.handle = None

    def write(self, data: bytes) -> None:
        if self.handle is None:
            raise OSError("no log")
        with self.lock:
            self.handle.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def write_small(path: Path, text: str) -> None:
    """Atomically, or not at all (a full or read-only disk: the caller has other ways to know)."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.compute.unit")
    parser.add_argument("--files", required=True, help="PREFIX of PREFIX.log, PREFIX.exit and PREFIX.pid")
    parser.add_argument("--echo", action="store_true", help="also write the job's output to this process's stdout/stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    prefix = Path(args.files)
    files = {suffix: prefix.with_name(prefix.name + suffix) for suffix in (".log", ".exit", ".pid")}
    log = Log(files[".log"])
    for suffix in (".exit", ".pid"):
        files[suffix].unlink(missing_ok=True)
    write_small(files[".pid"], f"{os.getpid()}\n")
    process = supervise(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pumps = [threading.Thread(target=pump, args=(stream, [log, *([echo] if args.echo else [])]), daemon=True)
             for stream, echo in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer))]
    for thread in pumps:
        thread.start()
    code = exit_code(process.wait())
    for thread in pumps:
        thread.join(timeout=30)
    log.close()
    write_small(files[".exit"], f"{code}\n")
    files[".pid"].unlink(missing_ok=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
