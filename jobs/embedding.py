"""Student embeddings of a split: in batches on one device, or spread over ranks and gathered back in order."""
from __future__ import annotations

import math

import torch

from data_shards import SplitTensors


def to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The batch on ``device``; with ``dtype``, its float tensors in it (a DeepSpeed engine in bf16/fp16 holds its
    weights so, and no autocast casts the inputs for it)."""
    return {key: value.to(device, dtype if dtype is not None and value.is_floating_point() else None, non_blocking=True)
            for key, value in batch.items()}


@torch.no_grad()
def embed_indices(embed, tensors: SplitTensors, indices: torch.Tensor, batch_size: int, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``embed(batch)`` over the given rows of a split, in batches, as float32."""
    chunks = [embed(to_device(tensors.batch(indices[i : i + batch_size]), device, dtype)).float()
              for i in range(0, len(indices), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def embed_split(model, tensors: SplitTensors, accelerator, batch_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Student embeddings of a whole split, the work spread over ranks and gathered back in order."""
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    n = len(tensors)
    per_rank = math.ceil(n / world)
    mine = torch.arange(rank, per_rank * world, world).clamp(max=n - 1)  # padding repeats the last item
    local = embed_indices(lambda batch: model(batch, with_loss=False), tensors, mine, batch_size, accelerator.device, dtype)
    gathered = accelerator.gather(local)  # [world * per_rank, D] ordered rank-major
    order = gathered.view(world, per_rank, -1).transpose(0, 1).reshape(world * per_rank, -1)
    return order[:n].cpu()
