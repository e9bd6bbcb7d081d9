"""Read a shard set (``data_shards.shard_set``: found and verified): decode splits once into tensors, and serve
per-rank batches in which every rank gets the same number of batches (so DDP never hangs).

Both training paths read samples from the memory-mapped tar and check them against the manifest's schema without
tarfile or np.load: tens of thousands of samples/s per core instead of ~5,000 (bench/data_pipeline.py). By size:
- memory: the split is decoded once into tensors; every epoch is a seeded permutation of indices,
  so later epochs run at in-memory speed and a resumed epoch replays exactly.
- stream: shards are split across ranks and DataLoader workers (WebDataset's split_by_worker), each
  worker repeats passes over its shards, and ``with_epoch`` cuts every rank to the same batch count.
  For splits larger than memory; a batch leaves a worker as one packed buffer.
"""
from __future__ import annotations

import io
import json
import logging
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice

import numpy as np
import torch
import webdataset as wds

from data_shards.errors import ShardError
from data_shards.manifest import ShardEntry
from data_shards.schema import Dims
from data_shards.shard_set import ShardSet

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """A whole split in memory, inputs keyed by modality."""

    keys: list[str]
    clip: torch.Tensor  # float16 [N, F, Dc]
    audio: torch.Tensor  # float16 [N, Da]
    has_audio: torch.Tensor  # bool [N]
    teacher: torch.Tensor  # float32 [N, Dt]

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "clip": self.clip[index].float(),
            "audio": self.audio[index].float(),
            "has_audio": self.has_audio[index],
            "teacher": self.teacher[index],
            "index": index,
        }


@dataclass
class ShardSample:
    """One video as stored, with its meta.json (frame times, split, audio status): what an index keeps."""

    key: str
    clip: np.ndarray
    audio: np.ndarray
    has_audio: bool
    teacher: np.ndarray
    meta: dict


def _sample_arrays(sample: dict, dims: Dims, where: str) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
    """Decode one WebDataset sample and check it against the manifest's dims."""
    key = sample.get("__key__", "?")
    for field in ("clip.npy", "audio.npy", "teacher.npy", "meta.json"):
        if field not in sample:
            raise ShardError(f"{where}: sample {key!r} has no {field}; the shard is not in the StreamApprox schema.")
    clip, audio, teacher, meta = sample["clip.npy"], sample["audio.npy"], sample["teacher.npy"], sample["meta.json"]
    if clip.shape != (dims.frames, dims.clip):
        raise ShardError(f"{where}: sample {key!r} clip.npy has shape {clip.shape}, manifest dims say {(dims.frames, dims.clip)}.")
    if audio.ndim == 2:  # per-example VGGish embeddings -> pooled, the students' input
        audio = audio.mean(axis=0)
    if audio.shape != (dims.audio,):
        raise ShardError(f"{where}: sample {key!r} audio.npy has {audio.shape[-1:]} features, manifest dims say {dims.audio}.")
    if teacher.shape != (dims.teacher,):
        raise ShardError(f"{where}: sample {key!r} teacher.npy has shape {teacher.shape}, manifest dims say {(dims.teacher,)}.")
    if not isinstance(meta.get("has_audio"), bool):
        raise ShardError(f"{where}: sample {key!r} meta.json has_audio must be true or false, got {meta.get('has_audio')!r}.")
    return clip, audio, meta["has_audio"], teacher


def _decoded(paths: list[str], **kwargs) -> wds.WebDataset:
    return wds.WebDataset(paths, empty_check=False, **kwargs).decode()


_BLOCK = 512
_REGULAR = (0, ord("0"), ord("7"))  # the member types tarfile reads as regular files
_PAX, _PAX_GLOBAL, _GNU_LONG_NAME = ord("x"), ord("g"), ord("L")
_WDS_META = re.compile(rb"__[^/]*__($|/)")  # members WebDataset's tar reader skips
_NPY_MAGIC = b"\x93NUMPY"
_NPY_DTYPES: dict[bytes, np.dtype] = {b"clip.npy": np.dtype("<f2"), b"audio.npy": np.dtype("<f2"), b"teacher.npy": np.dtype("<f4")}  # the schema's
_JSON = json.JSONDecoder()


def _who(where: str, key: bytes) -> str:
    return f"{where}: sample {key.decode('utf-8', 'replace')!r}"


def _pax_records(data: memoryview, where: str) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    text, i = bytes(data), 0
    try:
        while i < len(text):
            space = text.index(b" ", i)
            length = int(text[i:space])
            if length <= space - i:
                raise ValueError(f"record length {length}")
            name, _, value = text[space + 1 : i + length - 1].partition(b"=")
            records[name.decode()] = value
            i += length
    except ValueError as exc:
        raise ShardError(f"{where}: malformed pax header ({exc}); re-copy or regenerate the shard.") from None
    return records


def _v7_header(block: bytes) -> bool:
    """Whether a block without the ustar magic is a pre-POSIX (v7) tar header: its checksum field holds the sum of its
    bytes with that field counted as spaces, unsigned or (as Sun and NeXT tars wrote it) signed -- tarfile's test. Only
    these headers pay for the sum (~10 us in Python); a ustar header is known by its magic, and a shard's bytes by the
    sha256 checked when the set is opened."""
    if len(block) < _BLOCK:
        return False
    try:
        recorded = int(block[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return False
    rest = block[:148] + block[156:]
    unsigned = 256 + sum(rest)
    return recorded in (unsigned, unsigned - 256 * sum(byte >= 128 for byte in rest))


def _tar_members(path: str) -> Iterator[tuple[bytes, memoryview]]:
    """(name, data) of each regular member of a tar shard, named as tarfile names them (ustar prefix, GNU long names, pax
    path and size; a pre-POSIX v7 header -- no magic, no prefix -- by its name field), the data a view of the memory-mapped
    file (shards are immutable: every writer here renames finished files into place). WebDataset reads tars through
    tarfile, whose ~25 us of Python per header holds a core to ~8,000 of our 4-member samples/s (an extracted set adds a
    pax header per member); this costs ~1 us a member."""
    with open(path, "rb") as stream:
        buf = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(stream.fileno()).st_size else b""
    view, pos, long_name = memoryview(buf), 0, None
    pax: dict[str, bytes] = {}
    global_pax: dict[str, bytes] = {}
    while True:
        if buf[pos + 257 : pos + 262] != b"ustar":
            block = buf[pos : pos + _BLOCK]
            if not block.strip(b"\0"):
                return  # the end-of-archive blocks (or the end of the file)
            if not _v7_header(block):
                raise ShardError(f"{path}: no tar header at byte {pos} (truncated or corrupted shard); re-copy or regenerate it.")
        try:
            size = int(pax["size"]) if "size" in pax else int(buf[pos + 124 : pos + 136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            raise ShardError(f"{path}: unreadable member size in the tar header at byte {pos}; re-copy or regenerate it.") from None
        start = pos + _BLOCK
        if start + size > len(buf):
            raise ShardError(f"{path}: the member at byte {pos} runs past the end of the file (truncated shard); re-copy or regenerate it.")
        flag, data, following = buf[pos + 156], view[start : start + size], start + (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if flag in _REGULAR:
            if long_name is not None:
                name = long_name
            elif "path" in pax:
                name = pax["path"]
            else:
                end = buf.find(b"\0", pos, pos + 100)
                name = buf[pos : end if end >= 0 else pos + 100]
                if buf[pos + 345] and buf[pos + 257 : pos + 263] == b"ustar\0":  # a POSIX name prefix
                    end = buf.find(b"\0", pos + 345, pos + 500)
                    name = buf[pos + 345 : end if end >= 0 else pos + 500] + b"/" + name
            long_name, pax, pos = None, global_pax, following
            yield name, data
            continue
        if flag == _PAX:
            pax = {**global_pax, **_pax_records(data, path)}
        elif flag == _PAX_GLOBAL:
            global_pax = pax = {**global_pax, **_pax_records(data, path)}
        elif flag == _GNU_LONG_NAME:
            long_name = bytes(data).split(b"\0", 1)[0]
        else:  # directories, links: no data, skipped as WebDataset skips them
            long_name, pax = None, global_pax
        pos = following


def _tar_samples(path: str) -> Iterator[tuple[bytes, dict[bytes, memoryview]]]:
    """Members grouped into samples the way WebDataset groups them: consecutive members sharing a key (the name up to
    the first dot of its last part), fields by lower-cased suffix; ``__*__`` members are skipped."""
    key = b""  # no member's key is empty
    fields: dict[bytes, memoryview] = {}
    for name, data in _tar_members(path):
        slash = name.rfind(b"/")
        dot = name.find(b".", slash + 1)
        if dot <= slash + 1 or (name.startswith(b"__") and _WDS_META.match(name)):
            continue
        member_key, suffix = name[:dot], name[dot + 1 :].lower()
        if member_key != key:
            if fields:
                yield key, fields
            key, fields = member_key, {}
        if suffix in fields:
            raise ShardError(f"{_who(path, key)} has two {suffix.decode(errors='replace')} members; the shard is not in the StreamApprox "
                             "schema.")
        fields[suffix] = data
    if fields:
        yield key, fields


class _StreamDecoder:
    """Pipeline stage (a picklable callable, for DataLoader workers): shard urls in, one tuple per sample out -- (index
    in the split, has_audio, clip, audio, teacher), the arrays as their raw little-endian bytes -- checked as
    ``_sample_arrays`` checks a sample (dtypes too) and against the manifest's sample count per shard. Each distinct
    .npy header is parsed by numpy and checked once per field, not once per member as ``np.load`` does; a member whose
    header is the field's last one (every member, in a shard set) costs one comparison."""

    def __init__(self, dims: Dims, shards: dict[str, tuple[int, int]]):
        self.dims, self.shards = dims, shards  # url -> (split index of its first sample, samples manifest.json declares)
        self.checked: dict[bytes, dict[bytes, tuple]] = {field: {} for field in _NPY_DTYPES}  # field -> header -> its layout
        self.last = {field: (b"", -1, (), False, True) for field in _NPY_DTYPES}  # field -> its last header's layout

    def __call__(self, urls: Iterator[dict]) -> Iterator[tuple]:
        for source in urls:
            yield from self.shard(source["url"])

    def shard(self, path: str) -> Iterator[tuple]:
        first = self.shards[path][0]
        for count, (_, sample) in enumerate(self.keyed(path)):
            yield first + count, *sample

    def keyed(self, path: str) -> Iterator[tuple[bytes, tuple]]:
        """(key, sample) of each sample of the shard at ``path``, in stored order, its count checked against the manifest's."""
        declared, count = self.shards[path][1], 0
        for key, fields in _tar_samples(path):
            if count == declared:
                raise ShardError(f"{path}: more samples than the {declared} manifest.json declares; re-copy or regenerate it.")
            yield key, self.sample(fields, path, key)
            count += 1
        if count != declared:
            raise ShardError(f"{path}: {count} samples, manifest.json declares {declared}; re-copy or regenerate it.")

    def sample(self, fields: dict[bytes, memoryview], where: str, key: bytes) -> tuple:
        try:
            clip, audio, teacher, meta = fields[b"clip.npy"], fields[b"audio.npy"], fields[b"teacher.npy"], fields[b"meta.json"]
        except KeyError as missing:
            raise ShardError(f"{_who(where, key)} has no {missing.args[0].decode()}; the shard is not in the StreamApprox "
                             "schema.") from None
        try:
            info = _JSON.decode(str(meta, "utf-8"))
        except ValueError:
            try:  # what WebDataset's decoder accepts besides plain UTF-8 (a BOM, UTF-16/32)
                info = json.loads(bytes(meta))
            except ValueError as exc:
                raise ShardError(f"{_who(where, key)} meta.json is not valid JSON ({exc}).") from None
        has_audio = info.get("has_audio") if isinstance(info, dict) else None
        if not isinstance(has_audio, bool):
            raise ShardError(f"{_who(where, key)} meta.json has_audio must be true or false, got {has_audio!r}.")
        return (has_audio, self.array(b"clip.npy", clip, where, key), self.array(b"audio.npy", audio, where, key),
                self.array(b"teacher.npy", teacher, where, key))

    def array(self, field: bytes, data: memoryview, where: str, key: bytes) -> bytes:
        """The C-order data of a .npy member, checked against the schema's dtype and the manifest's dims. Copied out of the
        map: bytes are invisible to Python's garbage collector and views are not, so a shuffle buffer of views would set off
        full collections (the first epoch ran at half speed) and pin the mapped pages besides."""
        header, size, shape, fortran, plain = self.last[field]
        if len(data) != size or data[: len(header)] != header:
            header, size, shape, fortran, plain = self.last[field] = self.layout(field, data, where, key)
        body = data[len(header) :]
        if plain:
            return bytes(body)
        array = np.frombuffer(body, _NPY_DTYPES[field])
        array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)  # as np.load lays out a Fortran-order array
        if field == b"audio.npy":  # per-example VGGish embeddings -> pooled, the float16 mean _sample_arrays takes
            array = array.mean(axis=0)
        return array.tobytes()

    def layout(self, field: bytes, data: memoryview, where: str, key: bytes) -> tuple[bytes, int, tuple, bool, bool]:
        name = field.decode()
        if len(data) < 10 or data[:6] != _NPY_MAGIC:
            raise ShardError(f"{_who(where, key)} {name} is not a .npy array.")
        header = bytes(data[: 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")])
        if header not in self.checked[field]:
            self.checked[field][header] = self.check(field, name, header, where, key)
        size, shape, fortran, plain = self.checked[field][header]
        if len(data) != size:
            raise ShardError(f"{_who(where, key)} {name} holds {len(data)} bytes, its .npy header says {size} (a truncated member?).")
        return header, size, shape, fortran, plain

    def check(self, field: bytes, name: str, header: bytes, where: str, key: bytes) -> tuple[int, tuple, bool, bool]:
        """(member size, shape, Fortran order, plain: the data need no reshaping) of a header that matches the schema's
        dtype and the manifest's dims."""
        stream = io.BytesIO(header)
        try:
            version = np.lib.format.read_magic(stream)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(stream)
        except ValueError as exc:
            raise ShardError(f"{_who(where, key)} {name} has an unreadable .npy header ({exc}).") from None
        if dtype != _NPY_DTYPES[field]:
            raise ShardError(f"{_who(where, key)} {name} is {dtype.str}, the schema says {_NPY_DTYPES[field].str}.")
        d, shape = self.dims, tuple(shape)
        if field == b"clip.npy" and shape != (d.frames, d.clip):
            raise ShardError(f"{_who(where, key)} clip.npy has shape {shape}, manifest dims say {(d.frames, d.clip)}.")
        if field == b"audio.npy" and (shape[1:] if len(shape) == 2 else shape) != (d.audio,):
            raise ShardError(f"{_who(where, key)} audio.npy has {shape[-1:]} features, manifest dims say {d.audio}.")
        if field == b"teacher.npy" and shape != (d.teacher,):
            raise ShardError(f"{_who(where, key)} teacher.npy has shape {shape}, manifest dims say {(d.teacher,)}.")
        plain = len(shape) == 1 or (field == b"clip.npy" and not fortran)
        return len(header) + int(np.prod(shape)) * dtype.itemsize, shape, fortran, plain


def _packed_fields(dims: Dims, n: int) -> tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]:
    """A packed batch's fields in order: the int64 first and the float32 before the float16 keep every view aligned."""
    return (("index", torch.int64, (n,)), ("teacher", torch.float32, (n, dims.teacher)),
            ("clip", torch.float16, (n, dims.frames, dims.clip)), ("audio", torch.float16, (n, dims.audio)), ("has_audio", torch.bool, (n,)))


def _collate(dims: Dims, items: list[tuple]) -> torch.Tensor:
    """A batch packed in one buffer (fields in ``_packed_fields`` order) -- one join of every member's bytes, as stored
    (inputs float16) -- so that from a DataLoader worker it crosses to the trainer as one shared-memory block and one
    file descriptor, not one per field."""
    index, has_audio, clip, audio, teacher = zip(*items)
    packed = bytearray().join((np.array(index, dtype=np.int64).tobytes(), *teacher, *clip, *audio, bytes(has_audio)))
    batch = torch.frombuffer(packed, dtype=torch.uint8)
    return batch.share_memory_() if torch.utils.data.get_worker_info() is not None else batch


def _unpacked(dims: Dims, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """A packed batch as the memory path's batch: float32 inputs, the rest views of the buffer."""
    n = batch.numel() // (8 + 4 * dims.teacher + 2 * (dims.frames * dims.clip + dims.audio) + 1)
    fields, at = {}, 0
    for name, dtype, shape in _packed_fields(dims, n):
        size = int(np.prod(shape)) * dtype.itemsize
        fields[name] = batch[at : at + size].view(dtype).view(shape)
        at += size
    return {"clip": fields["clip"].float(), "audio": fields["audio"].float(), "has_audio": fields["has_audio"],
            "teacher": fields["teacher"], "index": fields["index"]}


class _EpochBatches(torch.utils.data.IterableDataset):
    """One rank's stream of packed batches, built anew each time a DataLoader worker (re)starts iterating, for the epoch
    set in shared memory: the workers persist across epochs instead of being forked again for each (~50-150 ms).

    Every pass over a worker's shards is seeded by the epoch alone (a resumed epoch replays it), and passes repeat, so a
    worker never runs dry; it stops after its round-robin share of the epoch's batches (the DataLoader takes batch b from
    worker b % workers), so no worker decodes batches the epoch will not use."""

    def __init__(self, paths: list[str], decoder: _StreamDecoder, dims: Dims, batch_size: int, shuffle_buffer: int, seed: int,
                 batches: int):
        super().__init__()
        self.paths, self.decoder, self.dims = paths, decoder, dims
        self.batch_size, self.shuffle_buffer, self.seed, self.batches = batch_size, shuffle_buffer, seed, batches
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[torch.Tensor]:
        seed = self.seed + int(self.epoch) * 101
        info = torch.utils.data.get_worker_info()
        share = len(range(info.id, self.batches, info.num_workers)) if info is not None else self.batches
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.paths),
            wds.split_by_worker,
            wds.shuffle(len(self.paths), seed=seed),
            self.decoder,
            wds.shuffle(self.shuffle_buffer, seed=seed),
            wds.batched(self.batch_size, collation_fn=partial(_collate, self.dims), partial=False),
        ).repeat()
        return islice(iter(pipeline), share)


def read_shard(shards: ShardSet, entry: ShardEntry) -> list[ShardSample]:
    """Every sample of one (verified) shard, in stored order."""
    path = shards.root / entry.name
    samples = [ShardSample(sample["__key__"], *_sample_arrays(sample, shards.dims, str(path)), sample["meta.json"])
               for sample in _decoded([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None)]
    if len(samples) != entry.samples:
        raise ShardError(f"{path}: {len(samples)} samples, manifest.json declares {entry.samples}; re-copy or regenerate it.")
    return samples


def load_split(shards: ShardSet, split: str) -> SplitTensors:
    """Decode a whole split once into tensors, through the stream path's decoder (each shard's sample count, every
    member's schema and dims checked as it reads; ~10x WebDataset's tarfile and np.load)."""
    paths, entries, d = shards.paths(split), shards.manifest.shards_of(split), shards.dims
    count = sum(entry.samples for entry in entries)
    clip = np.empty((count, d.frames * d.clip), np.float16)
    audio = np.empty((count, d.audio), np.float16)
    has_audio = np.empty((count,), bool)
    teacher = np.empty((count, d.teacher), np.float32)
    keys: list[str] = []
    decoder = _StreamDecoder(d, {path: (0, entry.samples) for path, entry in zip(paths, entries)})
    for path in paths:
        for key, (audible, clip_bytes, audio_bytes, teacher_bytes) in decoder.keyed(path):
            i = len(keys)
            clip[i], audio[i] = np.frombuffer(clip_bytes, np.float16), np.frombuffer(audio_bytes, np.float16)
            has_audio[i], teacher[i] = audible, np.frombuffer(teacher_bytes, np.float32)
            keys.append(key.decode())
    return SplitTensors(keys, torch.from_numpy(clip).view(count, d.frames, d.clip), torch.from_numpy(audio),
                        torch.from_numpy(has_audio), torch.from_numpy(teacher))


class TrainBatches:
    """One rank's training batches; ``len()`` is the same on every rank by construction."""

    def __init__(
        self,
        shards: ShardSet,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        mode: str = "auto",
        cache_max_gb: float = 4.0,
        num_workers: int = 0,
        shuffle_buffer: int = 2000,
    ):
        self.shards, self.split, self.batch_size = shards, split, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        total = shards.manifest.splits.get(split, 0)
        self.batches_per_epoch = total // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ShardError(
                f"split {split!r} has {total} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes); lower data.batch_size."
            )
        needed_gb = total * shards.dims.decoded_bytes_per_sample() / 1e9
        self.mode = mode if mode != "auto" else ("memory" if needed_gb <= cache_max_gb else "stream")
        if self.mode == "memory":
            self.tensors = load_split(shards, split)
        else:
            self._check_streamable()
            paths, entries = shards.paths(split), shards.manifest.shards_of(split)
            firsts = np.cumsum([0] + [entry.samples for entry in entries])
            decoder = _StreamDecoder(shards.dims, {path: (int(first), entry.samples) for path, first, entry in zip(paths, firsts, entries)})
            self._stream = _EpochBatches(paths[rank::world_size], decoder, shards.dims, batch_size, shuffle_buffer,
                                         seed * 1_000_003 + rank, self.batches_per_epoch)
            # fresh worker processes, not forks of a trainer whose other threads may hold locks (see jobs/prepare.py)
            self._loader = wds.WebLoader(self._stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                                         multiprocessing_context="spawn" if num_workers else None).with_epoch(self.batches_per_epoch)
            self._streaming: object | None = None  # the epoch iterating the loader now
        log.info("train data: %s mode, %d samples, %d batches/epoch/rank", self.mode, total, self.batches_per_epoch)

    def _check_streamable(self) -> None:
        workers = max(1, self.num_workers)
        entries = self.shards.manifest.shards_of(self.split)
        if len(entries) < self.world_size * workers:
            raise ShardError(
                f"split {self.split!r} has {len(entries)} shards but streaming needs at least one per reader "
                f"({self.world_size} processes x {workers} workers); write smaller shards, "
                "use fewer workers, or set data.cache=memory."
            )
        rank_entries = entries[self.rank :: self.world_size]
        if max(sum(entry.samples for entry in rank_entries[w::workers]) for w in range(workers)) < self.batch_size:
            raise ShardError(
                f"split {self.split!r}: no reader of process {self.rank} holds a whole batch ({self.batch_size}) in its shards, so its "
                "batches would run out; lower data.batch_size, use fewer workers, or set data.cache=memory."
            )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one epoch for this rank, skipping the first ``start`` (mid-epoch resume)."""
        if self.mode == "memory":
            yield from self._memory_epoch(epoch, start)
        else:
            yield from self._stream_epoch(epoch, start)

    def _memory_epoch(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.tensors), generator=generator)
        global_batch = self.batch_size * self.world_size
        for b in range(start, self.batches_per_epoch):
            offset = b * global_batch + self.rank * self.batch_size
            yield self.tensors.batch(order[offset : offset + self.batch_size])

    def _stream_epoch(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        self._stream.epoch.fill_(epoch)
        token = self._streaming = object()
        try:
            for b, batch in enumerate(self._loader):
                if self._streaming is not token:
                    raise RuntimeError("a streamed TrainBatches serves one epoch at a time: another epoch started while this one was read.")
                if b >= start:
                    yield _unpacked(self.shards.dims, batch)
        except ShardError as exc:
            if self.num_workers == 0:
                raise
            exc.__traceback__ = None  # its frames hold the DataLoader in a cycle: only a gc would stop the workers, 5 s each
            raise ShardError(str(exc).rsplit("ShardError: ", 1)[-1].strip()) from None  # the worker's message, not its traceback
