"""Kernel outputs that a later kernel mounts (a continuation, or training on an extraction's shards) may
arrive with their archives unpacked: Kaggle unpacks archives it is given, and whether it does so for a
kernel's outputs is not documented. A WebDataset shard is a tar; a checkpoint is a zip.

So a kernel records, beside its outputs, the *layout* of every archive it leaves whose members are stored
as they are (every tar; a zip of stored entries, which is what ``torch.save`` writes): the bytes around the
members (headers, padding, directories) and the members' names and sizes. A file found as such is checked
by size and sha256; a file found unpacked into a folder is rebuilt byte for byte from the folder and its
layout, then checked the same way. Anything else found unpacked is an error that names it.

Standard library only: this runs on the kernel before the job's dependencies are installed.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

from launch.carry import BLOCK, sha256_of

LAYOUTS = "streamapprox-layouts.json"  # at the root of a kernel's outputs: relative path -> layout
ZIP_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length


class RestoreError(RuntimeError):
    """A file of a mounted kernel output cannot be found, rebuilt or verified; the message names it."""


def _tar_members(path: Path) -> list[tuple[str, int, int]] | None:
    try:
        with tarfile.open(path, mode="r:") as archive:
            return [(m.name, m.offset_data, m.size) for m in archive if m.isreg()]
    except (tarfile.TarError, OSError):
        return None


def _zip_members(path: Path) -> list[tuple[str, int, int]] | None:
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
            members = []
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    return None  # compressed members cannot be rebuilt byte for byte from their contents
                handle.seek(info.header_offset)
                fields = ZIP_LOCAL_HEADER.unpack(handle.read(ZIP_LOCAL_HEADER.size))
                members.append((info.filename, info.header_offset + ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1], info.file_size))
            return members
    except (zipfile.BadZipFile, OSError, struct.error):
        return None


def layout(path: Path) -> dict | None:
    """What it takes to rebuild ``path`` from its unpacked folder, or None if it is no such archive."""
    kind, members = "tar", _tar_members(path)
    if members is None and zipfile.is_zipfile(path):
        kind, members = "zip", _zip_members(path)
    if not members:
        return None
    members.sort(key=lambda m: m[1])
    gaps, sizes, position = bytearray(), [], 0
    with open(path, "rb") as handle:
        for _, offset, size in [*members, ("", path.stat().st_size, 0)]:
            handle.seek(position)
            gap = handle.read(offset - position)
            gaps += gap
            sizes.append(len(gap))
            position = offset + size
    return {"kind": kind, "members": [[name, size] for name, _, size in members], "gap_sizes": sizes,
            "gaps": base64.b64encode(zlib.compress(bytes(gaps), 9)).decode()}


def record_layouts(root: Path, files: list[str]) -> dict:
    """The layouts of the archives among ``files`` (paths relative to ``root``)."""
    return {rel: found for rel in files if (found := layout(root / rel)) is not None}


def unpacked_names(name: str) -> list[str]:
    """Folder names an unpacked ``name`` may take: without its extension (``x.tar`` -> ``x``, ``a.tar.gz`` -> ``a``)."""
    names = [name.rsplit(".", 1)[0]] if "." in name else []
    if name.count(".") > 1:
        names.append(name.split(".", 1)[0])
    return [n for n in names if n]


def _copy_verified(sources, dest: Path, size: int, sha256: str, what: str) -> None:
    """Write the byte blocks of ``sources`` to ``dest`` atomically if they have ``size`` and ``sha256``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    digest, written = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for block in sources:
                out.write(block)
                digest.update(block)
                written += len(block)
        if written != size or digest.hexdigest() != sha256:
            raise RestoreError(f"{what}: {written} bytes that do not match the recorded size {size} and sha256; the kernel output is "
                               "incomplete or changed")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_blocks(path: Path):
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            yield block


def _rebuilt_blocks(folder: Path, recorded: dict, what: str):
    gaps = zlib.decompress(base64.b64decode(recorded["gaps"]))
    position = 0
    for member_index, gap in enumerate(recorded["gap_sizes"]):
        yield gaps[position:position + gap]
        position += gap
        if member_index == len(recorded["members"]):
            return
        name, size = recorded["members"][member_index]
        member = folder / (name[2:] if name.startswith("./") else name)
        if not member.is_file() or member.stat().st_size != size:
            raise RestoreError(f"{what}: unpacked into {folder}, but its member {name} is missing or not {size} bytes")
        yield from _file_blocks(member)


def restore(found: Path, dest: Path, size: int, sha256: str, recorded: dict | None, what: str, link: bool = False) -> Path:
    """``found`` (the path where a kernel output should be) as a verified file at ``dest``: the file itself
    (linked instead of copied when ``link``), or rebuilt from the folder it was unpacked into."""
    if found.is_file():
        if link:
            if found.stat().st_size != size or sha256_of(found) != sha256:
                raise RestoreError(f"{what}: {found} does not match its recorded size and sha256")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.unlink(missing_ok=True)
            dest.symlink_to(found.resolve())
        else:
            _copy_verified(_file_blocks(found), dest, size, sha256, what)
        return dest
    for name in unpacked_names(found.name):
        folder = found.with_name(name)
        if folder.is_dir():
            if recorded is None:
                raise RestoreError(f"{what}: Kaggle unpacked it into {folder} and it cannot be rebuilt (no layout recorded: "
                                   "not a tar or a zip of stored entries)")
            _copy_verified(_rebuilt_blocks(folder, recorded, what), dest, size, sha256, what)
            return dest
    raise RestoreError(f"{what}: neither {found} nor an unpacked folder of it is there")


def restore_tree(mounted: Path, rel_root: str, dest: Path, files: dict[str, dict], layouts: dict) -> None:
    """Every file of a mounted output folder (``files``: relative path -> {size, sha256}, its content manifest)
    into ``dest``, verified; ``layouts`` are keyed by paths relative to the output root, ``rel_root/...``."""
    if dest.exists():
        shutil.rmtree(dest)
    for rel, entry in sorted(files.items()):
        key = f"{rel_root}/{rel}" if rel_root else rel
        restore(mounted / rel, dest / rel, entry["size"], entry["sha256"], layouts.get(key), f"{key} (kernel output)")


def read_layouts(output_root: Path) -> dict:
    path = output_root / LAYOUTS
    return json.loads(path.read_text()) if path.is_file() else {}
