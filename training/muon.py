"""Muon: momentum, then an orthogonalised update, for the hidden 2-D matrices of a network.

The same algorithm as ``torch.optim.Muon`` (Keller Jordan's Muon, as torch 2.13 implements it):
Nesterov-style momentum kept as an EMA, five Newton-Schulz quintic steps with the same
coefficients and eps, decoupled weight decay, and the lr scaled by sqrt(max(1, rows/cols)).
What differs is one argument, ``ortho_dtype``: torch always orthogonalises in bfloat16, which
is fast on GPUs and on CPUs with native bf16 (AVX-512 BF16, AMX) but emulated, and far slower
than fp32, on CPUs without it (AVX2 only), where Muon's step would cost more than the rest of
training. training/precision.py picks the dtype from a start-up probe (runtime/cpu.py,
runtime/device.py).

The state dict has torch's layout (a ``momentum_buffer`` per parameter), so checkpoints
written with ``torch.optim.Muon`` load here; ``ortho_dtype`` is kept in each param group.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

# Keller Jordan's quintic coefficients and eps, as torch.optim.Muon uses them
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
ORTHO_DTYPES = ("bfloat16", "float32", "float64")


def newton_schulz(g: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS) -> torch.Tensor:
    """An approximate orthogonalisation of ``g`` (~ U Vᵀ of its SVD), computed in ``dtype``: one
    2-D matrix (rows, cols), or a stack (n, rows, cols) of same-shape matrices, each on its own.

    The quintic X <- aX + (bA + cA²)X with A = XXᵀ pushes every singular value towards ~1
    (into roughly [0.7, 1.2]: it trades exactness for speed, which does not hurt training).
    Working on the wide orientation keeps A = XXᵀ the smaller of the two Gram matrices. A stack
    runs as batched matmuls: on a CPU a few large calls beat many small ones by about 2x.
    """
    a, b, c = coefficients
    x = g.to(dtype, copy=True)  # a copy even when g is already in dtype: it is scaled in place next
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)  # (1, rows, cols)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x.div_(x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps))  # Frobenius >= spectral norm: singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, rows, rows)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # bA + cA²
        x = torch.baddbmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
    if tall:
        x = x.mT
    return x[0] if single else x


def lr_scale(shape: torch.Size) -> float:
    """sqrt(max(1, rows / cols)): torch's default ("original") adjustment, so tall and wide
    matrices get updates of the same RMS per element."""
    rows, cols = shape[:2]
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; ``ortho_dtype`` is the dtype of the Newton-Schulz iteration."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ortho_dtype: str = "bfloat16", ns_steps: int = NS_STEPS,
                 eps: float = EPS) -> None:
        if lr < 0 or weight_decay < 0 or momentum < 0:
            raise ValueError(f"Muon needs lr, weight_decay and momentum >= 0, got {lr}, {weight_decay}, {momentum}")
        if ortho_dtype not in ORTHO_DTYPES:
            raise ValueError(f"ortho_dtype must be one of {', '.join(ORTHO_DTYPES)}, got {ortho_dtype!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ortho_dtype=ortho_dtype, ns_steps=ns_steps, eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes only 2-D parameters, got one of shape {tuple(p.shape)}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A state dict saved by ``torch.optim.Muon`` has no ortho_dtype: it orthogonalised in bf16."""
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("ortho_dtype", "bfloat16")
            group.setdefault("ns_steps", NS_STEPS)
            group.setdefault("eps", EPS)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            dtype = getattr(torch, group["ortho_dtype"])
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # allocated once; setdefault would build a zero tensor every step
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)  # buf = mu * buf + (1 - mu) * g
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf  # Nesterov: look one step ahead
                by_shape.setdefault(p.shape, []).append((p, update))
            # every layer's matrices of one shape are orthogonalised together, as one stack
            for shape, pairs in by_shape.items():
                updates = newton_schulz(torch.stack([u for _, u in pairs]), dtype, group["ns_steps"], eps=group["eps"])
                for (p, _), update in zip(pairs, updates):
                    p.mul_(1 - lr * wd)  # decoupled weight decay, with the unscaled lr (as torch)
                    p.add_(update, alpha=-lr * lr_scale(shape))
        return loss
