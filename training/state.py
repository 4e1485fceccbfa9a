"""What an exact resume needs, beyond the weights: optimizer moments, RNG streams, data position.

``train_state.pt`` (written and read by model/checkpoint.py, the run folder's owner) is the
one file a resume reads: weights, optimizers, grad scaler, iteration, the RNG states of torch /
CUDA / numpy / python (one set per rank: each rank draws its own dropout masks), the loader's
position, best val loss, wandb run id and the run's options.
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
from runtime.errors import CheckpointError

# what a resume reads, and the type each must have; a file that fails this is refused before it is used
STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "model_config": (dict,), "model": (dict,), "optimizers": (list,), "rng": (dict,), "loader": (dict,),
    "iter": (int,), "best_val_loss": (int, float), "train_config": (dict,),
}


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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: under torchrun each rank owns one device and its stream
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        device = torch.cuda.current_device()
        if isinstance(cuda, (list, tuple)):  # older files held every device's state: take this device's
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(saved: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's saved RNG state; None if the run was saved with another number of processes
    (the caller then seeds the rank afresh: dropout masks cannot continue exactly then)."""
    ranks = saved.get("rng_ranks")
    if ranks is None:  # saved by one process, or by a version that kept rank 0's state only
        return saved["rng"] if world_size == 1 or rank == 0 else None
    return ranks[rank] if len(ranks) == world_size else (saved["rng"] if rank == 0 else None)


def train_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], optimizer_states: list[dict[str, Any]],
                scaler: torch.amp.GradScaler | None, rng_ranks: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """The resume state of a run, ready for ``model.checkpoint.save_train_state``.

    ``tensors`` and ``optimizer_states`` are the whole model's (gathered to rank 0 under FSDP);
    ``rng_ranks`` holds every rank's ``rng_state()``.
    """
    return {
        "model_config": unwrap(model).config.to_dict(),
        "model": state_tensors(model, tensors),
        "optimizers": optimizer_states,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_ranks[0],
        "rng_ranks": rng_ranks,
        **fields,
    }


def check_train_state(state: dict[str, Any], path: Any) -> None:
    """CheckpointError naming the first field of a loaded train state that is missing or of the wrong type.

    ``train_state.pt`` is untrusted input: a file edited by hand, or written by another program,
    must fail with one line, not with a KeyError deep inside the resume.
    """
    for key, types in STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            got = "missing" if key not in state else f"a {type(value).__name__}"
            raise CheckpointError(f"{path}: '{key}' is {got}, not a {' or '.join(t.__name__ for t in types)}; "
                                  "the file is damaged or not from train.py: restore it or start a fresh run")
    if state["iter"] < 0:
        raise CheckpointError(f"{path}: iteration {state['iter']} is negative; restore the file or start a fresh run")
    rng = state["rng"]
    if not isinstance(rng.get("torch"), torch.Tensor) or not isinstance(rng.get("numpy"), dict) \
            or not isinstance(rng.get("python"), list):
        raise CheckpointError(f"{path}: the saved RNG state is malformed; restore the file or start a fresh run")
