"""``data_shards import``: features a user already holds -> a verified shard set.

Inputs are ``.pt`` (``torch.save`` of a dict, e.g. the original project's ``train_features_v2.pt``), ``.npz``,
``.safetensors`` or a folder of ``.npy`` files (one field per file, named by its stem). A ``--map`` names the fields, since
every project names them its own way. Every promise a shard set makes (one row per video, shared dims, finite values,
unique ids, a unit-norm teacher, an explicit ``has_audio``) is checked before a byte is written, each failure as one line
naming the file, the field and what to do; the set is then written by ``ShardSetWriter`` (staged, renamed into place) with
the inputs' sha256 in the manifest's ``source``.
"""
from __future__ import annotations

import json
import pickle
import re
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from data_shards.errors import ShardError
from data_shards.files import disk_problem, hash_file
from data_shards.manifest import Manifest
from data_shards.schema import TEACHER_NORM_TOLERANCE, Dims
from data_shards.writer import ShardSetWriter

ROLES = {
    "clip": "CLIP frame embeddings [N, F, Dc] (or [N, Dc]: one frame)",
    "audio": "VGGish embeddings [N, Da] (or [N, S, Da]: per 0.96 s example)",
    "teacher": "teacher embeddings [N, Dt]",
    "ids": "video ids [N], strings or integers",
    "has_audio": "optional: audio mask [N], booleans or 0/1 (else all-zero audio rows are silent)",
    "split": "optional: split name of each row [N] (instead of --split)",
}
REQUIRED = ("clip", "audio", "teacher", "ids")
RANKS = {"clip": (2, 3), "audio": (2, 3), "teacher": (2,), "ids": (1,), "has_audio": (1,), "split": (1,)}
SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")  # a split names its shard files: <split>-000000.tar
VAL_SPLIT = "val"
WRITERS = {".pt": "torch.save of a dict", ".pth": "torch.save of a dict", ".npz": "numpy.savez", ".safetensors": "safetensors' save_file"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours parts of its load errors


@dataclass
class Rows:
    """One input's checked arrays, one row per video."""

    path: Path
    clip: np.ndarray  # float32 [N, F, Dc]
    audio: np.ndarray  # float32 [N, Da] or [N, S, Da]
    teacher: np.ndarray  # float32 [N, Dt], unit norm
    ids: list[str]
    has_audio: np.ndarray  # bool [N]
    split: np.ndarray  # str [N]


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``["clip=clip_features", ...]`` -> {role: field}; every required role must be named."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        role, sep, name = pair.partition("=")
        if not sep or not name:
            raise ShardError(f"--map: {pair!r} is not ROLE=FIELD (e.g. clip=clip_features)")
        if role not in ROLES:
            raise ShardError(f"--map: unknown role {role!r}; the roles are {', '.join(ROLES)}")
        mapping[role] = name
    missing = [role for role in REQUIRED if role not in mapping]
    if missing:
        raise ShardError(f"--map: no field named for {', '.join(missing)}; add {' '.join(f'{r}=FIELD' for r in missing)} "
                         f"({'; '.join(ROLES[r] for r in missing)})")
    return mapping


def read_fields(path: Path) -> Mapping[str, Any]:
    """The named arrays of one input, without unpickling code (``weights_only``, ``allow_pickle=False``)."""
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise ShardError(f"{path}: a folder input holds one .npy per field, and this one has none")
        try:
            return {file.stem: np.load(file, mmap_mode="r", allow_pickle=False) for file in files}
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read its .npy files ({exc}); save them with numpy.save, without objects") from None
    if not path.is_file():
        raise ShardError(f"{path}: no such file; pass the .pt, .npz or .safetensors file (or folder of .npy) that holds the features")
    suffix = path.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict):
                raise ShardError(f"{path}: holds a {type(data).__name__}, not a dict of fields; torch.save a dict such as "
                                 "{'clip_features': ..., 'video_ids': [...]}")
            return data
        if suffix == ".npz":
            return np.load(path, allow_pickle=False)
        if suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return {**{key: _json_or_text(value) for key, value in metadata.items()}, **load_file(str(path))}
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError) as exc:
        text = ANSI.sub("", str(exc))
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if unsafe:
            raise ShardError(f"{path}: holds a {unsafe.group(1)} object, which torch.load(weights_only=True) does not unpickle; save "
                             "tensors, lists, dicts, strings and numbers only (torch.from_numpy for numpy arrays) or use an .npz") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
        problem = detail.group(1) if detail else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise ShardError(f"{path}: cannot read it as {suffix} ({problem}); write it again with {WRITERS[suffix]}") from None
    if suffix == ".npy":
        raise ShardError(f"{path}: a .npy holds one array; put the split's .npy files (one per field) in a folder and pass the folder")
    raise ShardError(f"{path}: unknown input type {suffix!r}; use .pt, .npz, .safetensors or a folder of .npy files")


def _json_or_text(value: str) -> Any:
    """safetensors metadata holds strings only: ids stored there are a JSON list."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _field(fields: Mapping[str, Any], path: Path, role: str, name: str) -> Any:
    """``name`` in ``fields``, or a dotted path into nested dicts (``features.clip``)."""
    if name in fields:
        try:
            return fields[name]  # an .npz member is read here
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ShardError(f"{path}: field {name!r} ({role}) cannot be read ({str(exc).strip().splitlines()[0]}); save it as numbers, "
                             "or ids as strings (np.array(ids, dtype=str)), not Python objects") from None
    value: Any = fields
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            held = sorted(fields)
            raise ShardError(f"{path}: no field {name!r} (--map {role}={name}); it holds {', '.join(held[:20])}"
                             f"{' ...' if len(held) > 20 else ''}; name one of them in --map")
        value = value[part]
    return value


def _array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, torch.Tensor) for item in value):
        try:
            value = torch.stack(list(value))
        except RuntimeError:
            raise ShardError(f"{where}: a list of tensors of different shapes; every video needs the same shape") from None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return np.asarray(value)
        except ValueError:
            raise ShardError(f"{where}: ragged (rows of different lengths); every video needs the same shape") from None
    raise ShardError(f"{where}: is a {type(value).__name__}, not an array")


def _floats(array: np.ndarray, where: str, ids: list[str], stored: type[np.floating]) -> np.ndarray:
    """float32 of a numeric array: finite and within the range of the dtype the shards store it in."""
    if array.dtype.kind not in "fiu":
        raise ShardError(f"{where}: dtype {array.dtype} cannot be cast to float; store it as float16, float32 or float64")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ShardError(f"{where}: {int(bad.sum())} rows hold NaN or inf, the first row {row} (video {ids[row]!r}); "
                             "fix or drop those videos")
    peak, limit = float(np.abs(array).max()) if array.size else 0.0, float(np.finfo(stored).max)
    if peak > limit:
        raise ShardError(f"{where}: values up to {peak:.4g} overflow the {np.dtype(stored)} the shards store it in (max {limit:.4g}); "
                         "rescale them")
    return array.astype(np.float32, copy=False)


def _ids(array: np.ndarray, where: str) -> list[str]:
    """Ids become the shards' sample keys: unique, and without the '.' and '/' that split a WebDataset key."""
    if array.dtype.kind in "iu":
        ids = [str(int(value)) for value in array]
    elif array.dtype.kind in "US" or (array.dtype.kind == "O" and all(isinstance(value, str) for value in array)):
        ids = [value.decode() if isinstance(value, bytes) else str(value) for value in array]
    else:
        raise ShardError(f"{where}: dtype {array.dtype} cannot be video ids; store strings or integers")
    first: dict[str, int] = {}
    for row, key in enumerate(ids):
        if not key or "." in key or "/" in key:
            raise ShardError(f"{where}: video id {key!r} (row {row}) is empty or holds '.' or '/', which a shard key cannot; "
                             "use the bare id (e.g. without the file extension)")
        if key in first:
            raise ShardError(f"{where}: video id {key!r} is in rows {first[key]} and {row}; ids must be unique, drop the duplicate")
        first[key] = row
    return ids


def _mask(array: np.ndarray, where: str) -> np.ndarray:
    """A has_audio mask; anything but booleans or 0/1 is more likely a wrong field than a mask."""
    if array.dtype.kind == "b":
        return array.astype(bool)
    if array.dtype.kind in "iuf" and np.isin(array, (0, 1)).all():
        return array != 0
    raise ShardError(f"{where}: has_audio must be booleans or 0/1, got dtype {array.dtype} with values such as "
                     f"{np.unique(array)[:3].tolist()}")


def _split_names(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype.kind not in "USO" or not all(isinstance(value, (str, bytes)) for value in array.tolist()):
        raise ShardError(f"{where}: dtype {array.dtype} is not split names; store strings such as 'train' and 'test'")
    return np.array([value.decode() if isinstance(value, bytes) else value for value in array.tolist()], dtype=object)


def load_input(path: Path, mapping: dict[str, str], split: str | None, normalize_teacher: bool,
               warn: Callable[[str], None]) -> Rows:
    """Read one input and check it whole: mapped fields present, ranks, one row per video, dtypes, values, ids."""
    fields = read_fields(path)
    where = {role: f"{path}: field {name!r} ({role})" for role, name in mapping.items()}
    raw = {role: _array(_field(fields, path, role, name), where[role]) for role, name in mapping.items()}
    for role, array in raw.items():
        if array.ndim not in RANKS[role]:
            raise ShardError(f"{where[role]}: shape {list(array.shape)}, expected {ROLES[role]}; map the right field or reshape it")
    counts = {role: len(array) for role, array in raw.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{role}={mapping[role]} {count}" for role, count in counts.items())
        raise ShardError(f"{path}: row counts disagree ({listed}); every field needs one row per video, in the same order")
    if not counts["ids"]:
        raise ShardError(f"{path}: no rows; every field is empty")
    ids = _ids(raw["ids"], where["ids"])
    clip = _floats(raw["clip"], where["clip"], ids, np.float16)  # the schema's dtypes (schema.py)
    audio = _floats(raw["audio"], where["audio"], ids, np.float16)
    teacher = _floats(raw["teacher"], where["teacher"], ids, np.float32)
    if clip.ndim == 2:
        clip = clip[:, None, :]
    norms = np.linalg.norm(teacher.astype(np.float64), axis=1)
    off = np.abs(norms - 1) > TEACHER_NORM_TOLERANCE
    if off.any() and not normalize_teacher:
        row = int(np.flatnonzero(off)[0])
        raise ShardError(f"{where['teacher']}: {int(off.sum())} of {len(ids)} rows are not unit-norm (row {row}, video {ids[row]!r}: "
                         f"norm {norms[row]:.4g}); the teacher target must be L2-normalized: pass --normalize-teacher to do it here")
    if normalize_teacher:
        if (norms == 0).any():
            row = int(np.flatnonzero(norms == 0)[0])
            raise ShardError(f"{where['teacher']}: row {row} (video {ids[row]!r}) is all zeros and cannot be normalized; drop it")
        teacher = (teacher / norms[:, None]).astype(np.float32)
        warn(f"note: {path}: --normalize-teacher: {int(off.sum())} of {len(ids)} teacher rows were not unit-norm "
             f"(norms {norms.min():.4g} to {norms.max():.4g}); all are L2-normalized now")
    if "has_audio" in raw:
        has_audio = _mask(raw["has_audio"], where["has_audio"])
    else:
        has_audio = (audio.reshape(len(audio), -1) != 0).any(axis=1)
        silent = int((~has_audio).sum())
        warn(f"warning: {path}: no has_audio=FIELD in --map: {silent} of {len(ids)} videos have all-zero audio and are marked "
             "silent (has_audio: false)")
    names = _split_names(raw["split"], where["split"]) if "split" in raw else np.full(len(ids), split, dtype=object)
    for name in sorted(set(names.tolist())):
        if not SPLIT_NAME.fullmatch(name):
            raise ShardError(f"{path}: split name {name!r} names shard files, so it may hold letters, digits and _ only")
    return Rows(path, clip, audio, teacher, ids, has_audio, names)


def _check_together(parts: list[Rows]) -> Dims:
    """Inputs of one set share dims and never share a video id."""
    first = parts[0]
    for part in parts[1:]:
        for role in ("clip", "audio", "teacher"):
            mine, theirs = getattr(part, role).shape[1:], getattr(first, role).shape[1:]
            if mine != theirs:
                raise ShardError(f"{part.path}: {role} is {list(mine)} per video but {first.path} has {list(theirs)}; "
                                 "every input of one shard set needs the same dims")
    owner: dict[str, tuple[Path, int]] = {}
    for part in parts:
        for row, key in enumerate(part.ids):
            if key in owner:
                raise ShardError(f"{part.path}: video id {key!r} (row {row}) is also in {owner[key][0]} (row {owner[key][1]}); "
                                 "a video belongs to one split: drop one of them")
            owner[key] = (part.path, row)
    examples = first.audio.shape[1] if first.audio.ndim == 3 else None
    return Dims(frames=first.clip.shape[1], clip=first.clip.shape[2], audio=first.audio.shape[-1], teacher=first.teacher.shape[1],
                audio_examples=examples)


def carve_validation(parts: list[Rows], val_from: str, count: int, seed: int) -> None:
    """Move ``count`` rows of split ``val_from`` (a seeded, deterministic choice) to the val split."""
    if any((part.split == VAL_SPLIT).any() for part in parts):
        raise ShardError(f"--val-from {val_from}: the inputs already have a {VAL_SPLIT!r} split; drop --val-from or that split")
    where = [(index, row) for index, part in enumerate(parts) for row in np.flatnonzero(part.split == val_from)]
    if not where:
        held = sorted({name for part in parts for name in part.split.tolist()})
        raise ShardError(f"--val-from {val_from}: no input holds that split (they hold {', '.join(held)}); name one of them")
    if not 0 < count < len(where):
        raise ShardError(f"--val-count {count}: split {val_from!r} has {len(where)} videos; carve between 1 and {len(where) - 1}")
    for position in np.random.default_rng(seed).permutation(len(where))[:count]:
        index, row = where[position]
        parts[index].split[row] = VAL_SPLIT


def source_entry(path: Path) -> dict:
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    entry: dict[str, Any] = {"path": str(path), "files": []}
    for file in files:
        size, (digest,) = hash_file(file, "sha256")
        entry["files"].append({"name": file.name, "bytes": size, "sha256": digest})
    return entry


def import_arrays(inputs: list[Path], mapping: dict[str, str], out: Path, *, splits: list[str] | None = None,
                  normalize_teacher: bool = False, val_from: str | None = None, val_count: int | None = None, seed: int = 0,
                  samples_per_shard: int = 1000, warn: Callable[[str], None] | None = None, progress: bool = False) -> Manifest:
    """Check every input, then write them as one shard set at ``out``; ``splits`` names each input's split unless
    ``mapping`` has a ``split`` field."""
    say = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    if ("split" in mapping) == bool(splits):
        raise ShardError("say which split each input holds: --split NAME per input (in order), or split=FIELD in --map -- one of them")
    if splits and len(splits) != len(inputs):
        raise ShardError(f"--split: {len(inputs)} inputs need {len(inputs)} split names, one per input in order; got {len(splits)}")
    if samples_per_shard < 1:
        raise ShardError(f"--samples-per-shard {samples_per_shard}: a shard holds at least 1 video")
    if (val_from is None) != (val_count is None):
        raise ShardError("--val-from SPLIT and --val-count N go together: carve N videos of SPLIT into the val split")
    parts = [load_input(path, mapping, splits[i] if splits else None, normalize_teacher, say) for i, path in enumerate(inputs)]
    dims = _check_together(parts)
    if val_from is not None and val_count is not None:
        carve_validation(parts, val_from, val_count, seed)
    options = {"splits": splits, "normalize_teacher": normalize_teacher, "val_from": val_from, "val_count": val_count, "seed": seed,
               "samples_per_shard": samples_per_shard}
    source = {"kind": "imported", "inputs": [source_entry(path) for path in inputs], "mapping": mapping, "options": options,
              "silent": int(sum((~part.has_audio).sum() for part in parts))}
    total = sum(len(part.ids) for part in parts)
    try:
        with ShardSetWriter(out, dims, source=source, samples_per_shard=samples_per_shard) as writer, tqdm(
            total=total, desc="import", unit="video", disable=not progress, mininterval=2.0
        ) as bar:
            for part in parts:
                for row, key in enumerate(part.ids):
                    meta = {"video_id": key, "split": part.split[row], "has_audio": bool(part.has_audio[row]), "duration_s": None,
                            "frame_times_s": None, "sampling": None, "imported": True}  # times and sampling are not known here
                    writer.write(part.split[row], key, part.clip[row], part.audio[row], part.teacher[row], meta)
                    bar.update(1)
    except OSError as exc:
        raise ShardError(disk_problem(exc, out)) from None
    return writer.manifest
