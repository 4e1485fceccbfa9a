"""Which device to run on: one rule for train.py and sample.py.

torch is imported inside the function, so programs that check their options before
importing torch (sample.py) stay quick to fail on bad input.
"""

from __future__ import annotations

from options import UsageError


def resolve_device(name: str, local_rank: int = 0) -> str:
    """auto -> cuda (this process's GPU under torchrun), else mps, else cpu; refuse an absent device."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{local_rank}"
        return "mps" if mps else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device={name}, but this torch build sees no CUDA GPU; use --device=cpu (or auto)")
    if name == "mps" and not mps:
        raise UsageError("--device=mps, but MPS is not available here; use --device=cpu (or auto)")
    if name == "cuda":
        return f"cuda:{local_rank}"
    return name
