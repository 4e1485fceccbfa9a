"""Which precision pays on this CPU, measured rather than assumed.

bf16 autocast is several times faster than fp32 on CPUs with AVX-512 BF16 or AMX once the
matmuls are big enough, a little slower at tiny sizes, and ~100x slower on CPUs without
native bf16 (AVX2 only). The trainer asks this per-model probe only after runtime/cpu.py's
matmul probe found bf16 faster at all (oneDNN's "bf16 supported" flag is True even where bf16
is emulated, so it is a necessary condition here, never a sufficient one); ``dtype=auto``
then times both on a throwaway copy of the model.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from typing import Any

import torch


def cpu_bf16_pays(model: torch.nn.Module, batch_size: int, block_size: int, trials: int = 4) -> bool:
    """Time forward+backward of a throwaway copy of ``model`` in fp32 and in bf16 autocast.

    bf16 pays on CPUs with AVX-512 BF16 or AMX once the matmuls are big enough; at nanoGPT's
    batch 12 x 64 it measured ~10% slower, at batch 32 ~25% faster (docs/BENCHMARKS.md, speedrun),
    so the choice is measured per run rather than guessed. The probe runs under fork_rng,
    so the training RNG stream (and with it exact resume) is untouched.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    probe = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, probe.config.vocab_size, (batch_size, block_size))

        def best_time(ctx: Any) -> float:
            times = []
            for _ in range(trials):
                t = time.perf_counter()
                with ctx:
                    _, loss = probe(x, x)
                loss.backward()
                times.append(time.perf_counter() - t)
            probe.zero_grad(set_to_none=True)
            return min(times[1:])  # the first call pays one-off allocation and kernel selection

        fp32 = best_time(nullcontext())
        bf16 = best_time(torch.autocast("cpu", dtype=torch.bfloat16))
    return bf16 < 0.95 * fp32
