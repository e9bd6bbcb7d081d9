"""What a remote launcher carries besides code: the job's inputs, as its own ``--check`` reports them
(a shard set named by its manifest digest, or a video collection named by its listing and bytes),
staged as a flat folder of links that an uploader or ``rsync -L`` copies as it is."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import hash_file
from jobs import JobSpec
from launch.local import LaunchError

VIDEO_LISTING = "videos.json"  # marks a carried video collection (jobs.extract's input)


def job_inputs(spec: JobSpec, job_args: list[str]) -> dict:
    """The job's own --check, run here: config, shard digests and dims are verified before any upload."""
    if not spec.checkable:
        return {}
    with tempfile.TemporaryDirectory(prefix="streamapprox-check-") as tmp:
        report = Path(tmp) / "check.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        check = subprocess.run([sys.executable, "-m", spec.module, *job_args, "--check", "--check-report", str(report)], env=env)
        if check.returncode != 0:
            raise LaunchError(f"the job's check failed (exit {check.returncode}); nothing was uploaded")
        return json.loads(report.read_text())["inputs"]


def link_shards(spec: dict, folder: Path) -> None:
    """``folder`` gets links to the manifest and every shard it lists."""
    root = Path(spec["root"])
    manifest = json.loads((root / "manifest.json").read_text())
    for name in ["manifest.json", *(s["name"] for s in manifest["shards"])]:
        (folder / name).symlink_to((root / name).resolve())


def videos_digest(spec: dict) -> str:
    """The listing (ids, flat file names, splits) and every file's bytes."""
    content = hashlib.sha256(json.dumps(listing(spec), sort_keys=True).encode())
    for entry in spec["listing"]:
        content.update(hash_file(entry["source"], "sha256")[1][0].encode())
    return content.hexdigest()


def listing(spec: dict) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "source"} for entry in spec["listing"]]


def link_file(spec: dict, folder: Path) -> None:
    """``folder`` gets a link to one input file (a student checkpoint) under its own name."""
    (folder / Path(spec["path"]).name).symlink_to(Path(spec["path"]).resolve())


@dataclass(frozen=True)
class Staged:
    """How a carried input travels: a folder ``name`` derived from its content, ``link`` fills such a folder,
    ``target`` is the path inside it the job is pointed at ('' for the folder itself), ``locator`` is how a
    kernel recognises it among its mounted datasets."""

    name: str
    link: Callable[[Path], None]
    target: str
    locator: dict


def staged_form(spec: dict) -> Staged:
    kind = spec.get("kind", "shards")
    if kind == "videos":
        digest = videos_digest(spec)
        return Staged(f"videos-{digest[:16]}", lambda folder: link_videos(spec, folder, digest), VIDEO_LISTING,
                      {"kind": "videos", "digest": digest, "also_set": spec.get("also_set", {})})
    if kind == "file":
        name = Path(spec["path"]).name
        return Staged(f"file-{spec['sha256'][:16]}", lambda folder: link_file(spec, folder), name,
                      {"kind": "file", "sha256": spec["sha256"], "name": name})
    return Staged(f"shards-{spec['manifest_sha256'][:16]}", lambda folder: link_shards(spec, folder), "",
                  {"manifest_sha256": spec["manifest_sha256"]})


def link_videos(spec: dict, folder: Path, digest: str) -> None:
    """``folder`` gets a link per video under its flat name, and ``videos.json`` (with ``digest``) to find it by."""
    for entry in spec["listing"]:
        (folder / entry["path"]).symlink_to(Path(entry["source"]).resolve())
    (folder / VIDEO_LISTING).write_text(json.dumps({"digest": digest, "videos": listing(spec)}, indent=1) + "\n")
