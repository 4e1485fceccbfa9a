"""What an exact resume needs, beyond the weights: optimizer moments, RNG streams, data position.

``train_state.pt`` (written and read by model/checkpoint.py, the run folder's owner) is the
one file a resume reads: weights, optimizers, grad scaler, iteration, the RNG states of torch /
CUDA / numpy / python, the loader's position, best val loss, wandb run id and the run's options.
Because it is one atomically written file, a crash between it and the exported
``model.safetensors`` can never pair new weights with old optimizer moments.

Everything is tensors, numbers, strings, lists and dicts, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from model.checkpoint import state_tensors, unwrap


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_state(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                scaler: torch.amp.GradScaler | None, **fields: Any) -> dict[str, Any]:
    """The resume state of a run, ready for ``model.checkpoint.save_train_state``."""
    return {
        "model_config": unwrap(model).config.to_dict(),
        "model": state_tensors(model),
        "optimizers": [o.state_dict() for o in optimizers],
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        **fields,
    }
