"""What a launcher carries besides code: the job's inputs, as its own ``--check`` reports them (``jobs.contract``:
a shard set named by its manifest digest, a video collection by its listing and bytes, a file by its sha256), as
the flat list of files that travel -- packed for Kaggle, linked for ``rsync -L``."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data_shards.files import atomic_write_text, cache_root, hash_file
from jobs import JobSpec
from jobs.contract import (CheckReport, FileInput, FolderInput, JobInput, KaggleOutputsInput, LocatedFileInput, LocatedVideosInput,
                           ShardsInput, VideosInput)
from launch.errors import LaunchError

VIDEO_LISTING = "videos.json"  # marks a carried video collection (jobs.extract's input)
# What of a run directory belongs to the machine it is on -- the launch record, the lock and heartbeat of the process
# that holds the run, a unit runner's own logs -- and never travels with the run. A pattern without "/" is a file name
# at any depth, one with "/" a path in the run directory (as rsync's --exclude reads them once anchored).
LEFT_BEHIND = ("launch.json", ".lock", "logs/heartbeat.json", "logs/unit-*")


def left_behind(rel: str) -> bool:
    """Whether the run directory's file ``rel`` (a posix path in it) stays on its machine."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel if "/" in pattern else name, pattern) for pattern in LEFT_BEHIND)


def rsync_excludes() -> list[str]:
    """``LEFT_BEHIND`` as rsync's arguments: the path patterns anchored at the run directory."""
    return [arg for pattern in LEFT_BEHIND for arg in ("--exclude", f"/{pattern}" if "/" in pattern else pattern)]


def job_check(spec: JobSpec, job_args: list[str]) -> CheckReport:
    """The job's own --check, run here: config, shard digests and dims are verified before anything is sent."""
    if not spec.checkable:
        return CheckReport(job="")
    with tempfile.TemporaryDirectory(prefix="streamapprox-check-") as tmp:
        report = Path(tmp) / "check.json"
        check = subprocess.run([sys.executable, "-m", spec.module, *job_args, "--check", "--check-report", str(report)],
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if check.returncode != 0:
            raise LaunchError(f"the job's check failed (exit {check.returncode}); nothing was sent", code=check.returncode, said=True)
        return CheckReport.read(report)


def _shard_files(spec: ShardsInput) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """The manifest and every shard it lists, with the shards' digests from the manifest (checked by --check)."""
    root = Path(spec.root)
    manifest = json.loads((root / "manifest.json").read_text())
    files = [("manifest.json", root / "manifest.json"), *((s["name"], root / s["name"]) for s in manifest["shards"])]
    return files, {"manifest.json": spec.manifest_sha256, **{s["name"]: s["sha256"] for s in manifest["shards"]}}


def listing(spec: VideosInput) -> list[dict]:
    return [entry.model_dump(exclude={"source"}) for entry in spec.listing]


def _video_files(spec: VideosInput) -> tuple[str, list[tuple[str, Path]], dict[str, str]]:
    """The listing digest (ids, flat names, splits and every file's bytes), each video under its flat name, and
    ``videos.json`` (holding that digest, to be found by) written beside the cache."""
    here = [entry for entry in spec.listing if entry.source]  # the others are URLs, read where the job runs
    digests = {entry.path: hash_file(entry.source, "sha256")[1][0] for entry in here}
    content = hashlib.sha256(json.dumps(listing(spec), sort_keys=True).encode())
    for entry in here:
        content.update(digests[entry.path].encode())
    digest = content.hexdigest()
    marker = cache_root() / "inputs" / f"videos-{digest[:16]}" / VIDEO_LISTING
    marker.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"digest": digest, "videos": listing(spec)}, indent=1) + "\n"
    if not marker.is_file() or marker.read_text() != text:  # left as it is, it is not sent again (rsync compares mtimes)
        atomic_write_text(marker, text)
    files = [*((entry.path, Path(entry.source)) for entry in here), (VIDEO_LISTING, marker)]
    return digest, files, digests


@dataclass(frozen=True)
class Staged:
    """How a carried input travels: the flat ``files`` (name -> local path) of a folder named ``name`` after
    their content (``pack_id`` is that content's full digest; ``digests`` the files' sha256 where known),
    ``target`` the path inside the folder the job is pointed at ('' for the folder itself), ``locator`` how
    the remote side recognises it, ``also_set`` config keys the compute sets once it is there."""

    name: str
    pack_id: str
    files: list[tuple[str, Path]]
    digests: dict[str, str]
    target: str
    locator: dict
    also_set: dict

    def link(self, folder: Path) -> None:
        """``folder`` becomes a link per file to where that file is now, for tools that copy through links (``rsync
        -L``). Made anew each time: a folder an earlier launch left may point at files moved or deleted since."""
        building = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
        replaced = building.with_suffix(".old")
        for leftover in (building, replaced):
            shutil.rmtree(leftover, ignore_errors=True)
        building.mkdir(parents=True)
        for name, path in self.files:
            (building / name).symlink_to(path.resolve())
        if folder.exists():
            folder.rename(replaced)
        building.rename(folder)
        shutil.rmtree(replaced, ignore_errors=True)

    def assignments(self, key: str, where: str) -> list[str]:
        """``--set`` values pointing the job at this input once its folder is at ``where`` on the compute."""
        return [f"{key}={where}{'/' + self.target if self.target else ''}", *(f"{k}={json.dumps(v)}" for k, v in self.also_set.items())]


def staged_form(spec: JobInput) -> Staged:
    if isinstance(spec, KaggleOutputsInput):
        raise LaunchError(f"{spec.location}: shards in Kaggle kernels' outputs are read where they are by launch kaggle only; "
                          f"for another backend bring them over first: launch sync {spec.sources[0].url} DIR")
    if isinstance(spec, (LocatedFileInput, LocatedVideosInput)):
        raise LaunchError(f"{spec.location}: read where it lives; nothing of it travels from here")
    if isinstance(spec, VideosInput):
        digest, files, digests = _video_files(spec)
        return Staged(f"videos-{digest[:16]}", digest, files, digests, VIDEO_LISTING, {"kind": "videos", "digest": digest},
                      spec.also_set)
    if isinstance(spec, FolderInput):
        return Staged(f"folder-{spec.digest[:16]}", spec.digest, [(name, Path(spec.path) / name) for name in sorted(spec.files)], spec.files,
                      "", {"kind": "folder", "digest": spec.digest}, {})
    if isinstance(spec, FileInput):
        name = Path(spec.path).name
        return Staged(f"file-{spec.sha256[:16]}", spec.sha256, [(name, Path(spec.path))], {name: spec.sha256}, name,
                      {"kind": "file", "sha256": spec.sha256, "name": name}, {})
    files, digests = _shard_files(spec)
    return Staged(f"shards-{spec.manifest_sha256[:16]}", spec.manifest_sha256, files, digests, "",
                  {"kind": "shards", "manifest_sha256": spec.manifest_sha256}, {})


def run_files(run_dir: Path) -> tuple[str, list[tuple[str, Path]], dict[str, str]]:
    """A run directory to continue elsewhere, as files that travel: its content digest, (relative path, file), sha256s.
    What belongs to this machine stays behind (``LEFT_BEHIND``)."""
    files, digests = [], {}
    for path in sorted(p for p in Path(run_dir).rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if left_behind(rel):
            continue
        files.append((rel, path))
        digests[rel] = hash_file(path, "sha256")[1][0]
    digest = hashlib.sha256(json.dumps(sorted(digests.items())).encode()).hexdigest()
    return digest, files, digests
