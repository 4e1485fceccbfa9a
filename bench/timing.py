"""Timing helpers shared by the benchmarks: medians of repeated runs, and the matmul peak."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` over ``runs`` calls, after one untimed warm-up call
    (lazy imports, allocator growth, kernel selection and page cache all land in the warm-up)."""
    return interleaved_medians({"fn": fn}, runs)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int, warmup: bool = True) -> dict[str, float]:
    """Median wall time of each function over ``runs`` rounds, each round timing every function
    once in turn, so a change in machine load mid-benchmark hits every contender alike rather
    than whichever was running. ``warmup`` first calls each function once, untimed."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, median of ``runs``: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs)


def cpu_description() -> str:
    """The CPU's model name and the flags that decide which kernels are fast, for every benchmark table."""
    from runtime.cpu import cpu_info

    info = cpu_info()
    return f"{info.model}; {torch.get_num_threads()} threads; flags: {info.shown_flags()}; torch {torch.__version__}"
