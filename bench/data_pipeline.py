"""Samples/s of the training data path (shards -> per-rank batches) against the same tensors
already in memory, measured side by side in one run. Target: ratio >= 0.9 after the first epoch.

    .venv/bin/python bench/data_pipeline.py [--shards PATH_OR_URL] [--epochs 4] [--batch-size 256]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from data_shards import open_shards
from data_shards.reader import TrainBatches

TARGET = 0.9


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


REF: dict[str, torch.Tensor] = {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="synthetic://msrvtt")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
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

    stream = TrainBatches(shards, "train", args.batch_size, mode="stream")
    n, stream_s = consume(stream.epoch(0))

    print(f"shards {shards.root}  train samples {len(tensors)}  batch {args.batch_size}  torch threads {torch.get_num_threads()}")
    print(f"{'epoch':>5} {'pipeline samples/s':>20} {'in-memory samples/s':>20} {'ratio':>7}")
    for epoch, pipe, ref in rows:
        print(f"{epoch:>5} {pipe:>20,.0f} {ref:>20,.0f} {pipe / ref:>7.3f}")
    later = [pipe / ref for _, pipe, ref in rows[1:]]
    mean_later = sum(later) / len(later) if later else float("nan")
    print(f"streaming WebDataset (no cache), one epoch: {n / stream_s:,.0f} samples/s = {n / stream_s / rows[-1][2]:.3f} x in-memory")
    verdict = "PASS" if mean_later >= TARGET else "FAIL"
    print(f"after the first epoch: mean ratio {mean_later:.3f} (target >= {TARGET}): {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
