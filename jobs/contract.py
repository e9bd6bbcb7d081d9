"""What jobs and launchers say to each other, as typed models (pydantic; no torch, so launchers can read them).

- ``CheckReport``: what a job's ``--check --check-report FILE`` reports of its inputs -- each one a member of the
  ``JobInput`` union, told apart by ``kind`` -- so a launcher can carry them to the compute (or regenerate, or mount).
- ``RunRecord``: a run directory's ``run.json``. Every job writes it through ``update_run``, which keeps the fields
  every job shares typed (``status`` one of ``STATUSES``) and lets each job add its own.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from data_shards.files import atomic_write_text

STATUSES = ("running", "complete", "incomplete", "failed", "stopped_early")
RANK_FILE = re.compile(r"-rank(\d+)\.")  # logs/train-rank1.log, logs/audit-rank1.jsonl: files one rank writes for itself


def rank_owner(path: str) -> int:
    """The rank that writes a file of the run directory: k for its own ``*-rank<k>.*`` files, else 0 (rank 0 owns the
    run directory). On machines that share no disk, each node holds its own ranks' files."""
    found = RANK_FILE.search(Path(path).name)
    return int(found.group(1)) if found else 0


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")

    location: str  # as the user gave it: a path, a URL
    regenerable: bool = False  # the compute makes it itself (synthetic://): nothing travels


class ShardsInput(_Input):
    """A shard set: found again by its manifest's sha256."""

    kind: Literal["shards"] = "shards"
    root: str
    manifest_sha256: str


class KernelShards(BaseModel):
    kernel: str  # OWNER/KERNEL
    url: str
    path: str  # the shard set's folder in the kernel's outputs
    manifest_sha256: str


class KaggleOutputsInput(_Input):
    """Shard sets that stay in Kaggle kernels' outputs (slices of one extraction): mounted, never moved."""

    kind: Literal["kaggle_outputs"] = "kaggle_outputs"
    sources: list[KernelShards]


class VideoFile(BaseModel):
    id: str
    path: str  # its flat name where it travels
    split: str
    source: str  # where it is here


class VideosInput(_Input):
    """A video collection (extraction's input): found again by the digest of its listing and every file's bytes."""

    kind: Literal["videos"] = "videos"
    listing: list[VideoFile]
    also_set: dict[str, Any] = Field(default_factory=dict)  # config keys the compute sets once the videos are there


class FileInput(_Input):
    """One file (an encoder's weights, a student checkpoint for ``index``): found again by its sha256."""

    kind: Literal["file"] = "file"
    path: str
    sha256: str
    reads_urls: bool = False  # the job also reads this key from s3:// (a launcher may put the file on storage the compute reads)


class FolderInput(_Input):
    """A few files of a folder here (MSR-VTT's split files for videos that live elsewhere): found again by the digest of
    their names and sha256s."""

    kind: Literal["folder"] = "folder"
    path: str
    files: dict[str, str]  # name -> sha256
    reads_urls: bool = False  # as FileInput's

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()


class LocatedFileInput(_Input):
    """A file read where it lives -- ``location`` is ``https://``, ``s3://`` or ``kaggle://datasets|models/...`` -- or,
    with ``library``, what an encoder's library downloads itself (``location`` then says what): nothing travels from
    here. Kaggle mounts ``kaggle://`` ones on its kernels; the others need the internet where the job runs."""

    kind: Literal["located_file"] = "located_file"
    regenerable: bool = True
    needs_internet: bool
    library: bool = False
    folder: bool = False  # a folder of files (``--msrvtt-splits``), not one file


class LocatedVideosInput(_Input):
    """A video collection read where it lives -- ``location`` is ``s3://BUCKET/PREFIX``,
    ``kaggle://datasets/OWNER/SLUG[/FOLDER]`` or ``ssh://HOST/ABS/FOLDER`` (a folder, or a CSV/JSON list in it) -- listed
    here for the plan (``videos``, ``bytes``); no video byte travels from here. Kaggle mounts ``kaggle://`` ones on its
    kernels; ``launch ssh`` on HOST reads an ``ssh://HOST`` one in place."""

    kind: Literal["located_videos"] = "located_videos"
    regenerable: bool = True
    videos: int
    bytes: int | None = None


JobInput = Annotated[ShardsInput | KaggleOutputsInput | VideosInput | FileInput | FolderInput | LocatedFileInput | LocatedVideosInput,
                     Field(discriminator="kind")]


class ShardWork(BaseModel):
    items: int
    bytes: int | None = None  # what its items weigh where they are, when that is known


class WorkEstimate(BaseModel):
    """A sliceable job's work, for a launcher's plan: the plan's shards in order (slice i of n takes shards i, i + n,
    ...) and what one item costs, in FLOPs counted on shapes (torch's flop counter over meta tensors: no weights, no
    compute), of ``models``."""

    item: str  # what an item is: "video"
    shards: list[ShardWork]
    flops_per_item: int
    models: str

    def slice(self, index: int, count: int) -> tuple[int, int | None]:
        """(items, bytes) of slice ``index`` of ``count``; bytes None where any shard's are unknown."""
        mine = self.shards[index::count]
        sizes = [shard.bytes for shard in mine]
        return sum(shard.items for shard in mine), None if any(b is None for b in sizes) else sum(b or 0 for b in sizes)


class CheckReport(BaseModel):
    """A job's inputs (config key -> input), what it would write outside its run directory (option -> path): a
    remote backend brings back only the run directory, so it refuses those; for a sliceable job, its work; and what
    the compute must install for this config (a remote environment is made from the job's extras and these)."""

    job: str
    inputs: dict[str, JobInput] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    work: WorkEstimate | None = None
    extras: list[str] = Field(default_factory=list)  # optional dependency groups this run's config needs beyond its job's own

    def write(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> CheckReport:
        return cls.model_validate_json(Path(path).read_text())


class InitFrom(BaseModel):
    """Where a fine-tuned run's starting weights came from (``train.init_from``): the exact bytes by their sha256."""

    model_config = ConfigDict(extra="forbid")

    location: str  # train.init_from as given
    path: str  # the checkpoint file it named, resolved
    run_id: str | None = None  # the source run's id, when the file sits in a run directory
    sha256: str


class RunRecord(BaseModel):
    """``run.json``: the fields every job writes, typed; each job adds its own (a sweep its winner, an index its counts)."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    job: str
    status: Literal[STATUSES] | None = None  # type: ignore[valid-type]
    started_at: str | None = None
    ended_at: str | None = None
    backend: str | None = None
    error: str | None = None
    init_from: InitFrom | None = None  # a fine-tuned run's source (training jobs with train.init_from)


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no run.json)")
    return json.loads(path.read_text())


def update_run(run_dir: Path, **fields: Any) -> dict:
    """Merge ``fields`` into ``run.json`` (written atomically), checked against ``RunRecord`` first."""
    path = Path(run_dir) / "run.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(fields)
    info.setdefault("run_id", Path(run_dir).name)
    RunRecord.model_validate(info)
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
