"""Optimizers and the learning-rate schedule.

AdamW for everything, or Muon (an orthogonalised momentum update) for the blocks' hidden
matrices with AdamW for the rest, as in modded-nanogpt and nanochat. The schedule is a
multiplier of each group's ``base_lr``, so a resumed run can change the peak.
"""

from __future__ import annotations

import math

import torch

from training.config import TrainConfig
from training.muon import Muon


def configure_optimizers(model: torch.nn.Module, cfg: TrainConfig, device_type: str,
                         muon_dtype: str = "float32") -> list[torch.optim.Optimizer]:
    """AdamW (decay on 2-D params, none on biases/norms), or Muon for the blocks' matrices + AdamW for the rest.

    Embeddings and the head are 2-D but are not hidden matrices: Muon's orthogonalised update
    is meant for linear maps between hidden states, so they stay with AdamW (as in modded-nanogpt).
    ``muon_dtype`` is the dtype Muon orthogonalises in (training/precision.py picks it: bf16 only
    where bf16 matmuls are faster than fp32).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in params if cfg.optimizer == "muon" and p.dim() == 2 and ".h." in f".{n}"]
    muon_ids = {id(p) for p in muon}
    rest = [(n, p) for n, p in params if id(p) not in muon_ids]
    groups = [{"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel over all parameters instead of a loop of small per-tensor ops, whose launch
    # overhead dominates a small model's step; torch has the kernel for CUDA and CPU
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)]
    for g in optimizers[0].param_groups:
        g["base_lr"] = cfg.learning_rate
    if muon:
        m = Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                 ortho_dtype=muon_dtype)
        for g in m.param_groups:
            g["base_lr"] = cfg.muon_lr
        optimizers.append(m)
    return optimizers


def keep_run_settings(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, muon_dtype: str) -> None:
    """After a checkpoint's optimizer states are loaded: each group's base_lr from this run's options (the
    schedule sets lr from it, and a resumed run may change the peak), Muon's dtype the run's recorded choice."""
    for o in optimizers:
        for g in o.param_groups:
            g["base_lr"] = cfg.muon_lr if isinstance(o, Muon) else cfg.learning_rate
            if isinstance(o, Muon):
                g["ortho_dtype"] = muon_dtype


def lr_multiplier(it: int, cfg: TrainConfig) -> float:
    """The schedule as a factor of the peak lr at step ``it`` (0-based); never 0 on step 0.

    cosine: linear warmup, cosine from 1 down to min_lr/learning_rate at lr_decay_iters, flat after.
    wsd: linear warmup, flat, then a linear cooldown over the last cooldown_frac of lr_decay_iters.
    """
    if not cfg.decay_lr:
        return 1.0
    floor = (cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10) / cfg.learning_rate
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return floor
    if cfg.lr_schedule == "wsd":
        cooldown_start = decay_iters * (1 - cfg.cooldown_frac)
        if it < cooldown_start:
            return 1.0
        frac = (it - cooldown_start) / max(1.0, decay_iters - cooldown_start)
        return 1.0 - frac * (1.0 - floor)
    frac = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * frac)) * (1.0 - floor)


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    """Every group's lr = its base_lr x the schedule's multiplier."""
    for o in optimizers:
        for g in o.param_groups:
            g["lr"] = g["base_lr"] * multiplier
