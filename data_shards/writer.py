"""Write a shard set: WebDataset tar shards per split plus a manifest with per-shard sha256.

The set is written into a staging directory and renamed into place only when complete, so a
crash never leaves something that looks like a finished shard set.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_shards.errors import ShardError
from data_shards.manifest import Manifest, ShardEntry, sha256_file
from data_shards.schema import META_FIELDS, TEACHER_NORM_TOLERANCE, Dims

if TYPE_CHECKING:
    import webdataset as wds


def sample_record(dims: Dims, key: str, clip: np.ndarray, audio: np.ndarray, teacher: np.ndarray, meta: dict) -> dict:
    """One sample as WebDataset fields, after checking it against the set's dims and the schema."""
    audio_shape = (dims.audio,) if dims.audio_examples is None else (dims.audio_examples, dims.audio)
    for name, array, shape in (("clip", clip, (dims.frames, dims.clip)), ("audio", audio, audio_shape), ("teacher", teacher, (dims.teacher,))):
        if tuple(array.shape) != shape:
            raise ShardError(f"sample {key!r}: {name} has shape {tuple(array.shape)}, the shard set's dims say {shape}.")
    norm = float(np.linalg.norm(teacher.astype(np.float64)))
    if abs(norm - 1.0) > TEACHER_NORM_TOLERANCE:
        raise ShardError(f"sample {key!r}: teacher norm is {norm:.4f}; teacher targets must be L2-normalized.")
    missing = [name for name in META_FIELDS if name not in meta]
    if missing:
        raise ShardError(f"sample {key!r}: meta.json lacks {missing}.")
    return {"__key__": key, "clip.npy": np.asarray(clip, dtype=np.float16), "audio.npy": np.asarray(audio, dtype=np.float16),
            "teacher.npy": np.asarray(teacher, dtype=np.float32), "meta.json": meta}


class ShardSetWriter:
    """``with ShardSetWriter(root, dims) as w: w.write(split, key, clip, audio, teacher, meta)``."""

    def __init__(
        self,
        root: str | Path,
        dims: Dims,
        *,
        encoders: dict | None = None,
        source: dict | None = None,
        samples_per_shard: int = 1000,
        overwrite: bool = False,
        mtime: float | None = None,
        name_prefix: str = "",
    ):
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()) and not overwrite:
            raise ShardError(f"{self.root}: already exists and is not empty; choose another --out or pass overwrite.")
        self.dims = dims
        self.encoders = encoders or {}
        self.source = source or {}
        self.samples_per_shard = samples_per_shard
        self.mtime = mtime  # a fixed mtime makes byte-identical (reproducible) tar shards
        self.name_prefix = name_prefix  # keeps shard names unique when slices written apart are merged
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", suffix=".partial", dir=self.root.parent))
        self._writers: dict[str, wds.ShardWriter] = {}
        self._entries: list[ShardEntry] = []
        self._keys: set[str] = set()

    def _writer_for(self, split: str) -> wds.ShardWriter:
        """WebDataset's writer, imported at the first sample: webdataset imports torch, which a job's ``--check`` (it
        opens the synthetic default through this module) should not pay for."""
        import webdataset as wds

        if split not in self._writers:
            pattern = str(self.staging / f"{self.name_prefix}{split}-%06d.tar")
            writer = wds.ShardWriter(pattern, maxcount=self.samples_per_shard, verbose=0, mtime=self.mtime)
            writer.post = lambda fname, split=split, writer=writer: self._record(fname, split, writer.count)
            self._writers[split] = writer
        return self._writers[split]

    def _record(self, fname: str, split: str, samples: int) -> None:
        path = Path(fname)
        self._entries.append(
            ShardEntry(name=path.name, split=split, samples=samples, bytes=path.stat().st_size, sha256=sha256_file(path))
        )

    def write(self, split: str, key: str, clip: np.ndarray, audio: np.ndarray, teacher: np.ndarray, meta: dict) -> None:
        if key in self._keys:
            raise ShardError(f"sample {key!r}: duplicate video id.")
        self._keys.add(key)
        self._writer_for(split).write(sample_record(self.dims, key, clip, audio, teacher, meta))

    def close(self) -> Manifest:
        for writer in self._writers.values():
            writer.close()
        manifest = Manifest(
            dims=self.dims,
            shards=sorted(self._entries, key=lambda entry: entry.name),
            encoders=self.encoders,
            source=self.source,
        )
        manifest.write(self.staging)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.staging.rename(self.root)
        return manifest

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.manifest = self.close()
        else:
            self.abort()
