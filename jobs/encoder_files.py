"""The files an extraction's config names -- encoder weights and architectures -- wherever they live.

Each is a local path, ``https://...[#sha256=...]``, ``s3://...`` or ``kaggle://datasets|models/...`` (``sync.remote_file``).
``--check`` declares them to launchers as inputs (a local file travels once, named by its sha256; a remote one is read
where the job runs, or mounted by Kaggle), and a run fetches the remote ones into the cache before its encoders are
built. What identifies a file in the extraction's plan is its sha256, not where it happened to be: the same weights
mounted somewhere else (another kernel, a continuation) are the same extraction.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.contract import FileInput, JobInput, LocatedFileInput
from sync import SyncError
from sync.remote_file import FileLocation, LocalFile, local_file

if TYPE_CHECKING:
    from jobs.extract import EncodersConfig
    from model.encoders import ClipConfig

IMAGEBIND_HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"  # where the official code downloads it from
OFFICIAL_CHECKPOINT = Path(".checkpoints") / "imagebind_huge.pth"  # where the official code keeps it


def _set(data: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def clip_configs(cfg: EncodersConfig) -> dict[str, ClipConfig]:
    """Config prefix -> each CLIP the extraction builds: the student's, and a dense-CLIP teacher's own where it has one."""
    clips = {"student.clip": cfg.student.clip}
    if cfg.teacher.kind == "dense_clip" and cfg.teacher.clip is not None:
        clips["teacher.clip"] = cfg.teacher.clip
    return clips


def named_files(cfg: EncodersConfig, random_init: bool) -> dict[str, str]:
    """Config key -> the file it names (as given) for every file this extraction reads, defaults included: ImageBind's
    official checkpoint URL (or ``.checkpoints/imagebind_huge.pth`` where the official code would find it)."""
    named: dict[str, str] = {}
    clips = clip_configs(cfg)
    for prefix, clip in clips.items():
        if clip.architecture:
            named[f"{prefix}.architecture"] = clip.architecture
        if clip.weights and not random_init:
            named[f"{prefix}.weights"] = clip.weights
    if cfg.teacher.kind == "imagebind":
        if cfg.teacher.imagebind.architecture != "huge":
            named["teacher.imagebind.architecture"] = cfg.teacher.imagebind.architecture
        if not random_init:
            default = str(OFFICIAL_CHECKPOINT) if OFFICIAL_CHECKPOINT.is_file() else IMAGEBIND_HUGE_URL
            named["teacher.imagebind.weights"] = cfg.teacher.imagebind.weights or default
    vggish = cfg.student.audio.vggish
    if vggish.weights and not random_init:
        named["student.audio.vggish.weights"] = vggish.weights
    if vggish.pca_weights and vggish.postprocess and not random_init:
        named["student.audio.vggish.pca_weights"] = vggish.pca_weights
    return named


def library_downloads(cfg: EncodersConfig, random_init: bool) -> dict[str, str]:
    """Config key -> what the encoder's own library downloads when the key is not given (open_clip's pretrained tags,
    torchvggish's release files): the job needs the internet, or the library's cache, for these."""
    if random_init:
        return {}
    import torchvggish.torchvggish as vggish_release  # torchvggish's package imports resampy and numba: seconds, only here

    wanted = {}
    clips = clip_configs(cfg)
    for prefix, clip in clips.items():
        if not clip.weights:
            wanted[f"{prefix}.weights"] = f"open_clip's pretrained tag {clip.model}/{clip.pretrained}"
    vggish = cfg.student.audio.vggish
    if not vggish.weights:
        wanted["student.audio.vggish.weights"] = vggish_release.VGGISH_WEIGHTS
    if vggish.postprocess and not vggish.pca_weights:
        wanted["student.audio.vggish.pca_weights"] = vggish_release.PCA_PARAMS
    return wanted


def _local(key: str, text: str) -> LocalFile:
    try:
        return local_file(text)
    except SyncError as exc:
        raise SyncError(f"{key}: {exc}") from None


def declared_inputs(cfg: EncodersConfig, random_init: bool) -> dict[str, JobInput]:
    """What ``--check`` tells a launcher: a local file by its sha256 (it travels), a remote one by where it is."""
    inputs: dict[str, JobInput] = {}
    for key, text in named_files(cfg, random_init).items():
        try:
            location = FileLocation.parse(text)
        except SyncError as exc:
            raise SyncError(f"{key}: {exc}") from None
        if location.remote:
            inputs[key] = LocatedFileInput(location=text, needs_internet=location.needs_internet)
        else:
            here = _local(key, text)
            inputs[key] = FileInput(location=text, path=str(here.path), sha256=here.sha256, reads_urls=True)
    for key, what in library_downloads(cfg, random_init).items():
        inputs[key] = LocatedFileInput(location=what, needs_internet=True, library=True)
    return inputs


def fetched(cfg: EncodersConfig, random_init: bool) -> tuple[dict, dict[str, LocalFile]]:
    """The config (as a dict) with every file it names made local (remote ones fetched into the cache), and those files."""
    data = cfg.model_dump(mode="json")
    files = {key: _local(key, text) for key, text in named_files(cfg, random_init).items()}
    for key, file in files.items():
        _set(data, key, str(file.path))
    return data, files


def content_identity(config: dict, files: dict[str, LocalFile]) -> dict:
    """``config`` with each file it names replaced by the file's sha256: what the plan of an extraction compares."""
    identity = copy.deepcopy(config)
    for key, file in files.items():
        _set(identity, key, {"sha256": file.sha256})
    return identity


def portable_name(file: LocalFile) -> str:
    """How the manifest's encoders name a file: its URL, or -- for a local path, which differs from machine to machine
    (every kernel unpacks its inputs somewhere of its own) -- its sha256. ``source.files`` keeps the paths as given."""
    return file.location if FileLocation.parse(file.location).remote else f"sha256:{file.sha256}"


def provenance(files: dict[str, LocalFile]) -> dict[str, dict]:
    """For the manifest: each file's key, where it came from as given, and its sha256."""
    return {key: {"location": file.location, "sha256": file.sha256, "bytes": file.size} for key, file in files.items()}

