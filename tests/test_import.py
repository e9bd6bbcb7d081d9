"""`data_shards import`: arrays a user holds -> a verified shard set. An imported copy of the synthetic set trains to the
same test figures as the set itself; every bad input is one line and exit 2, before anything is written."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import launch, only_run
from data_shards import load_split, open_shards
from data_shards.cli import main

SHORT_MLP = ["train.epochs=2", "model.hidden=[64]", "data.batch_size=64"]
PT_MAP = ["clip=clip_features", "audio=vggish", "teacher=imagebind", "ids=video_ids"]
NPZ_MAP = ["clip=clip", "audio=audio", "teacher=teacher", "ids=ids", "has_audio=has_audio", "split=split"]


def features(n: int, first: int = 0, seed: int = 0, frames: int = 3, silent: int = 2) -> dict[str, np.ndarray]:
    """Valid arrays of ``n`` videos (the first ``silent`` with all-zero audio), named as in NPZ_MAP."""
    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((n, 32))
    audio = rng.standard_normal((n, 16)).astype(np.float32)
    audio[:silent] = 0
    return {"clip": rng.standard_normal((n, frames, 24)).astype(np.float32), "audio": audio,
            "teacher": (teacher / np.linalg.norm(teacher, axis=1, keepdims=True)).astype(np.float32),
            "ids": np.array([f"vid{i}" for i in range(first, first + n)]), "has_audio": np.arange(n) >= silent,
            "split": np.array(["train" if i % 4 else "test" for i in range(n)])}


def run_import(args: list, capsys) -> tuple[int, str, str]:
    code = main(["import", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def original_pt(split, path: Path) -> None:
    """A split saved as the original StreamApprox kept it: torch.save of a dict of float32 tensors and a list of ids."""
    torch.save({"clip_features": split.clip.float(), "vggish": split.audio.float(), "imagebind": split.teacher,
                "video_ids": list(split.keys)}, path)


def test_imported_copies_of_the_synthetic_set_train_to_the_same_test_figures(tmp_path, small_shards, capsys):
    shards = open_shards(small_shards)
    splits = {name: load_split(shards, name) for name in ("train", "val", "test")}
    for name, split in splits.items():
        original_pt(split, tmp_path / f"{name}_features_v2.pt")
    np.savez(tmp_path / "features.npz", clip=torch.cat([s.clip for s in splits.values()]).numpy(),
             audio=torch.cat([s.audio for s in splits.values()]).numpy(), teacher=torch.cat([s.teacher for s in splits.values()]).numpy(),
             ids=np.array([key for s in splits.values() for key in s.keys]), has_audio=torch.cat([s.has_audio for s in splits.values()]).numpy(),
             split=np.array([name for name, s in splits.items() for _ in s.keys]))
    pt_inputs = [tmp_path / f"{name}_features_v2.pt" for name in splits]
    code, out, err = run_import([*pt_inputs, "--split", *splits, "--map", *PT_MAP, "--out", tmp_path / "from-pt"], capsys)
    assert code == 0, err
    assert "imported 920 videos from 3 inputs (test 200, train 600, val 120)" in out and "ok: every shard matches" in out
    silent = {name: int((~s.has_audio).sum()) for name, s in splits.items()}
    assert f"{silent['train']} of 600 videos have all-zero audio and are marked silent" in err  # no mask in the original's files
    code, out, err = run_import([tmp_path / "features.npz", "--map", *NPZ_MAP, "--out", tmp_path / "from-npz"], capsys)
    assert code == 0 and err == "", err

    for imported in ("from-pt", "from-npz"):
        copy = open_shards(tmp_path / imported)
        assert copy.dims == shards.dims and copy.manifest.splits == shards.manifest.splits
        for name, split in splits.items():
            again = load_split(copy, name)
            assert again.keys == split.keys
            for field in ("clip", "audio", "has_audio", "teacher"):
                assert torch.equal(getattr(again, field), getattr(split, field)), (imported, name, field)

    figures = {}
    for name, location in (("original", small_shards), ("from-pt", tmp_path / "from-pt"), ("from-npz", tmp_path / "from-npz")):
        (tmp_path / name).mkdir(exist_ok=True)
        result = launch("local", "train_mlp", "--set", f"data.shards={location}", *SHORT_MLP, cwd=tmp_path / name)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        figures[name] = json.loads((only_run(tmp_path / name) / "eval" / "results.json").read_text())["metrics"]
    assert figures["original"]["n"] == 200 and figures["original"]["s2t_r1"] > 0
    assert figures["from-pt"] == figures["original"] and figures["from-npz"] == figures["original"]


def test_provenance_normalization_and_a_carved_validation_split(tmp_path, capsys):
    data = features(40)
    raw = torch.from_numpy(data["teacher"]) * 7
    torch.save({"feats": {"clip": torch.from_numpy(data["clip"])}, "vggish": torch.from_numpy(data["audio"]), "imagebind": raw,
                "video_ids": data["ids"].tolist()}, tmp_path / "train.pt")
    args = [tmp_path / "train.pt", "--split", "train", "--map", "clip=feats.clip", "audio=vggish", "teacher=imagebind", "ids=video_ids",
            "--val-from", "train", "--val-count", "10", "--seed", "3"]
    code, _, err = run_import([*args, "--out", tmp_path / "refused"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "refused").exists()
    assert "40 of 40 rows are not unit-norm" in err and "pass --normalize-teacher" in err

    code, out, err = run_import([*args, "--normalize-teacher", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    assert "--normalize-teacher: 40 of 40 teacher rows were not unit-norm" in err and "train       30 videos" in out
    assert run_import([*args, "--normalize-teacher", "--out", tmp_path / "b"], capsys)[0] == 0
    assert run_import([*args[:-1], "4", "--normalize-teacher", "--out", tmp_path / "c"], capsys)[0] == 0
    a, b, c = (open_shards(tmp_path / name) for name in "abc")
    assert load_split(a, "val").keys == load_split(b, "val").keys != load_split(c, "val").keys  # seeded: the same seed, the same val
    assert sorted(load_split(a, "val").keys + load_split(a, "train").keys) == sorted(data["ids"].tolist())
    teacher = load_split(a, "train").teacher.double().norm(dim=1)
    assert torch.allclose(teacher, torch.ones_like(teacher), atol=1e-5)

    source = a.manifest.source
    assert source["kind"] == "imported" and source["mapping"]["clip"] == "feats.clip"
    assert source["options"] == {"splits": ["train"], "normalize_teacher": True, "val_from": "train", "val_count": 10, "seed": 3,
                                 "samples_per_shard": 1000}
    [entry] = source["inputs"]
    assert entry["files"][0]["sha256"] == hashlib.sha256((tmp_path / "train.pt").read_bytes()).hexdigest()
    assert source["silent"] == 2


def test_safetensors_and_a_folder_of_npy_one_frame_and_per_example_audio(tmp_path, capsys):
    data = features(12, frames=1)
    save_file({"clip": torch.from_numpy(data["clip"][:, 0]), "audio": torch.from_numpy(data["audio"]).reshape(12, 2, 8)[:, :1].repeat(1, 3, 1),
               "teacher": torch.from_numpy(data["teacher"])}, tmp_path / "train.safetensors",
              metadata={"video_ids": json.dumps(data["ids"].tolist())})  # safetensors holds strings in its metadata only
    folder = tmp_path / "test"
    folder.mkdir()
    other = features(6, first=500, frames=1, silent=0)
    np.save(folder / "clip.npy", other["clip"][:, 0])
    np.save(folder / "teacher.npy", other["teacher"])
    np.save(folder / "video_ids.npy", np.arange(500, 506))
    np.save(folder / "audio.npy", np.stack([other["audio"].reshape(6, 2, 8)[:, 0]] * 3, axis=1))
    code, out, err = run_import([tmp_path / "train.safetensors", folder, "--split", "train", "test", "--map", "clip=clip", "audio=audio",
                                 "teacher=teacher", "ids=video_ids", "--out", tmp_path / "set"], capsys)
    assert code == 0, err
    shards = open_shards(tmp_path / "set")
    assert shards.dims.frames == 1 and shards.dims.audio == 8 and shards.dims.audio_examples == 3
    assert load_split(shards, "train").keys == data["ids"].tolist() and load_split(shards, "test").keys == [str(i) for i in range(500, 506)]
    assert "2 of 12 videos have all-zero audio" in err and "0 of 6 videos" in err
    assert [len(entry["files"]) for entry in shards.manifest.source["inputs"]] == [1, 4]


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **data)
    else:
        torch.save(data, path)
    return path


def _changed(key: str, change) -> Callable[[Path], list[Path]]:
    """An input like ``features(8)`` whose ``key`` is ``change(data)`` (or absent, for None)."""
    def make(tmp_path: Path) -> list[Path]:
        data = features(8)
        value = change(data)
        if value is None:
            data.pop(key)
        else:
            data[key] = value
        return [_write(tmp_path, "features.npz", data)]
    return make


def _two_dims(tmp_path: Path) -> list[Path]:
    more = {**features(4, first=100), "clip": np.zeros((4, 3, 12), np.float32)}
    return [_write(tmp_path, "features.npz", features(8)), _write(tmp_path, "more.npz", more)]


BAD_INPUTS = {
    "missing field": (_changed("teacher", lambda d: None), ["no field 'teacher' (--map teacher=teacher)", "it holds audio, clip"]),
    "row counts": (_changed("audio", lambda d: d["audio"][:7]), ["row counts disagree", "audio=audio 7", "clip=clip 8"]),
    "clip rank": (_changed("clip", lambda d: d["clip"][:, :, :, None]), ["field 'clip' (clip): shape [8, 3, 24, 1]", "[N, F, Dc]"]),
    "dims between inputs": (_two_dims, ["more.npz: clip is [3, 12] per video but", "features.npz has [3, 24]"]),
    "non-finite": (_changed("clip", lambda d: np.where(np.arange(8)[:, None, None] == 5, np.nan, d["clip"])),
                   ["field 'clip' (clip): 1 rows hold NaN or inf, the first row 5 (video 'vid5')"]),
    "duplicate ids": (_changed("ids", lambda d: np.array([f"vid{min(i, 6)}" for i in range(8)])), ["video id 'vid6' is in rows 6 and 7"]),
    "dtype": (_changed("audio", lambda d: d["audio"].astype(np.complex64)), ["field 'audio' (audio): dtype complex64 cannot be cast"]),
    "float16 overflow": (_changed("clip", lambda d: d["clip"] * 1e5), ["overflow the float16", "rescale"]),
    "id with a dot": (_changed("ids", lambda d: np.array([f"vid{i}.mp4" for i in range(8)])), ["'vid0.mp4' (row 0)", "without the file extension"]),
    "object ids": (_changed("ids", lambda d: np.array([f"vid{i}" for i in range(8)], dtype=object)),
                   ["field 'ids' (ids) cannot be read (Object arrays cannot be loaded", "np.array(ids, dtype=str)"]),
    "bad mask": (_changed("has_audio", lambda d: np.arange(8)), ["has_audio must be booleans or 0/1"]),
    "split names": (_changed("split", lambda d: np.arange(8)), ["field 'split' (split): dtype int64 is not split names"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_each_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    make, expected = BAD_INPUTS[case]
    code, out, err = run_import([*make(tmp_path), "--map", *NPZ_MAP, "--out", tmp_path / "out"], capsys)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in expected:
        assert fragment in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # nothing written, no staging left


@pytest.mark.parametrize("args,expected", [
    (["--split", "train"], "one of them"),  # --split and a split field
    (["--map", "colour=x"], "unknown role 'colour'"),
    (["--val-from", "train"], "--val-from SPLIT and --val-count N go together"),
    (["--val-from", "train", "--val-count", "99"], "split 'train' has 6 videos; carve between 1 and 5"),
    (["--val-from", "trian", "--val-count", "2"], "--val-from trian: no input holds that split (they hold test, train)"),
    (["--samples-per-shard", "0"], "a shard holds at least 1 video"),
])
def test_bad_options_are_one_line_and_exit_2(args, expected, tmp_path, capsys):
    data = features(8)
    code, _, err = run_import([_write(tmp_path, "f.npz", data), "--map", *NPZ_MAP, *args, "--out", tmp_path / "out"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_files_that_cannot_be_read_are_one_line_and_exit_2(tmp_path, capsys):
    data = features(8)
    duplicate = {**features(4, first=6), "split": np.array(["test"] * 4)}
    (tmp_path / "broken.pt").write_bytes(b"not a pickle")
    np.save(tmp_path / "clip.npy", data["clip"])
    torch.save({key: data[key] for key in ("clip", "audio", "teacher", "ids")}, tmp_path / "numpy.pt")  # numpy arrays in a .pt
    cases = [([tmp_path / "broken.pt"], "broken.pt: cannot read it as .pt (Unsupported operand"),
             ([tmp_path / "clip.npy"], "a .npy holds one array"),
             ([tmp_path / "none.npz"], "none.npz: no such file"),
             ([tmp_path / "numpy.pt"], "numpy.pt: holds a numpy._core.multiarray._reconstruct object"),
             ([_write(tmp_path, "a.npz", data), _write(tmp_path, "b.npz", duplicate)], "b.npz: video id 'vid6' (row 0) is also in")]
    for inputs, expected in cases:
        code, _, err = run_import([*inputs, "--map", *NPZ_MAP, "--out", tmp_path / "out"], capsys)
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    torch.save({"clip": torch.from_numpy(data["clip"]), "audio": torch.from_numpy(data["audio"]), "teacher": torch.from_numpy(data["teacher"]),
                "ids": data["ids"].tolist()}, tmp_path / "one.pt")
    code, _, err = run_import([tmp_path / "one.pt", "--map", *NPZ_MAP[:4], "--out", tmp_path / "out"], capsys)
    assert code == 2 and "say which split each input holds" in err
    code, _, err = run_import([tmp_path / "one.pt", tmp_path / "one.pt", "--split", "train", "--map", *NPZ_MAP[:4], "--out", tmp_path / "o"],
                              capsys)
    assert code == 2 and "2 inputs need 2 split names" in err
