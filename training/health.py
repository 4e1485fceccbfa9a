"""Watching a run for NaN/inf on the device, with no host sync per step; the divergence check.

A step only updates device tensors (``track``); ``check`` brings them to the host once, at a log
step, an eval or a stop, and applies training/control.py's divergence rule, across all ranks.
"""

from __future__ import annotations

import torch

from training.control import check_divergence
from training.distributed import Dist


class Health:
    """NaN/inf loss and NaN/inf gradient (without a scaler) since the last check; the steps the fp16
    scaler skipped in a row, and the longest such run since the last check."""

    def __init__(self, device: str, scaler_enabled: bool) -> None:
        self.scaler_enabled = scaler_enabled
        self.loss_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.grad_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.skips = torch.zeros((), dtype=torch.long, device=device)
        self.max_skips = torch.zeros((), dtype=torch.long, device=device)

    def track(self, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """A NaN/inf loss is divergence. A NaN/inf gradient with an fp16 GradScaler is a step the scaler
        skips (and then lowers its scale): normal, unless it happens MAX_SKIPPED_STEPS times in a row."""
        bad_grad = ~torch.isfinite(grad_norm)
        self.loss_bad |= ~torch.isfinite(step_loss)
        if self.scaler_enabled:
            self.skips = torch.where(bad_grad, self.skips + 1, 0)
            self.max_skips = torch.maximum(self.max_skips, self.skips)
        else:
            self.grad_bad |= bad_grad

    def check(self, dist: Dist, iter_num: int) -> None:
        """Raise TrainingDiverged if any rank saw a NaN/inf loss or too many skipped steps (one host sync)."""
        flags = torch.stack([self.loss_bad.float(), self.max_skips.float(), self.grad_bad.float()])
        if dist.ddp:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        loss_bad, skips, grad_bad = flags.tolist()
        self.max_skips = self.skips.clone()  # the next check looks at runs of skips from here on
        check_divergence(bool(loss_bad), int(skips), iter_num, grad_nonfinite=bool(grad_bad))
