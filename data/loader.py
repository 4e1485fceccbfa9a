"""Batches of token windows from a token file: seeded, resumable, and sharded across DDP ranks.

Every batch is a pure function of (seed, position), never of the history of calls, so a
resumed run only needs the position back (``state_dict``) to continue the exact sequence.

Sharding: each step draws one *global* batch of ``batch_size * world_size`` windows from the
shared seed, and rank r takes rows [r * batch_size, (r + 1) * batch_size). Ranks therefore never
read the same window, and W ranks with batch b see exactly the windows one process with batch
W * b would see.

    random      nanoGPT-style windows at random offsets, distinct within a global batch
                (numpy Generator seeded with (seed, step)).
    sequential  non-overlapping windows in a fresh seeded order every epoch, each read exactly
                once per epoch; the global stream runs on across epoch boundaries.

The file is memory-mapped anew for every batch: a long-lived np.memmap keeps every page it
ever touched mapped, so resident memory grows over a long run until the process is killed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.errors import DataError

MODES = ("random", "sequential")


TOKEN_DTYPES = ("uint16", "uint32")  # what data/tokenfile.py writes; nothing else is read


def file_dtype(path: str | Path) -> np.dtype:
    """The token dtype recorded in meta.json beside a token file (uint16 or uint32, nothing else)."""
    meta = Path(path).parent / "meta.json"
    if not meta.is_file():
        raise DataError(f"no meta.json beside {path}; run data/prepare.py or pass dtype= explicitly")
    try:
        with open(meta, encoding="utf-8") as f:
            name = json.load(f).get("dtype")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{meta} is unreadable or corrupt ({type(e).__name__}); rebuild it with "
                        "data/prepare.py --force") from None
    if name not in TOKEN_DTYPES:
        raise DataError(f"{meta}: token dtype {name!r} is not one of {', '.join(TOKEN_DTYPES)}; rebuild it with "
                        "data/prepare.py --force")
    return np.dtype(name)


def read_tokens(path: str | Path, dtype: Any = None) -> np.ndarray:
    """A whole token file as a read-only memmap (dtype from meta.json when not given)."""
    dtype = np.dtype(dtype) if dtype is not None else file_dtype(path)
    return np.memmap(path, dtype=dtype, mode="r")


class BatchLoader:
    """``next_batch()`` gives (x, y), int64 (batch_size, block_size), y = x shifted left by one."""

    def __init__(self, path: str | Path, block_size: int, batch_size: int, *, mode: str = "random",
                 seed: int = 1337, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 dtype: Any = None, vocab_size: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"token file not found: {self.path}; run data/prepare.py first")
        if mode not in MODES:
            raise DataError(f"unknown loader mode {mode!r}; known: {', '.join(MODES)}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        if block_size < 1 or batch_size < 1:
            raise DataError(f"block_size and batch_size must be >= 1 (got {block_size}, {batch_size})")
        self.dtype = np.dtype(dtype) if dtype is not None else file_dtype(self.path)
        self.block_size, self.batch_size = block_size, batch_size
        self.mode, self.seed, self.rank, self.world_size = mode, seed, rank, world_size
        self.device = torch.device(device)
        self.vocab_size = vocab_size  # if given, every batch is checked: a tampered file cannot index past it
        self.n_tokens = self.path.stat().st_size // self.dtype.itemsize
        if self.n_tokens < block_size + 1:
            raise DataError(f"{self.path} has {self.n_tokens:,} tokens, too few for one window of block_size+1="
                             f"{block_size + 1}; use a smaller --block_size or more text")
        # random: window starts 0..n-T-1; sequential: windows [i*T, i*T+T] that fit in the file
        self.n_starts = self.n_tokens - block_size
        self.n_windows = (self.n_tokens - 1) // block_size
        self.step = 0  # batches drawn so far (every rank draws in lockstep)
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ window choice

    def _global_starts(self) -> np.ndarray:
        """Start offsets of this step's global batch (all ranks), in row order."""
        g = self.batch_size * self.world_size
        if self.mode == "random":
            rng = np.random.Generator(np.random.PCG64([self.seed, self.step]))
            # distinct starts when the file has room; a tiny file has to repeat windows
            return rng.choice(self.n_starts, size=g, replace=g > self.n_starts)
        first = self.step * g  # position in the endless stream of epochs
        idx = [self._epoch_order(p // self.n_windows)[p % self.n_windows] for p in range(first, first + g)]
        return np.asarray(idx, dtype=np.int64) * self.block_size

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:  # cached: a permutation per batch would cost O(windows)
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._perm, self._perm_epoch = rng.permutation(self.n_windows), epoch
        return self._perm

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self._global_starts()[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        self.step += 1
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r")  # fresh map per batch: see module docstring
        buf = np.stack([tokens[s:s + self.block_size + 1] for s in starts]).astype(np.int64)
        del tokens
        if self.vocab_size is not None and buf.max() >= self.vocab_size:  # one pass over B x T ids: cheap
            raise DataError(f"{self.path} holds token id {int(buf.max())}, outside the vocabulary ({self.vocab_size}): "
                            "the file does not belong to this tokenizer; rebuild it with data/prepare.py --force")
        batch = torch.from_numpy(buf)
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    @property
    def epoch(self) -> int:
        """Sequential mode: the epoch the next batch starts in (random mode: windows seen / windows)."""
        return self.step * self.batch_size * self.world_size // self.n_windows

    def state_dict(self) -> dict:
        """JSON-able position; the batch sequence itself is derived from it and the seed."""
        return {"mode": self.mode, "seed": self.seed, "step": self.step, "epoch": self.epoch,
                "global_batch": self.batch_size * self.world_size, "block_size": self.block_size}

    def load_state_dict(self, d: dict) -> None:
        """Continue from a saved position; the recipe that defines the sequence must match."""
        mine = self.state_dict()
        changed = [k for k in ("mode", "seed", "global_batch", "block_size") if k in d and d[k] != mine[k]]
        if changed:
            raise DataError(f"cannot resume the {self.path.name} loader: {', '.join(changed)} changed "
                             f"(saved {[d[k] for k in changed]}, now {[mine[k] for k in changed]}); "
                             "keep them as in the saved run or start fresh")
        step = d.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise DataError(f"cannot resume the {self.path.name} loader: its saved position {step!r} is not a "
                            "whole number >= 0 (a damaged checkpoint); restore it or start fresh")
        self.step = step
