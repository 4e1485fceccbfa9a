"""Timing helpers shared by the benchmarks: medians of repeated runs, and the matmul peak."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn`` over ``runs`` calls, after one untimed warm-up call
    (lazy imports, allocator growth, kernel selection and page cache all land in the warm-up)."""
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, median of ``runs``: the machine's practical peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: a @ b, runs)
