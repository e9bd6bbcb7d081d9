"""Read a shard set: verify it against its manifest, decode splits once into tensors, and serve
per-rank batches in which every rank gets the same number of batches (so DDP never hangs).

Two training paths, chosen by size:
- memory: the split is decoded once into tensors; every epoch is a seeded permutation of indices,
  so later epochs run at in-memory speed and a resumed epoch replays exactly.
- stream: shards are split across ranks and DataLoader workers (WebDataset), repeated and cut to
  the same batch count on every rank with ``with_epoch``. For splits larger than memory.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from data_shards.errors import ShardError
from data_shards.manifest import MANIFEST_NAME, Manifest, ShardEntry, sha256_file
from data_shards.schema import Dims

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


class ShardSet:
    """A verified shard set on local disk; ``splits`` limits what this process may read (None: all).
    ``sources`` is set on a set checked by its manifests alone, whose shards stay in Kaggle kernels' outputs."""

    def __init__(self, root: Path, manifest: Manifest, splits: tuple[str, ...] | None = None, sources: list[dict] | None = None):
        self.root = root
        self.manifest = manifest
        self.splits = splits
        self.sources = sources

    @property
    def dims(self) -> Dims:
        return self.manifest.dims

    def digest(self) -> str:
        return self.manifest.digest()

    def paths(self, split: str) -> list[str]:
        if self.splits is not None and split not in self.splits:
            raise ShardError(f"{self.root}: split {split!r} is withheld from this process (it may read {', '.join(self.splits)} only).")
        entries = self.manifest.shards_of(split)
        if not entries:
            raise ShardError(
                f"{self.root / MANIFEST_NAME}: no shards for split {split!r} (splits present: {sorted(self.manifest.splits)})."
            )
        return [str(self.root / entry.name) for entry in entries]

    def verify(self) -> None:
        """Check every readable shard's presence, size and sha256 against the manifest."""
        for entry in self.manifest.shards:
            if self.splits is not None and entry.split not in self.splits:
                continue
            path = self.root / entry.name
            if not path.is_file():
                raise ShardError(f"{path}: shard listed in manifest.json is missing; re-copy or regenerate the shard set.")
            size = path.stat().st_size
            if size != entry.bytes:
                raise ShardError(
                    f"{path}: {size} bytes, manifest.json says {entry.bytes} (truncated or partly copied?); "
                    "re-copy the shard or regenerate the set."
                )
            if sha256_file(path) != entry.sha256:
                raise ShardError(
                    f"{path}: sha256 does not match manifest.json (corrupted shard); re-copy the shard or regenerate the set."
                )

    def read_shard(self, entry: ShardEntry) -> list[ShardSample]:
        """Every sample of one (verified) shard, in stored order."""
        path = self.root / entry.name
        samples = [ShardSample(sample["__key__"], *_sample_arrays(sample, self.dims, str(path)), sample["meta.json"])
                   for sample in _decoded([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None)]
        if len(samples) != entry.samples:
            raise ShardError(f"{path}: {len(samples)} samples, manifest.json declares {entry.samples}; re-copy or regenerate it.")
        return samples

    def load_split(self, split: str) -> SplitTensors:
        """Decode a whole split once into tensors."""
        count = self.manifest.splits.get(split, 0)
        paths = self.paths(split)
        d = self.dims
        clip = np.empty((count, d.frames, d.clip), np.float16)
        audio = np.empty((count, d.audio), np.float16)
        has_audio = np.empty((count,), bool)
        teacher = np.empty((count, d.teacher), np.float32)
        keys: list[str] = []
        for path in paths:
            for sample in _decoded([path], shardshuffle=False, nodesplitter=None, workersplitter=None):
                i = len(keys)
                if i >= count:
                    raise ShardError(f"{path}: more samples than manifest.json declares for split {split!r} ({count}).")
                clip[i], audio[i], has_audio[i], teacher[i] = _sample_arrays(sample, d, path)
                keys.append(sample["__key__"])
        if len(keys) != count:
            raise ShardError(f"split {split!r}: decoded {len(keys)} samples, manifest.json declares {count}.")
        return SplitTensors(keys, torch.from_numpy(clip), torch.from_numpy(audio), torch.from_numpy(has_audio), torch.from_numpy(teacher))


def open_root(root: Path, verify: bool = True, splits: tuple[str, ...] | None = None, partial: bool = False) -> ShardSet:
    """Open the shard set in ``root`` (a folder here) and verify its digests.

    With ``splits``, only those splits are verified and readable: a sweep's trials open the set this
    way, so the test split cannot influence model selection. An unfinished extraction (one worker's
    slice) opens only with ``partial`` (for merging): nobody trains on part of a dataset by mistake."""
    if not root.is_dir():
        raise ShardError(f"{root}: shard directory not found. Generate one with `data_shards synthetic --out {root}` or point data.shards at an existing set.")
    manifest = Manifest.read(root)
    if not partial and not manifest.source.get("complete", True):
        done, planned = len(manifest.source["done"]), len(manifest.source["plan"]["shards"])
        raise ShardError(f"{root}: an unfinished extraction ({done} of {planned} planned shards). Finish it by rerunning the same "
                         "extract command (or the missing workers), or join slices written apart with `data_shards merge`.")
    shards = ShardSet(root, manifest, splits)
    if verify:
        shards.verify()
    return shards


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
            self.tensors = shards.load_split(split)
        else:
            self._check_streamable()
        log.info("train data: %s mode, %d samples, %d batches/epoch/rank", self.mode, total, self.batches_per_epoch)

    def _check_streamable(self) -> None:
        readers = self.world_size * max(1, self.num_workers)
        shard_count = len(self.shards.paths(self.split))
        if shard_count < readers:
            raise ShardError(
                f"split {self.split!r} has {shard_count} shards but streaming needs at least one per reader "
                f"({self.world_size} processes x {max(1, self.num_workers)} workers); write smaller shards, "
                "use fewer workers, or set data.cache=memory."
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
        dims, bs = self.shards.dims, self.batch_size
        rank_paths = self.shards.paths(self.split)[self.rank :: self.world_size]

        def collate(items: list[tuple]) -> dict[str, torch.Tensor]:
            clip, audio, has_audio, teacher = zip(*items)
            return {
                "clip": torch.from_numpy(np.stack(clip)).float(),
                "audio": torch.from_numpy(np.stack(audio)).float(),
                "has_audio": torch.tensor(has_audio),
                "teacher": torch.from_numpy(np.stack(teacher)),
            }

        seed = self.seed * 1_000_003 + epoch * 101 + self.rank
        dataset = (
            _decoded(rank_paths, shardshuffle=len(rank_paths), nodesplitter=None, repeat=True, seed=seed)
            .shuffle(self.shuffle_buffer, seed=seed)
            .map(lambda sample: _sample_arrays(sample, dims, sample.get("__url__", self.split)))
            .batched(bs, collation_fn=collate, partial=False)
        )
        loader = wds.WebLoader(dataset, batch_size=None, num_workers=self.num_workers).with_epoch(self.batches_per_epoch)
        for b, batch in enumerate(loader):
            if b >= start:
                yield batch
