"""Packs: how files travel through a store that unpacks archives and caps its file count -- a Kaggle
dataset, which unpacks every uploaded archive into a folder and holds at most 50 top-level files.

A pack is one file::

    STREAMAPPROX-PACK 1 <index bytes>\\n
    <index: JSON {"id", "part", "parts", "files": [{"name", "size", "sha256"}, ...]}>
    <the files' bytes, back to back, in index order>
    <a guard of 64 KiB of newlines>

No unpacker takes it for an archive: it begins with text, and the guard keeps the end of an archive
inside it (a checkpoint is a zip) out of reach of a zip reader, which looks for its directory in the
last 64 KiB. So Kaggle leaves it as it is, and any number of files travels as a few packs. Every file
is verified by size and sha256 when it comes out.

Standard library only: the kernel's entry script carries a copy of this module to unpack the code.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MAGIC = b"STREAMAPPROX-PACK 1 "
GUARD = b"\n" * (64 * 1024 + 64)
SUFFIX = ".pack"
BLOCK = 1 << 20


class PackError(RuntimeError):
    """A pack is missing, incomplete or does not hold what its index says; the message names it."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def plan(files: list[tuple[str, Path]], max_packs: int, target_bytes: int) -> dict[str, list[tuple[str, Path]]]:
    """Files (name, path) cut, in order, into at most ``max_packs`` packs of about ``target_bytes``: pack name -> members."""
    total = sum(path.stat().st_size for _, path in files)
    count = max(1, min(max_packs, len(files), -(-total // target_bytes)))
    packs: list[list[tuple[str, Path]]] = [[]]
    share, size = total / count, 0
    for name, path in files:
        if packs[-1] and size >= share * len(packs) and len(packs) < count:
            packs.append([])
        packs[-1].append((name, path))
        size += path.stat().st_size
    return {f"pack-{i:03d}-of-{len(packs):03d}{SUFFIX}": members for i, members in enumerate(packs)}


def index_of(pack_id: str, part: int, parts: int, members: list[tuple[str, Path]], digests: dict[str, str] | None) -> dict:
    """A pack's index; ``digests=None`` gives the index's shape with placeholder digests (its size is the same)."""
    return {"id": pack_id, "part": part, "parts": parts,
            "files": [{"name": name, "size": path.stat().st_size,
                       "sha256": "0" * 64 if digests is None else digests.get(name) or sha256_of(path)} for name, path in members]}


def sizes(pack_id: str, packs: dict[str, list[tuple[str, Path]]]) -> dict[str, int]:
    """The size each planned pack will have, without hashing anything: what a complete upload lists."""
    return {name: packed_size(index_of(pack_id, i, len(packs), members, None)) for i, (name, members) in enumerate(packs.items())}


def write_all(folder: Path, pack_id: str, packs: dict[str, list[tuple[str, Path]]], digests: dict[str, str]) -> None:
    for i, (name, members) in enumerate(packs.items()):
        write(folder / name, index_of(pack_id, i, len(packs), members, digests), members)


def _index(handle) -> dict | None:
    """The index at the start of an open pack, leaving the handle at the first file's bytes (None: not a pack)."""
    head = handle.readline(200)
    if not head.startswith(MAGIC):
        return None
    try:
        return json.loads(handle.read(int(head[len(MAGIC):])))
    except ValueError:
        return None


def read_index(path: Path) -> dict | None:
    """The index of a pack (None: not a pack, or one cut short inside its index)."""
    try:
        with open(path, "rb") as handle:
            return _index(handle)
    except OSError:
        return None


def write(dest: Path, index: dict, members: list[tuple[str, Path]]) -> Path:
    """Write one pack atomically; the bytes are hashed as they are copied and must match the index.
    A pack already there with the same index is kept untouched (an interrupted upload of it can resume)."""
    if dest.is_file() and read_index(dest) == index and dest.stat().st_size == packed_size(index):
        return dest
    text = json.dumps(index, sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC + str(len(text)).encode() + b"\n" + text)
            for entry, (_, path) in zip(index["files"], members):
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    while block := handle.read(BLOCK):
                        out.write(block)
                        digest.update(block)
                if digest.hexdigest() != entry["sha256"]:
                    raise PackError(f"{path}: changed while it was being packed (sha256 differs from the one checked); run again")
            out.write(GUARD)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def packed_size(index: dict) -> int:
    text = json.dumps(index, sort_keys=True).encode()
    return len(MAGIC) + len(str(len(text))) + 1 + len(text) + sum(f["size"] for f in index["files"]) + len(GUARD)


def find(root: Path, pack_id: str) -> list[Path]:
    """Every part of the packs with ``pack_id`` under ``root`` (wherever they are mounted), in order."""
    parts: dict[int, Path] = {}
    expected = None
    for path in sorted(root.rglob(f"*{SUFFIX}")):
        index = read_index(path) if path.is_file() else None
        if index and index.get("id") == pack_id:
            parts[index["part"]] = path
            expected = index["parts"]
    if expected is None:
        raise PackError(f"no pack with id {pack_id[:16]} under {root}")
    missing = [str(i) for i in range(expected) if i not in parts]
    if missing:
        raise PackError(f"packs {pack_id[:16]}: part(s) {', '.join(missing)} of {expected} are not under {root}")
    return [parts[i] for i in range(expected)]


def unpack(packs: list[Path], dest: Path) -> list[str]:
    """The files of ``packs`` into ``dest`` (created fresh), each verified; returns their names."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    names = []
    try:
        for pack in packs:
            with open(pack, "rb") as handle:
                index = _index(handle)
                if index is None:
                    raise PackError(f"{pack}: not a readable pack (cut short, or another file)")
                for entry in index["files"]:
                    target = staging / entry["name"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    digest, left = hashlib.sha256(), entry["size"]
                    with open(target, "wb") as out:
                        while left:
                            block = handle.read(min(BLOCK, left))
                            if not block:
                                raise PackError(f"{pack}: ends inside {entry['name']} (truncated pack)")
                            out.write(block)
                            digest.update(block)
                            left -= len(block)
                    if digest.hexdigest() != entry["sha256"]:
                        raise PackError(f"{pack}: {entry['name']} does not match its sha256 (corrupted pack)")
                    names.append(entry["name"])
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return names
