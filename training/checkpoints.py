"""A run's checkpoints: which are due after an eval, and what each writes.

Every rank takes part (the state is gathered: each rank's RNG, the shards under FSDP); rank 0
writes. train_state.pt is the commit point of a checkpoint and is written last (best/, then
the model export, then the state): a kill anywhere before it resumes from the previous state,
which trains and evaluates this interval again and rewrites best/ and the export. So neither
best/ nor the export can lag behind the state a run resumes from. The file format belongs to
model/checkpoint.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data.loader import BatchLoader
from model.checkpoint import BEST_DIR, save_model, save_train_state, writing
from training.config import TrainConfig
from training.distributed import Dist, full_model_state, full_optimizer_states, gather_objects, on_master
from training.state import rng_state, train_state


def due_after_eval(cfg: TrainConfig, it: int, first_iter: int, improved: bool) -> tuple[bool, bool]:
    """(best/, the latest checkpoint): best/ when val improved; the latest always, when improved, or at
    the end. A new run's first eval has nothing trained to save."""
    if it == first_iter and cfg.init_from == "scratch":
        return False, False
    return improved and cfg.keep_best, improved or cfg.always_save_checkpoint or it >= cfg.max_iters


@dataclass(frozen=True)
class Checkpoints:
    """What a run's checkpoints are made of; ``save`` and ``save_best`` take what changes as it trains."""

    out_dir: Path
    dist: Dist
    fsdp: bool
    model: torch.nn.Module  # the unwrapped model
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    loader: BatchLoader  # the training stream, whose position a resume continues from
    tokenizer: Any
    extra: dict[str, Any]  # config.json's run fields: options, tokenizer spec, data, resolved (rank 0)
    resolved: dict[str, Any]  # Resolved.record()
    dtype: str
    train_config: dict[str, Any]
    wandb_id: str | None

    def gather(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors on rank 0 (gathered under FSDP: every rank must call this)."""
        return full_model_state(self.model, self.dist, self.fsdp)

    def save(self, it: int, val_loss: float | None, best_val: float, tokens: int,
             tensors: dict[str, torch.Tensor] | None = None, val_bpb: float | None = None) -> None:
        """Latest checkpoint: the model export (for sample.py), then train_state.pt (for resume), last.

        ``tensors``: the gathered model, if this eval gathered it already.
        """
        tensors = self.gather() if tensors is None else tensors
        optimizer_states = full_optimizer_states(self.model, self.optimizers, self.dist, self.fsdp)
        rng_ranks = gather_objects(self.dist, rng_state())

        def write() -> None:
            meta = {**self.extra, "iter": it, "val_loss": val_loss, "val_bpb": val_bpb, "best_val_loss": best_val}
            save_model(self.model, self.out_dir, meta, tensors)
            save_train_state(self.out_dir, train_state(
                self.model, tensors, optimizer_states, self.scaler, rng_ranks, iter=it,
                best_val_loss=best_val, dtype=self.dtype, resolved=self.resolved, loader=self.loader.state_dict(),
                wandb_id=self.wandb_id, tokens=tokens, sharded=self.fsdp,
                train_config=self.train_config, tokenizer=self.extra["tokenizer"]))

        on_master(self.dist, "saving a checkpoint", write)

    def save_best(self, it: int, val_loss: float, tensors: dict[str, torch.Tensor],
                  val_bpb: float | None = None) -> None:
        """best/: the model export at the best val loss, with its own tokenizer file (rank 0 writes)."""
        def write() -> None:
            best = self.out_dir / BEST_DIR
            with writing(best):
                spec = self.tokenizer.save(best)
            save_model(self.model, best, {**self.extra, "tokenizer": spec, "iter": it, "val_loss": val_loss,
                                         "val_bpb": val_bpb},
                       tensors)

        on_master(self.dist, "saving the best model", write)
