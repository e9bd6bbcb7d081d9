"""One live owner per run directory. The process that runs a job holds an exclusive lock on ``RUN/.lock``
(``flock``: released by the kernel when the process dies, however it dies) and writes a heartbeat into
``RUN/logs/heartbeat.json`` every ``HEARTBEAT_S`` seconds. A second job on the same run directory is refused,
naming the holder; ``launch status`` tells a run whose owner is gone (``died``) from one that runs.

Standard library only: the launcher reads it too.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import threading
from pathlib import Path

LOCK = ".lock"
HEARTBEAT = Path("logs") / "heartbeat.json"
HEARTBEAT_S = 30.0


class RunInUse(RuntimeError):
    """Another live process owns the run directory."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    tmp.replace(path)


class RunLock:
    """``with RunLock(run_dir, "train_mlp"):`` -- the job owns the run directory while the block runs."""

    def __init__(self, run_dir: Path, job: str):
        self.run_dir, self.job = Path(run_dir), job
        self._fd: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = owner(self.run_dir) or {}
            raise RunInUse(f"{self.run_dir}: in use by a {holder.get('job', '?')} job, pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')} since {holder.get('started_at', '?')}; a run directory has one owner at a time: "
                           "wait for it, or stop that process first") from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps({"job": self.job, "pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}) + "\n").encode())
        self._fd = fd
        (self.run_dir / HEARTBEAT).parent.mkdir(parents=True, exist_ok=True)
        self._beat()
        threading.Thread(target=self._beats, daemon=True, name="heartbeat").start()
        return self

    def _beat(self) -> None:
        _write(self.run_dir / HEARTBEAT, {"pid": os.getpid(), "host": socket.gethostname(), "at": _now()})

    def _beats(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except OSError:  # a full or vanished disk: the job itself will say so
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def owner(run_dir: Path) -> dict | None:
    """Who took the run directory last (the lock file's record), or None."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return None


def liveness(run_dir: Path) -> tuple[bool | None, dict]:
    """(alive, what is known): True while a process holds the lock, False once none does (its owner died or
    ended), None when this machine cannot tell: no lock was ever taken here (a run directory copied or pulled from
    elsewhere: the lock never travels), or its owner ran on another host -- then judged by its heartbeat."""
    run_dir = Path(run_dir)
    known = owner(run_dir)
    if known is None:
        return None, {}
    try:
        known["heartbeat"] = json.loads((run_dir / HEARTBEAT).read_text())["at"]
    except (OSError, ValueError, KeyError):
        pass
    if known.get("host") != socket.gethostname():
        beat = known.get("heartbeat")
        if beat is None:
            return None, known
        age = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(beat)).total_seconds()
        return (age < 4 * HEARTBEAT_S), known
    fd = os.open(run_dir / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, known
    except OSError:
        return True, known
    finally:
        os.close(fd)


def lock_held(lock: Path) -> bool:
    """Whether a living process holds ``lock`` (``flock``, shared or exclusive); a lock file no one holds is removed.
    Call it under a lock that also orders the taking of such locks (a folder's scan lock), or a process could take a
    lock file just as it is removed."""
    try:
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    lock.unlink(missing_ok=True)
    return False
