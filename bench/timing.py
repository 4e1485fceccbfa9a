"""Timing helpers shared by the benchmarks: medians of repeated runs, and the matmul peak."""

from __future__ import annotations

import os
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


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5, budget: float = 0.25) -> float:
    """FLOP/s of an n x n matmul in ``dtype``, median of ``runs``: the machine's practical peak.

    Where ``dtype`` is very slow (bf16 on an AVX2-only CPU runs ~100x below fp32), a 2048^3
    matmul takes seconds and nine of them minutes: the size halves until one matmul fits in
    ``budget`` seconds (down to 256, still far past the small-matrix regime)."""
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t0 = time.perf_counter()
        a[: n // 4] @ b  # a quarter of the work, to judge the size before paying for all of it
        if n <= 256 or 4 * (time.perf_counter() - t0) <= budget:
            break
        n //= 2
    return 2 * n**3 / median_seconds(lambda: a @ b, runs)


def cpu_description() -> str:
    """The CPU's model name and the flags that decide which kernels are fast, for every benchmark table."""
    from runtime.cpu import cpu_info

    info = cpu_info()
    # the kernels torch dispatches to: lower than the flags when forced (ATEN_CPU_CAPABILITY=avx2)
    isa = torch.backends.cpu.get_cpu_capability()
    forced = ", forced by ATEN_CPU_CAPABILITY" if os.environ.get("ATEN_CPU_CAPABILITY") else ""
    return (f"{info.model}; {torch.get_num_threads()} threads; flags: {info.shown_flags()}; "
            f"torch kernels: {isa}{forced}; torch {torch.__version__}")
