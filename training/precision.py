"""A run's precision: the compute dtype and Muon's, measured on CPU rather than assumed.

bf16 autocast is faster than fp32 on CPUs with AVX-512 BF16 or AMX once the matmuls are big
enough, slower at tiny sizes, and far slower on CPUs without native bf16 (AVX2 only, where it
is emulated). So ``choose_precision`` asks the per-model probe here only after runtime/cpu.py's
matmul probe found bf16 faster at all (oneDNN's "bf16 supported" flag is True even where bf16
is emulated, so it is a necessary condition here, never a sufficient one); ``dtype=auto``
then times both on a throwaway copy of the model.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from runtime.cpu import CpuProbe, probe_cpu
from runtime.device import resolve_dtype, resolve_muon_dtype
from training.config import TrainConfig
from training.distributed import Dist, any_rank

CPU_FACTS = ("cpu", "cpu_flags", "matmul_gflops", "probe_seconds")  # what a resumed run's record carries over


@dataclass(frozen=True)
class Precision:
    """The dtypes a run computes in, and the CPU facts they were chosen from."""

    dtype: torch.dtype  # compute (autocast's)
    muon_dtype: str  # Muon's orthogonalisation
    cpu_facts: dict[str, Any]  # the probe's findings, or those a resumed run recorded
    cpu_summary: str  # for the start-up line


def choose_precision(cfg: TrainConfig, state: dict[str, Any] | None, model: torch.nn.Module, device: str,
                     dist: Dist) -> Precision:
    """The dtype rules (runtime/device.py), fed on CPU by the start-up probe (runtime/cpu.py).

    A resumed run keeps its choices, for exactness; every rank must choose alike (DDP keeps
    one set of weights), so bf16 is used only if all ranks measured it faster.
    """
    kept = kept_choices(state)
    resumed = {"dtype", "muon_dtype"} <= kept.keys()
    probe = probe_cpu() if device.split(":")[0] == "cpu" and not resumed else None
    dtype = resolve_dtype(cfg.dtype, device, cpu_bf16_pays=lambda: _bf16_computes_faster(kept, probe, model, cfg,
                                                                                         dist))
    muon_dtype = resolve_muon_dtype(device, cpu_bf16_faster=lambda: _bf16_orthogonalises_faster(kept, probe, dist))
    if probe is not None:
        return Precision(dtype, muon_dtype, probe.as_dict(), probe.summary())
    facts = {k: v for k, v in kept.items() if k in CPU_FACTS}
    return Precision(dtype, muon_dtype, facts, f"{facts.get('cpu', 'this CPU')}; choices kept from the resumed run")


def kept_choices(state: dict[str, Any] | None) -> dict[str, Any]:
    """The choices a resumed run recorded (its ``resolved`` section), None values left out; {} for a new run."""
    kept = dict((state or {}).get("resolved") or {})
    if state is not None:
        kept.setdefault("dtype", state.get("dtype"))
        # a state without it was written with torch.optim.Muon, which orthogonalises in bf16
        kept.setdefault("muon_dtype", "bfloat16")
        kept = {k: v for k, v in kept.items() if v is not None}
    return kept


def _everywhere(dist: Dist, flag: bool) -> bool:
    """True on every rank if ``flag`` is True on every rank (a collective: all ranks must ask)."""
    return not any_rank(dist, not flag)[0]


def _bf16_computes_faster(kept: dict[str, Any], probe: CpuProbe | None, model: torch.nn.Module, cfg: TrainConfig,
                          dist: Dist) -> bool:
    """bf16 autocast: only where bf16 matmuls are faster, then if this model gains."""
    if "dtype" in kept:
        return kept["dtype"] == "bfloat16"
    return _everywhere(dist, probe.bf16_matmul_faster and cpu_bf16_pays(model, cfg.batch_size, cfg.block_size))


def _bf16_orthogonalises_faster(kept: dict[str, Any], probe: CpuProbe | None, dist: Dist) -> bool:
    if "muon_dtype" in kept:
        return kept["muon_dtype"] == "bfloat16"
    return _everywhere(dist, probe.bf16_ortho_faster)


def cpu_bf16_pays(model: torch.nn.Module, batch_size: int, block_size: int, trials: int = 4) -> bool:
    """Time forward+backward of a throwaway copy of ``model`` in fp32 and in bf16 autocast.

    Whether bf16 pays depends on the CPU and on the matmuls' size, which the batch and model set:
    small shapes can lose where larger ones gain (docs/BENCHMARKS.md), so the choice is measured
    per run rather than guessed. The probe runs under fork_rng,
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
