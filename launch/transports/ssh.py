"""Machines over SSH: commands through the system's ``ssh``, files through ``rsync``, both with the user's SSH
configuration (aliases, keys, agents, jump hosts; ``config`` for another file) -- and the Python a job runs with
there: an interpreter as it is, or a venv made once from the project's pinned requirements."""
from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from collections.abc import Sequence

from launch.accelerate import REPO_ROOT
from launch.errors import LaunchError, Unreachable
from sync.ssh import ssh_base

NEEDED = ("torch", "accelerate", "webdataset")  # what the job's interpreter must import


class Host:
    """One machine: commands over ssh, files over rsync. An ssh that cannot connect (exit 255) or does not answer is
    ``Unreachable``; a command that fails is a ``LaunchError`` naming the host and what was asked."""

    def __init__(self, name: str, config: str | None):
        self.name, self.config, self.base = name, config, ssh_base(name, config)

    def run(self, command: str, timeout: float = 120, what: str = "") -> str:
        try:
            result = subprocess.run([*self.base, command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Unreachable(f"{self.name}: no answer over ssh within {timeout:.0f} s{' (' + what + ')' if what else ''}") from None
        if result.returncode == 255:
            raise Unreachable(f"cannot reach {self.name} over ssh: {result.stderr.strip()[-400:]} (check the host name, port, key "
                              f"and your SSH config; try `ssh {self.name}` by hand)")
        if result.returncode != 0:
            raise LaunchError(f"{self.name}: {what or command} failed (exit {result.returncode}): "
                              f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result.stdout

    def rsync(self, source: str, dest: str, *flags: str) -> int | None:
        """Copy ``source`` to ``dest`` on this host; returns the bytes of the files rsync sent (0: all there already; None:
        its --stats named no figure)."""
        target = self.base[-1]
        transport = " ".join(shlex.quote(a) for a in self.base[:-1])
        result = subprocess.run(["rsync", "-a", "--partial", "--mkpath", "--stats", *flags, "-e", transport, source, f"{target}:{dest}"],
                                capture_output=True, text=True)
        if result.returncode in (12, 30, 35, 255):  # protocol stream broken, timeouts, ssh gone
            raise Unreachable(f"rsync to {self.name}:{dest}: the connection failed (exit {result.returncode}): {result.stderr.strip()[-400:]}")
        if result.returncode != 0:
            raise LaunchError(f"rsync to {self.name}:{dest} failed (exit {result.returncode}): {result.stderr.strip()[-600:]}")
        sent = re.search(r"^Total transferred file size: ([\d,.]+) bytes", result.stdout, re.M)
        return int(re.sub(r"\D", "", sent.group(1))) if sent else None

    def address(self) -> str:
        """The HostName ssh resolves this host to (aliases included): where the other nodes find it."""
        result = subprocess.run([*self.base[:-1], "-G", self.base[-1]], capture_output=True, text=True)
        names = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("hostname ")]
        return names[0] if names else self.base[-1].rsplit("@", 1)[-1]


def requirements_digest(extras: Sequence[str], inherit: bool, python: str) -> str:
    parts = [(REPO_ROOT / "pyproject.toml").read_bytes(), (REPO_ROOT / "constraints.txt").read_bytes(),
             repr((tuple(extras), inherit, python)).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def find_python(host: Host, python: str) -> None:
    found = host.run(f"command -v {shlex.quote(python)} || echo MISSING", what="looking for Python").strip()
    if found.endswith("MISSING"):
        raise LaunchError(f"{host.name}: no {python} there; pass --python PATH to an interpreter on that host (or --venv "
                          "with a python3 that can create one)")


def prepare_python(host: Host, root: str, extras: Sequence[str], python: str, venv: bool, inherit: bool) -> str:
    """The interpreter the job runs with on ``host``: ``python`` as is, or the project's venv (made once)."""
    find_python(host, python)
    if venv:
        python = make_venv(host, root, extras, python, inherit)
    probe = f"import importlib.util as u; print(' '.join(m for m in {NEEDED!r} if u.find_spec(m) is None))"
    missing = host.run(f"{shlex.quote(python)} -c {shlex.quote(probe)}", what="checking the interpreter").strip()
    if missing:
        raise LaunchError(f"{host.name}: {python} lacks {missing}; pass --venv to make an environment from the project's "
                          "pinned requirements, or --python PATH to one that has them")
    return python


INHERIT = ("import pathlib, subprocess, sys, sysconfig; paths = subprocess.run([sys.argv[1], '-c', 'import site; "
           "print(chr(10).join(site.getsitepackages()))'], capture_output=True, text=True, check=True).stdout; "
           "pathlib.Path(sysconfig.get_paths()['purelib'], '_streamapprox_inherit.pth').write_text(paths)")


def make_venv(host: Host, root: str, extras: Sequence[str], python: str, inherit: bool) -> str:
    """``<root>/envs/<digest>``: the project's pinned requirements (torch by constraints.txt) in a venv made
    once per requirements, interpreter and extras, and reused while they are unchanged. With ``inherit``
    the venv also sees ``python``'s packages (a .pth file; works when ``python`` is itself a venv), so an
    image's torch is used instead of downloaded again. Not byte-compiled at install (as on a Kaggle kernel): the modules
    the jobs import compile as they are first imported, and stay compiled in the venv."""
    env = f"{root}/envs/{requirements_digest(extras, inherit, python)}"
    code, joined = f"{root}/code", ",".join(extras)
    steps = [f"{shlex.quote(python)} -m venv {env}",
             *([f"{env}/bin/python -c {shlex.quote(INHERIT)} {shlex.quote(python)}"] if inherit else []),
             f"{env}/bin/pip install -q --disable-pip-version-check --no-compile -c {code}/constraints.txt torch torchvision torchaudio",
             f"{env}/bin/pip install -q --disable-pip-version-check --no-compile -c {code}/constraints.txt "
             f"'{code}{'[' + joined + ']' if joined else ''}'",
             f"touch {env}/.ready"]
    made = host.run(f"test -f {env}/.ready && echo reused || ( rm -rf {env} && {' && '.join(steps)} && echo made )",
                    timeout=3600, what="creating the venv").strip().splitlines()[-1]
    print(f"launch ssh: {host.name}: python environment {env} ({made})", flush=True)
    return f"{env}/bin/python"
