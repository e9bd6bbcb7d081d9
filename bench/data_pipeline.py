"""Samples/s of the training data path (shards -> per-rank batches) against the same tensors already in memory,
measured side by side in one run. Targets: the cached path >= 0.9 x in-memory after its first epoch, and uncached
streaming (``mode="stream"``, every epoch counted, worker start-up included) >= 50,000 samples/s. The previous stream
path (WebDataset's tarfile reader + ``.decode()``'s np.load, a tensor per sample) runs too, for the speed-up. The last
line holds both verdicts; the exit code is 0 when both pass.

    .venv/bin/python bench/data_pipeline.py [--shards PATH_OR_URL] [--epochs 4] [--batch-size 256] [--workers 0 2]
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from data_shards import open_shards
from data_shards.reader import TrainBatches, _decoded, _sample_arrays

CACHED_TARGET = 0.9
STREAM_TARGET = 50_000


def consume(batches) -> tuple[int, float]:
    """Touch every tensor of every batch the way a training step would (move + read)."""
    began, samples = time.perf_counter(), 0
    for batch in batches:
        samples += batch["teacher"].shape[0]
        for value in batch.values():
            value.sum()
    return samples, time.perf_counter() - began


def in_memory_reference(tensors, batch_size: int, epoch: int):
    """The floor: plain indexing into float32 tensors that are already decoded and converted."""
    order = torch.randperm(len(tensors), generator=torch.Generator().manual_seed(epoch))
    for b in range(len(tensors) // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield {"clip": REF["clip"][idx], "audio": REF["audio"][idx], "has_audio": REF["has_audio"][idx], "teacher": REF["teacher"][idx], "index": idx}


def previous_stream(shards, batch_size: int):
    """The stream path this one replaced, in-process: tarfile + np.load per member, then np.stack and a tensor per field."""
    dims, paths = shards.dims, shards.paths("train")

    def collate(items: list[tuple]) -> dict[str, torch.Tensor]:
        clip, audio, has_audio, teacher = zip(*items)
        return {"clip": torch.from_numpy(np.stack(clip)).float(), "audio": torch.from_numpy(np.stack(audio)).float(),
                "has_audio": torch.tensor(has_audio), "teacher": torch.from_numpy(np.stack(teacher))}

    return (_decoded(paths, shardshuffle=len(paths), nodesplitter=None, seed=0).shuffle(2000, seed=0)
            .map(lambda sample: _sample_arrays(sample, dims, sample["__url__"])).batched(batch_size, collation_fn=collate, partial=False))


def streamed(shards, batch_size: int, epochs: int, workers: int) -> tuple[int, float]:
    """Every epoch of a stream TrainBatches, its construction and worker start-up included. With workers the trainer runs
    one torch thread: the workers hold the other cores, and an idle OpenMP thread spins against them after every parallel
    op (2 cores, 2 workers: ~58,000 samples/s a steady epoch with 1 trainer thread, 30-40,000 with 2)."""
    threads = torch.get_num_threads()
    if workers:
        torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        loader = TrainBatches(shards, "train", batch_size, mode="stream", num_workers=workers)
        samples = sum(consume(loader.epoch(epoch))[0] for epoch in range(epochs))
        return samples, time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)


REF: dict[str, torch.Tensor] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="synthetic://msrvtt")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the streaming runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    shards = open_shards(args.shards)

    began = time.perf_counter()
    loader = TrainBatches(shards, "train", args.batch_size, mode="memory")
    decode_s = time.perf_counter() - began
    tensors = loader.tensors
    REF.update(clip=tensors.clip.float(), audio=tensors.audio.float(), has_audio=tensors.has_audio, teacher=tensors.teacher)

    rows = []
    for epoch in range(args.epochs):
        n, pipe_s = consume(loader.epoch(epoch))
        if epoch == 0:
            pipe_s += decode_s  # the first epoch pays for decoding the shards
        _, ref_s = consume(in_memory_reference(tensors, args.batch_size, epoch))
        rows.append((epoch, n / pipe_s, n / ref_s))
    reference = sum(ref for _, _, ref in rows) / len(rows)
    n, previous_s = consume(previous_stream(shards, args.batch_size))
    previous = n / previous_s
    streams = [(workers, *streamed(shards, args.batch_size, args.epochs, workers)) for workers in args.workers]

    print(f"shards {shards.root}  train samples {len(tensors)}  batch {args.batch_size}  torch threads {torch.get_num_threads()}")
    print(f"{'epoch':>5} {'pipeline samples/s':>20} {'in-memory samples/s':>20} {'ratio':>7}")
    for epoch, pipe, ref in rows:
        print(f"{epoch:>5} {pipe:>20,.0f} {ref:>20,.0f} {pipe / ref:>7.3f}")
    later = [pipe / ref for _, pipe, ref in rows[1:]]
    cached = sum(later) / len(later) if later else float("nan")
    print(f"streaming, no cache (in-memory reference: {reference:,.0f} samples/s, the mean of its epochs):")
    print(f"  previous stream path, one epoch: {previous:>9,.0f} samples/s = {previous / reference:.3f} x in-memory")
    for workers, n, seconds in streams:
        threads = 1 if workers else torch.get_num_threads()
        print(f"  {workers} DataLoader workers, {args.epochs} epochs ({n} samples, trainer torch threads {threads}): "
              f"{n / seconds:>7,.0f} samples/s = {n / seconds / reference:.3f} x in-memory, {n / seconds / previous:.1f} x the previous path")
    workers, n, seconds = max(streams, key=lambda row: row[1] / row[2])
    stream = n / seconds
    cached_verdict = "PASS" if cached >= CACHED_TARGET else "FAIL"
    stream_verdict = "PASS" if stream >= STREAM_TARGET else "FAIL"
    print(f"cached after the first epoch: mean ratio {cached:.3f} x in-memory (target >= {CACHED_TARGET}): {cached_verdict}; "
          f"streaming ({workers} workers): {stream:,.0f} samples/s = {stream / reference:.3f} x in-memory, {stream / previous:.1f} x the "
          f"previous path (target >= {STREAM_TARGET:,}/s): {stream_verdict}")
    return 0 if cached_verdict == stream_verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
