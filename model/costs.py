"""Measured costs, never typed in: parameters, FLOPs from torch's flop counter, wall time with
warm-up and repeats.

FLOPs follow ``torch.utils.flop_counter``: a multiply-add counts 2 (FLOPs = 2 x MACs); matmuls,
convolutions and attention (as its two matmuls) are counted, elementwise work (norms, activations,
softmax) is not.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (everything torch dispatches inside it). Fused attention kernels (the
    ``nn.MultiheadAttention`` fast path, CPU flash attention) have no counting formula and would count 0,
    so attention runs as plain matmuls while counting: the count is the same on every device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    repeats: int

    def __str__(self) -> str:
        return f"{self.median_s * 1e3:.1f} ms (median of {self.repeats}, min {self.min_s * 1e3:.1f})"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, budget_s: float | None = None) -> Timing:
    """Wall time of ``fn``: ``warmup`` untimed calls, then the median of ``repeats`` (CUDA synchronised).
    With ``budget_s``, repeats stop once another would overrun it (at least one is always timed)."""
    began = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize()
    times: list[float] = []
    while len(times) < repeats:
        if times and budget_s is not None and time.perf_counter() - began + statistics.median(times) > budget_s:
            break
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), len(times))
