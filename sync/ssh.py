"""``ssh://HOST/ABS/PATH``: a directory on a machine reached with the system's ``ssh`` (read-only).

HOST is anything ``ssh`` accepts -- an alias from ~/.ssh/config, ``user@host``, with ``:port`` --
so keys, agents and jump hosts come from the user's own SSH configuration. ``$STREAMAPPROX_SSH_CONFIG``
names another config file (``ssh -F``). Listing hashes every file remotely (``sha256sum``) in one
call; each download streams ``cat`` through the same verification as every other store.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from data_shards.files import CHUNK, PARTIAL_SUFFIX, atomic_destination
from sync.base import SYNC_MANIFEST, Entry, Progress, Store, SyncError, Verifier

BATCH = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10"]
SHARED_FOR_S = 60  # how long a host's shared connection outlives its last call


def shared_connection(config: str | None) -> list[str]:
    """One connection per host, shared by every call for a while (OpenSSH's ControlMaster, as Ansible uses it): a launch
    makes dozens of short calls (mkdir, rsync, status, log tails), and a new connection each time costs a key exchange
    and a login. The sockets live in a directory of this user's alone; none where it cannot be made (each call then
    connects on its own, as before). A connection is shared only among calls with the same config file (another may name
    another key). ``STREAMAPPROX_SSH_SHARED=0`` turns it off."""
    if os.environ.get("STREAMAPPROX_SSH_SHARED", "1") == "0":
        return []
    folder = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"streamapprox-ssh-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        state = folder.stat()
    except OSError:
        return []
    if state.st_uid != os.getuid() or state.st_mode & 0o077:
        return []  # someone else's, or open to others: never put this user's sockets there
    of_config = hashlib.sha256(str(Path(config).resolve() if config else "").encode()).hexdigest()[:8]
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={folder}/{of_config}-%C", "-o", f"ControlPersist={SHARED_FOR_S}"]


def ssh_base(host: str, config: str | None = None) -> list[str]:
    """``ssh [-F config] [-p port] host``: the command prefix every remote call uses."""
    target, port = host, None
    if host.count(":") == 1 and host.rsplit(":", 1)[1].isdigit():
        target, port = host.rsplit(":", 1)
    config = config or os.environ.get("STREAMAPPROX_SSH_CONFIG")
    return ["ssh", *BATCH, *shared_connection(config), *(["-F", config] if config else []), *(["-p", port] if port else []), target]


class SshStore(Store):
    writable = False

    def __init__(self, url: str, host: str, root: str, config: str | None = None, checksums: bool = True):
        """``checksums=False``: list names and sizes only -- a video collection, listed for a plan, is not read whole
        on its host to be hashed (each video is still checked against its listed size as it is read)."""
        self.url, self.root, self.base = url, root.rstrip("/") or "/", ssh_base(host, config)
        self.checksums = checksums

    def _run(self, command: str, timeout: float = 300) -> str:
        try:
            result = subprocess.run([*self.base, command], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SyncError(f"{self.url}: no answer over ssh within {timeout:.0f} s") from None
        if result.returncode == 255:
            raise SyncError(f"{self.url}: ssh failed: {result.stderr.strip()[-500:]}")
        if result.returncode != 0:
            raise SyncError(f"{self.url}: remote command failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
        return result.stdout

    def list(self) -> dict[str, Entry]:
        root = shlex.quote(self.root)
        hashing = " && echo --- && find . -type f -exec sha256sum {} +" if self.checksums else ""
        out = self._run(f"test -d {root} || exit 0; cd {root} && find . -type f -printf '%s %P\\n'{hashing}")
        if not out.strip():
            return {}
        sizes_text, _, sums_text = out.partition("---\n")
        sizes = {line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in sizes_text.splitlines() if line}
        sums = {line.split("  ", 1)[1].removeprefix("./"): line.split("  ", 1)[0] for line in sums_text.splitlines() if line}
        return {rel: Entry(size, sums.get(rel)) for rel, size in sizes.items()
                if Path(rel).name != SYNC_MANIFEST and not rel.endswith(PARTIAL_SUFFIX)}

    def download(self, rel: str, dest: Path, expected: Entry, progress: Progress) -> Entry:
        verifier = Verifier(f"{self.url}/{rel}", expected)
        process = subprocess.Popen([*self.base, f"cat -- {shlex.quote(self.root + '/' + rel)}"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None  # both are PIPEs, opened just above
        try:
            with atomic_destination(dest) as sink:
                while block := process.stdout.read(CHUNK):
                    sink.write(block)
                    verifier.update(block)
                    progress(len(block))
                if process.wait() != 0:
                    raise SyncError(f"{self.url}/{rel}: remote read failed: {process.stderr.read().decode(errors='replace')[-300:]}")
                return verifier.check()
        finally:
            if process.poll() is None:
                process.kill()
