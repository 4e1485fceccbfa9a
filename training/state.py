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

import math
import random
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from model.checkpoint import STATE_FILE, load_train_state, state_tensors, unwrap
from runtime.errors import CheckpointError
from training.distributed import Dist, load_optimizer_states

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
        if isinstance(cuda, (list, tuple)):  # a file may hold every device's state: take this device's
            cuda = cuda[device] if device < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(saved: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's saved RNG state; None if the run was saved with another number of processes
    (the caller then seeds the rank afresh: dropout masks cannot continue exactly then)."""
    ranks = saved.get("rng_ranks")
    if ranks is None:  # saved by one process, or a file with rank 0's state only
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


def load_state(out_dir: Path) -> dict[str, Any]:
    """A resume's train state (memory-mapped), checked field by field."""
    state = load_train_state(out_dir)
    check_train_state(state, out_dir / STATE_FILE)
    return state


class Counters(NamedTuple):
    """Where a run stands: its iteration, best val loss, wandb run and tokens trained on."""

    iter_num: int = 0
    best_val: float = math.inf
    wandb_id: str | None = None
    tokens_seen: int = 0


# what a damaged train state raises while it is restored
DAMAGE = (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError)


def restore_optimizers(state: dict[str, Any], model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                       scaler: torch.amp.GradScaler, fsdp: bool, out_dir: Path) -> None:
    """The optimizers' moments and the grad scaler, from a train state made with the same options."""
    try:
        if len(state["optimizers"]) != len(optimizers):
            raise ValueError("a different --optimizer than the checkpoint's")
        if state.get("sharded", False) != fsdp:
            raise ValueError(f"it was saved {'with' if state.get('sharded') else 'without'} --fsdp; resume "
                             f"it the same way")
        load_optimizer_states(model, optimizers, state["optimizers"], fsdp)
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except DAMAGE as e:
        raise CheckpointError(f"cannot restore the optimizer from {out_dir}: {str(e)[:200]}") from None


def share_train_state(dist: Dist, state: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0's train state on every rank, with each rank's own RNG streams as its ``"rng"`` (None: the
    run was saved with another number of processes).

    Only rank 0 reads train_state.pt, so the ranks on other machines need no shared filesystem: rank 0
    sends the fields every rank uses (weights, optimizers, loader, counters) and scatters the RNG
    streams, one per rank. The objects travel pickled over the job's gloo group, between its own
    processes; the file itself was read with ``weights_only=True``.
    """
    if not dist.ddp:
        return state
    import torch.distributed as tdist

    common: list[Any] = [None]
    mine: list[Any] = [None]
    parts = None
    if dist.master:
        common = [{k: v for k, v in state.items() if k not in ("rng", "rng_ranks")}]
        parts = [rank_rng_state(state, r, dist.world_size) for r in range(dist.world_size)]
    tdist.broadcast_object_list(common, src=0, group=dist.control)
    tdist.scatter_object_list(mine, parts, src=0, group=dist.control)
    return {**common[0], "rng": mine[0]}


def restore_counters(state: dict[str, Any], dist: Dist, seed: int, out_dir: Path) -> Counters:
    """This rank's RNG streams, and the counters the run stopped at (``state`` as share_train_state gives it)."""
    try:
        rng = state["rng"] if dist.ddp else rank_rng_state(state, dist.rank, dist.world_size)
        if rng is not None:
            set_rng_state(rng)
        else:  # resumed with another number of processes: fresh, distinct dropout streams
            torch.manual_seed(seed + dist.rank + int(state["iter"]))
        return Counters(int(state["iter"]), float(state["best_val_loss"]), state.get("wandb_id"),
                        int(state.get("tokens", 0)))
    except DAMAGE as e:
        raise CheckpointError(f"cannot restore the RNG state and counters from {out_dir / STATE_FILE} "
                              f"({type(e).__name__}: {str(e)[:100]}); the file is damaged: restore it "
                              "or start a fresh run") from None
