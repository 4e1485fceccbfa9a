"""What a run resolved from its options and this machine: made once by set-up, then read only.

``record()`` is the ``resolved`` section of config.json, train_state.pt and wandb's config: the
values the run used, not only the options given, so a resume can keep them (exact precision,
the measured CPU facts) and a reader can see what ``auto`` became.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from runtime.device import dtype_name


@dataclass(frozen=True)
class Resolved:
    """The run's device, precision, sharding, threads and throughput facts."""

    device: str  # "cpu", "cuda:1", "mps"
    device_type: str  # the device without its index
    dtype: torch.dtype  # the compute dtype (autocast's; float32: none)
    muon_dtype: str  # the dtype Muon orthogonalises in
    compile: bool
    world_size: int
    fsdp: bool  # sharded: --fsdp under torchrun with two or more processes
    threads: dict[str, Any]  # {"policy": "governor", "max": N} or {"policy": "fixed", "threads": N, "why": ...}
    tokens_per_iter: int  # the global batch
    flops_per_iter: float
    peak: float | None  # one device's peak FLOP/s for MFU; None: unknown
    vocab_size: int  # the data's
    model_vocab_size: int  # the model's (padded)
    n_params: int
    cpu_facts: dict[str, Any]  # the start-up probe's findings (runtime/cpu.py), or a resumed run's
    cpu_summary: str  # the probe's summary for the start-up line

    def record(self) -> dict[str, Any]:
        """The ``resolved`` section of the run folder's files."""
        return {"device": self.device, "dtype": dtype_name(self.dtype), "muon_dtype": self.muon_dtype,
                "compile": self.compile, "world_size": self.world_size, "fsdp": self.fsdp,
                "tokens_per_iter": self.tokens_per_iter, "vocab_size": self.vocab_size,
                "model_vocab_size": self.model_vocab_size, "n_params": self.n_params, "threads": self.threads,
                **self.cpu_facts}


def cpu_line(resolved: Resolved, muon: bool) -> str:
    """'cpu: <model> (<flags>); bf16 matmul X GFLOP/s vs fp32 Y: compute float32, muon float32; threads ...'

    ``muon``: the run has a Muon optimizer (its dtype is shown then).
    """
    shown_muon = f", muon {resolved.muon_dtype}" if muon else ""
    t = resolved.threads
    threads = f"auto (governor, up to {t['max']})" if t["policy"] == "governor" else f"{t['threads']} ({t['why']})"
    return f"cpu: {resolved.cpu_summary}: compute {dtype_name(resolved.dtype)}{shown_muon}; threads {threads}"
