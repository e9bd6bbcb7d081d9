"""How files survive a store that unpacks archives: packs (``launch.carry``, what ``launch kaggle`` uploads) and
archive layouts (``launch.unpacked``, how a kernel's outputs are rebuilt when Kaggle unpacked them)."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from kaggle_server import archive_stem, unpack_into

from launch import carry
from launch.unpacked import RestoreError, layout, restore


def files_of(folder: Path, sizes: dict[str, int]) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(0)
    for name, size in sizes.items():
        (folder / name).write_bytes(rng.bytes(size))
    return [(name, folder / name) for name in sizes]


def test_packs_carry_any_number_of_files_in_few_files_that_no_unpacker_takes_for_an_archive(tmp_path):
    src, out = tmp_path / "src", tmp_path / "packs"
    src.mkdir(), out.mkdir()
    files = files_of(src, {f"train-{i:06d}.tar": 1000 + i for i in range(120)})
    torch.save({"w": torch.arange(10)}, src / "best.pt")  # a zip, last in the pack: its end must not show through
    files.append(("best.pt", src / "best.pt"))
    packs = carry.plan(files, max_packs=48, target_bytes=30_000)
    assert 1 < len(packs) <= 48 and sum(len(m) for m in packs.values()) == 121
    expected = carry.sizes("id-1", packs)
    carry.write_all(out, "id-1", packs, {})
    assert {p.name: p.stat().st_size for p in out.iterdir()} == expected  # sizes known before anything is hashed
    for pack in out.iterdir():
        assert not zipfile.is_zipfile(pack) and not tarfile.is_tarfile(pack) and archive_stem(pack.name, pack.read_bytes()) is None
    names = carry.unpack(carry.find(tmp_path, "id-1"), tmp_path / "back")
    assert names == [name for name, _ in files]
    assert all((tmp_path / "back" / name).read_bytes() == path.read_bytes() for name, path in files)
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    carry.write_all(out, "id-1", packs, {})  # unchanged content: the packs are left as they are (an upload can resume)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_damaged_or_incomplete_pack_set_is_refused_naming_it(tmp_path):
    src, out = tmp_path / "src", tmp_path / "packs"
    src.mkdir(), out.mkdir()
    packs = carry.plan(files_of(src, {"a.bin": 5000, "b.bin": 5000, "c.bin": 5000}), max_packs=3, target_bytes=5000)
    carry.write_all(out, "id-2", packs, {})
    first, second, third = sorted(out.iterdir())
    data = bytearray(second.read_bytes())
    data[len(data) - len(carry.GUARD) - 10] ^= 0xFF  # inside b.bin
    second.write_bytes(bytes(data))
    with pytest.raises(carry.PackError, match="b.bin does not match its sha256"):
        carry.unpack(carry.find(tmp_path, "id-2"), tmp_path / "back")
    assert not (tmp_path / "back").exists()  # nothing half-written is left
    whole = third.read_bytes()
    third.write_bytes(whole[:len(whole) - len(carry.GUARD) - 100])
    with pytest.raises(carry.PackError, match="ends inside c.bin"):
        carry.unpack([third], tmp_path / "back")
    third.write_bytes(whole[:60])
    with pytest.raises(carry.PackError, match="not a readable pack"):
        carry.unpack([third], tmp_path / "back")
    third.unlink()
    with pytest.raises(carry.PackError, match=r"part\(s\) 2 of 3"):
        carry.find(tmp_path, "id-2")


def archives(tmp_path: Path) -> dict[str, Path]:
    from data_shards.synthetic import SyntheticSpec, generate

    generate(SyntheticSpec(train=40, val=10, test=10, samples_per_shard=16), tmp_path / "set", progress=False)
    made = {"shard": next((tmp_path / "set").glob("train-*.tar")), "checkpoint": tmp_path / "last.pt", "stored npz": tmp_path / "e.npz",
            "gnu tar": tmp_path / "gnu.tar"}
    torch.save({"model": torch.nn.Linear(8, 8).state_dict(), "epoch": 3}, made["checkpoint"])
    np.savez(made["stored npz"], a=np.arange(100))
    with tarfile.open(made["gnu tar"], "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted((tmp_path / "set").iterdir()):
            tar.add(path, arcname=f"./deep/{'x' * 120}/{path.name}")  # long names: extension headers in the layout
    return made


@pytest.mark.parametrize("kind", ["shard", "checkpoint", "stored npz", "gnu tar"])
def test_an_archive_found_unpacked_is_rebuilt_byte_for_byte(tmp_path, kind):
    from launch.carry import sha256_of

    path = archives(tmp_path)[kind]
    recorded, data = layout(path), path.read_bytes()
    mount = tmp_path / "mount"
    unpack_into(mount / archive_stem(path.name, data), data)  # what Kaggle hands the next kernel
    rebuilt = restore(mount / path.name, tmp_path / "out" / path.name, len(data), sha256_of(path), recorded, kind)
    assert rebuilt.read_bytes() == data


def test_what_cannot_be_rebuilt_or_is_damaged_is_refused_naming_it(tmp_path):
    from launch.carry import sha256_of

    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, a=np.arange(100))
    assert layout(compressed) is None  # deflated members: no byte-exact rebuild
    unpack_into(tmp_path / "mount" / "c", compressed.read_bytes())
    with pytest.raises(RestoreError, match="cannot be rebuilt"):
        restore(tmp_path / "mount" / "c.npz", tmp_path / "out" / "c.npz", compressed.stat().st_size, sha256_of(compressed), None, "c.npz")

    shard = archives(tmp_path / "made")["shard"]
    recorded, data = layout(shard), shard.read_bytes()
    folder = tmp_path / "mount2" / archive_stem(shard.name, data)
    unpack_into(folder, data)
    victim = sorted(folder.iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")  # same size, other bytes
    with pytest.raises(RestoreError, match="do not match the recorded size"):
        restore(tmp_path / "mount2" / shard.name, tmp_path / "out" / shard.name, len(data), sha256_of(shard), recorded, "shard")
    victim.unlink()
    with pytest.raises(RestoreError, match=f"member {victim.name} is missing"):
        restore(tmp_path / "mount2" / shard.name, tmp_path / "out" / shard.name, len(data), sha256_of(shard), recorded, "shard")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(RestoreError, match="neither"):
        restore(tmp_path / "nowhere" / shard.name, tmp_path / "out" / shard.name, len(data), sha256_of(shard), recorded, "shard")


def test_the_kaggle_double_unpacks_archives_by_name_or_content():
    tar_bytes, zip_bytes = io.BytesIO(), io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with zipfile.ZipFile(zip_bytes, "w") as archive:
        archive.writestr("a.txt", "x")
    assert archive_stem("code.tar", b"anything") == "code" and archive_stem("x.zip", b"") == "x"
    assert archive_stem("train-000001.shard", tar_bytes.getvalue()) == "train-000001"  # a tar by content, whatever its name
    assert archive_stem("last.pt", zip_bytes.getvalue()) == "last"
    assert archive_stem("notes.json", b"{}") is None
