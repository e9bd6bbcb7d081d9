"""Shard sets: writer + manifest, validation errors that name the file, rank splitting with equal
batch counts on uneven shards, the in-memory cache, streaming that serves exactly the cached samples, and the
synthetic generator's properties."""
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from data_shards import Dims, Manifest, ShardError, ShardSetWriter, open_shards
from data_shards.cli import main as shards_cli
from data_shards.manifest import sha256_file
from data_shards.reader import TrainBatches, load_split
from data_shards.synthetic import SyntheticSpec, generate


def write_tiny(root, n=10, samples_per_shard=4):
    dims = Dims(frames=2, clip=8, audio=4, teacher=6)
    rng = np.random.default_rng(0)
    with ShardSetWriter(root, dims, samples_per_shard=samples_per_shard) as writer:
        for i in range(n):
            teacher = rng.standard_normal(6)
            meta = {"video_id": f"v{i}", "split": "train", "has_audio": i % 3 != 0, "duration_s": 1.0, "frame_times_s": [0.1, 0.9],
                    "sampling": "uniform"}
            writer.write("train", f"v{i}", rng.standard_normal((2, 8)), rng.standard_normal(4), teacher / np.linalg.norm(teacher), meta)
    return writer.manifest


def assert_as_webdataset_decodes(root, split, tensors):
    """``tensors`` (a split as ``load_split`` decodes it) are the split as WebDataset reads it: tarfile and np.load."""
    samples = [sample for path in open_shards(root).paths(split)
               for sample in wds.WebDataset(path, shardshuffle=False, empty_check=False).decode()]
    assert tensors.keys == [sample["__key__"] for sample in samples]
    audio = [sample["audio.npy"] if sample["audio.npy"].ndim == 1 else sample["audio.npy"].mean(axis=0) for sample in samples]
    assert torch.equal(tensors.clip, torch.from_numpy(np.stack([sample["clip.npy"] for sample in samples])))
    assert torch.equal(tensors.audio, torch.from_numpy(np.stack(audio)))
    assert tensors.has_audio.tolist() == [sample["meta.json"]["has_audio"] for sample in samples]
    assert torch.equal(tensors.teacher, torch.from_numpy(np.stack([sample["teacher.npy"] for sample in samples])))


def test_writer_manifest_roundtrip(tmp_path):
    manifest = write_tiny(tmp_path / "set")
    assert [s.samples for s in manifest.shards] == [4, 4, 2]
    on_disk = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert on_disk["splits"] == {"train": 10} and on_disk["dims"]["clip"] == 8 and len(on_disk["shards"][0]["sha256"]) == 64
    tensors = load_split(open_shards(tmp_path / "set"), "train")
    assert tensors.keys == [f"v{i}" for i in range(10)]
    assert tensors.has_audio.tolist() == [i % 3 != 0 for i in range(10)]
    assert not list(tmp_path.glob(".set.*partial"))  # staging directory renamed away


def test_writer_rejects_bad_samples(tmp_path):
    dims = Dims(frames=2, clip=8, audio=4, teacher=6)
    meta = {"video_id": "a", "split": "train", "has_audio": True, "duration_s": 1.0, "frame_times_s": [0, 1], "sampling": "uniform"}
    unit = np.eye(6)[0]
    with pytest.raises(ShardError, match="'a': clip has shape"):
        with ShardSetWriter(tmp_path / "x", dims) as writer:
            writer.write("train", "a", np.zeros((3, 8)), np.zeros(4), unit, meta)
    with pytest.raises(ShardError, match="teacher norm"):
        with ShardSetWriter(tmp_path / "y", dims) as writer:
            writer.write("train", "a", np.zeros((2, 8)), np.zeros(4), 2 * unit, meta)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*partial"))  # nothing half-written left


def test_validate_errors_name_the_shard(tmp_path, capsys):
    write_tiny(tmp_path / "set")
    assert shards_cli(["validate", str(tmp_path / "set")]) == 0
    assert "ok: every shard matches" in capsys.readouterr().out

    assert shards_cli(["validate", str(tmp_path / "missing")]) == 2
    assert "missing: shard directory not found" in capsys.readouterr().err

    shard = tmp_path / "set" / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ShardError, match=r"train-000001\.tar: \d+ bytes, manifest.json says \d+ \(truncated"):
        open_shards(tmp_path / "set")
    flipped = bytearray(data)
    flipped[2000] ^= 0xFF  # same size, corrupted
    shard.write_bytes(bytes(flipped))
    with pytest.raises(ShardError, match=r"train-000001\.tar: sha256 does not match"):
        open_shards(tmp_path / "set")
    shard.unlink()
    with pytest.raises(ShardError, match=r"train-000001\.tar: shard listed in manifest.json is missing"):
        open_shards(tmp_path / "set")
    (tmp_path / "set" / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest"):
        open_shards(tmp_path / "set")


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_ranks_get_equal_batch_counts_on_uneven_shards(small_shards, mode):
    shards = open_shards(small_shards)
    assert sorted(s.samples for s in shards.manifest.shards_of("train")) == [88, 128, 128, 128, 128]
    seen = []
    for rank in range(2):
        loader = TrainBatches(shards, "train", 64, rank=rank, world_size=2, seed=3, mode=mode)
        batches = list(loader.epoch(0))
        assert len(batches) == len(loader) == 600 // (64 * 2)
        assert all(b["clip"].shape == (64, 3, 512) and b["clip"].dtype == torch.float32 for b in batches)
        seen.append({tuple(row[:4].tolist()) for b in batches for row in b["teacher"]})
    if mode == "memory":
        assert not seen[0] & seen[1]  # ranks read disjoint samples within an epoch


def test_memory_epochs_are_seeded_permutations_and_resume_mid_epoch(small_shards):
    loader = TrainBatches(open_shards(small_shards), "train", 64, seed=5, mode="memory")
    epoch0 = [b["index"] for b in loader.epoch(0)]
    assert not torch.equal(epoch0[0], next(loader.epoch(1))["index"])
    assert all(torch.equal(a["index"], b) for a, b in zip(loader.epoch(0, start=3), epoch0[3:]))
    assert len(torch.cat(epoch0).unique()) == len(epoch0) * 64


def test_streaming_needs_a_shard_per_reader(small_shards):
    with pytest.raises(ShardError, match="at least one per reader"):
        TrainBatches(open_shards(small_shards), "val", 16, world_size=2, mode="stream")


def test_streamed_epoch_is_the_in_memory_split_and_a_bad_member_names_its_shard(tmp_path):
    """2 ranks x 2 workers, one shard each way round (8 shards of 8, batches of 4): one streamed epoch holds every sample of
    the split once, each exactly as the in-memory path decodes it, in batches with the same fields; a resumed epoch replays
    it. Extracted-set tar layout included: a pax header on every member (float mtime) and a long non-ASCII key."""
    root = tmp_path / "set"
    dims = Dims(frames=2, clip=8, audio=4, teacher=6)
    rng = np.random.default_rng(1)
    with ShardSetWriter(root, dims, samples_per_shard=8) as writer:
        for i in range(64):
            key = f"vidéo-{i:02d}-" + "x" * 120 if i == 37 else f"v{i}"
            teacher = rng.standard_normal(6)
            meta = {"video_id": key, "split": "train", "has_audio": i % 3 != 0, "duration_s": 1.0, "frame_times_s": [0.1, 0.9],
                    "sampling": "uniform"}
            writer.write("train", key, rng.standard_normal((2, 8)), rng.standard_normal(4), teacher / np.linalg.norm(teacher), meta)
    shards = open_shards(root)
    memory = load_split(shards, "train")
    assert_as_webdataset_decodes(root, "train", memory)

    def rows(batches, keys):
        return [(keys[i], c.numpy().tobytes(), a.numpy().tobytes(), bool(h), t.numpy().tobytes())
                for b in batches for i, c, a, h, t in zip(b["index"].tolist(), b["clip"], b["audio"], b["has_audio"], b["teacher"])]

    everything = rows([memory.batch(torch.arange(len(memory)))], memory.keys)
    fields = {name: (value.dtype, value.shape[1:]) for name, value in memory.batch(torch.arange(4)).items()}
    streamed = []
    for rank in range(2):
        loader = TrainBatches(shards, "train", 4, rank=rank, world_size=2, seed=7, mode="stream", num_workers=2)
        epoch0 = list(loader.epoch(0))
        assert len(epoch0) == len(loader) == 8
        assert all({name: (value.dtype, value.shape[1:]) for name, value in b.items()} == fields for b in epoch0)
        streamed += rows(epoch0, memory.keys)
        resumed = list(loader.epoch(0, start=5))
        assert all(torch.equal(b[name], a[name]) for a, b in zip(epoch0[5:], resumed, strict=True) for name in fields)
        epoch1 = list(loader.epoch(1))
        assert set(rows(epoch1, memory.keys)) == set(rows(epoch0, memory.keys))  # the rank's shards again...
        assert [b["index"].tolist() for b in epoch1] != [b["index"].tolist() for b in epoch0]  # ...in another order
    assert len(streamed) == len(set(streamed)) == 64 and set(streamed) == set(everything)
    assert any(key.startswith("vidéo-37-") for key, *_ in streamed)

    shard = root / "train-000001.tar"
    samples = list(wds.WebDataset(str(shard), shardshuffle=False, empty_check=False))
    samples[2]["clip.npy"] = np.zeros((3, 8), np.float16)  # one member of the wrong shape, in a set whose manifest matches
    with wds.TarWriter(str(shard)) as writer:
        for sample in samples:
            writer.write(sample)
    manifest = Manifest.read(root)
    entry = next(entry for entry in manifest.shards if entry.name == shard.name)
    entry.bytes, entry.sha256 = shard.stat().st_size, sha256_file(shard)
    manifest.write(root)
    bad = r"train-000001\.tar: sample 'v10' clip\.npy has shape \(3, 8\), manifest dims say \(2, 8\)"
    with pytest.raises(ShardError, match=bad):
        list(TrainBatches(open_shards(root), "train", 4, mode="stream", num_workers=2).epoch(0))
    with pytest.raises(ShardError, match=bad):
        load_split(open_shards(root), "train")


def v7_header(name: bytes, size: int, signed: bool = False) -> bytes:
    """A pre-POSIX (Version 7 Unix) tar header: name, mode, uid, gid, size, mtime, checksum and link flag (NUL: a regular
    file); no magic, no owner names, no prefix. ``signed``: the checksum summed over signed bytes, as Sun and NeXT tars
    wrote it (tarfile accepts either)."""
    header = bytearray(512)
    header[: len(name)] = name
    for start, width, value in ((100, 8, 0o644), (108, 8, 0), (116, 8, 0), (124, 12, size), (136, 12, 1_600_000_000)):
        header[start : start + width] = b"%0*o\0" % (width - 1, value)
    header[148:156] = b" " * 8
    checksum = sum(byte - 256 if signed and byte >= 128 else byte for byte in header)
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


def test_a_v7_tar_streams_the_samples_tarfile_reads(tmp_path):
    """A shard set whose tars are pre-POSIX (v7: headers without the ustar magic, one checksum signed, a v7 directory
    entry first) gives the samples WebDataset reads (through tarfile) on the memory path and the stream path (both the
    reader of memory-mapped tars), and those are the samples of the same set written as ustar; a v7 header whose checksum does
    not add up is named as corruption by the stream path."""
    import tarfile

    root = tmp_path / "set"
    dims = Dims(frames=2, clip=8, audio=4, teacher=6)
    rng = np.random.default_rng(3)
    with ShardSetWriter(root, dims, samples_per_shard=4) as writer:
        for i in range(10):
            key = "vidéo-5" if i == 5 else f"v{i}"  # non-ASCII: a header with bytes >= 128, where signed and unsigned sums differ
            teacher = rng.standard_normal(6)
            meta = {"video_id": key, "split": "train", "has_audio": i % 3 != 0, "duration_s": 1.0, "frame_times_s": [0.1, 0.9],
                    "sampling": "uniform"}
            writer.write("train", key, rng.standard_normal((2, 8)), rng.standard_normal(4), teacher / np.linalg.norm(teacher), meta)
    ustar = load_split(open_shards(root), "train")
    assert_as_webdataset_decodes(root, "train", ustar)

    manifest = Manifest.read(root)
    for entry in manifest.shards:
        shard = root / entry.name
        with tarfile.open(shard) as tar:
            members = [(m.name.encode(), tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
        v7 = bytearray(v7_header(b"train/", 0))  # a v7 directory: a regular-file flag and a trailing slash
        for name, data in members:
            v7 += v7_header(name, len(data), signed=b"\xc3" in name) + data + bytes(-len(data) % 512)
        shard.write_bytes(bytes(v7 + bytes(1024)))
        with tarfile.open(shard) as tar:  # what was written is v7, and tarfile reads it
            read = tar.getmembers()
            assert [(m.name, m.isdir()) for m in read] == [("train", True)] + [(name.decode(), False) for name, _ in members]
            assert [tar.extractfile(m).read() for m in read[1:]] == [data for _, data in members]
        raw = shard.read_bytes()
        assert all(raw[m.offset + 257 : m.offset + 265] == bytes(8) for m in read)  # no ustar/GNU magic, no version
        entry.bytes, entry.sha256 = len(raw), sha256_file(shard)
    signed = next(shard for shard in root.glob("*.tar") if "vidéo".encode() in shard.read_bytes()).read_bytes()
    header = signed[signed.index("vidéo-5.".encode()) :][:512]
    assert int(header[148:154], 8) != 256 + sum(header[:148] + header[156:])  # that checksum is the signed one
    manifest.write(root)

    memory = load_split(open_shards(root), "train")
    assert_as_webdataset_decodes(root, "train", memory)
    assert memory.keys == ustar.keys and "vidéo-5" in memory.keys
    for field in ("clip", "audio", "has_audio", "teacher"):
        assert torch.equal(getattr(memory, field), getattr(ustar, field)), field
    everything = {(memory.keys[i], *(memory.batch(torch.tensor([i]))[f].numpy().tobytes() for f in ("clip", "audio", "has_audio", "teacher")))
                  for i in range(len(memory))}
    streamed = [(memory.keys[i], *(b[f][j : j + 1].numpy().tobytes() for f in ("clip", "audio", "has_audio", "teacher")))
                for b in TrainBatches(open_shards(root), "train", 2, mode="stream").epoch(0) for j, i in enumerate(b["index"].tolist())]
    assert len(streamed) == 10 and set(streamed) == everything

    shard = root / "train-000001.tar"
    broken = bytearray(shard.read_bytes())
    broken[512 + 512 + 512 + 1] ^= 0x01  # a name byte of the second member's header: its checksum no longer adds up
    shard.write_bytes(bytes(broken))
    entry = next(entry for entry in manifest.shards if entry.name == shard.name)
    entry.sha256 = sha256_file(shard)
    manifest.write(root)
    with pytest.raises(ShardError, match=r"train-000001\.tar: no tar header at byte 1536 \(truncated or corrupted shard\)"):
        list(TrainBatches(open_shards(root), "train", 2, mode="stream").epoch(0))


def test_synthetic_is_deterministic_msrvtt_shaped_and_both_modalities_matter(tmp_path):
    spec = SyntheticSpec(train=900, val=100, test=300, samples_per_shard=500, seed=11)
    generate(spec, tmp_path / "a", progress=False)
    generate(spec, tmp_path / "b", progress=False)
    a, b = open_shards(tmp_path / "a"), open_shards(tmp_path / "b")
    assert a.digest() == b.digest()
    assert a.manifest.splits == {"train": 900, "val": 100, "test": 300}
    assert a.manifest.source["kind"] == "synthetic"
    train, test = load_split(a, "train"), load_split(a, "test")
    silent = float((~train.has_audio).float().mean())
    assert 0.09 < silent < 0.15
    assert float(train.audio[~train.has_audio].abs().sum()) == 0.0
    torch.testing.assert_close(train.teacher.norm(dim=1), torch.ones(900))

    def ridge_r2(features):
        """Held-out R^2 of a closed-form ridge fit: how much of the teacher the inputs explain."""
        x, xt = [torch.cat([f(s).double(), torch.ones(len(s), 1, dtype=torch.float64)], 1) for s in (train, test) for f in [features]]
        y, yt = train.teacher.double(), test.teacher.double()
        w = torch.linalg.solve(x.T @ x + 10 * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
        return 1 - float(((xt @ w - yt) ** 2).sum() / ((yt - y.mean(0)) ** 2).sum())

    frames = ridge_r2(lambda s: s.clip.flatten(1))
    both = ridge_r2(lambda s: torch.cat([s.clip.flatten(1), s.audio, s.has_audio[:, None]], 1))
    audio = ridge_r2(lambda s: torch.cat([s.audio, s.has_audio[:, None]], 1))
    assert both > frames + 0.02 and both > audio + 0.02  # each modality adds what the other lacks
    assert both < 0.9  # and a linear map does not solve it


def test_synthetic_url_parameters_are_checked():
    with pytest.raises(ShardError, match="unknown synthetic parameter 'trian'"):
        SyntheticSpec.from_url("synthetic://msrvtt?trian=5")
    assert SyntheticSpec.from_url("synthetic://msrvtt?train=5&frame_noise=0.5").frame_noise == 0.5
