"""The code bundle that remote backends carry: the project's git-tracked files as they are in the
working tree, with a size guard and a secret guard, named by a content hash (so an unchanged bundle
is never uploaded twice).

Secret guard: files named like credentials (kaggle.json, .env, id_rsa, *.pem, ...) are refused, and
so is any file containing the value of a credential variable set in this environment.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_MB = 50
SECRET_NAMES = ("kaggle.json", "access_token", ".env", ".env.*", ".netrc", "credentials", "id_rsa*", "id_ed25519*", "id_ecdsa*", "*.pem", "*.key")
SECRET_VARIABLES = ("KAGGLE_KEY", "KAGGLE_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "WANDB_API_KEY",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
MANIFEST = "BUNDLE.json"


class BundleError(RuntimeError):
    """The bundle cannot be made as asked; the message says which file and what to do."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    files: dict[str, str]  # relative path -> sha256
    size: int
    commit: str | None
    dirty: bool

    @property
    def digest(self) -> str:
        """Content hash over paths and file digests: equal bundles have equal digests."""
        return hashlib.sha256(json.dumps(sorted(self.files.items())).encode()).hexdigest()

    def write(self, dest: Path) -> Path:
        """Copy the files to ``dest`` (fresh) with BUNDLE.json describing them."""
        if dest.exists():
            shutil.rmtree(dest)
        for rel in self.files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.root / rel, target)
        (dest / MANIFEST).write_text(json.dumps({"digest": self.digest, "commit": self.commit, "dirty": self.dirty,
                                                 "files": len(self.files), "bytes": self.size}, indent=2) + "\n")
        return dest


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True, timeout=30).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BundleError(f"{root}: not a git checkout ({exc}); the bundle is the project's git-tracked files") from None


def _secret_values() -> dict[str, bytes]:
    return {name: os.environ[name].encode() for name in SECRET_VARIABLES if len(os.environ.get(name, "")) >= 8}


def collect(root: str | Path, max_mb: float = DEFAULT_MAX_MB) -> Bundle:
    root = Path(root).resolve()
    tracked = [p for p in _git(root, "ls-files", "-z").split("\0") if p and (root / p).is_file()]
    for rel in tracked:
        if any(fnmatch.fnmatch(Path(rel).name, pattern) for pattern in SECRET_NAMES):
            raise BundleError(f"{rel}: looks like a credential file and is tracked by git; untrack it (git rm --cached {rel}) "
                              "and pass credentials through the environment instead")
    secrets = _secret_values()
    files, sizes = {}, {}
    for rel in tracked:
        data = (root / rel).read_bytes()
        for name, value in secrets.items():
            if value in data:
                raise BundleError(f"{rel}: contains the value of ${name}; remove it from the file before anything is uploaded")
        files[rel], sizes[rel] = hashlib.sha256(data).hexdigest(), len(data)
    total = sum(sizes.values())
    if total > max_mb * 1e6:
        largest = ", ".join(f"{rel} ({sizes[rel] / 1e6:.1f} MB)" for rel in sorted(sizes, key=sizes.__getitem__, reverse=True)[:5])
        raise BundleError(f"the code bundle is {total / 1e6:.1f} MB, over the {max_mb:g} MB guard. Largest tracked files: {largest}. "
                          "Untrack data and checkpoints (they travel as datasets or through sync) or raise --max-bundle-mb")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
    commit = head.stdout.strip() if head.returncode == 0 else None  # None: no commit yet
    return Bundle(root, dict(sorted(files.items())), total, commit, bool(status.strip()))


def add_arguments(parser) -> None:
    parser.add_argument("--out", help="also write the bundle to this directory (replaced)")
    parser.add_argument("--max-bundle-mb", type=float, default=DEFAULT_MAX_MB, help=f"size guard (default {DEFAULT_MAX_MB} MB)")


def run(args) -> int:
    """``launch bundle``: show what a remote backend would carry, without uploading anything."""
    bundle = collect(Path(__file__).resolve().parent.parent, args.max_bundle_mb)
    print(f"code bundle {bundle.digest[:16]}: {len(bundle.files)} files, {bundle.size / 1e6:.2f} MB, "
          f"commit {bundle.commit or '(none)'}{' + uncommitted changes' if bundle.dirty else ''}")
    if args.out:
        print(f"written to {bundle.write(Path(args.out))}")
    return 0
