"""train.py's checkpoint state: what a resumed run needs to continue exactly, saved safely.

A run folder's ``train_state.pt`` holds everything needed to resume, in ONE atomically written
file: the model weights, the optimizer(s) and grad-scaler state, the iteration, the RNG states
of torch / CUDA / numpy / python, the data loader's position, the best val loss and the wandb
run id. Because resuming reads only this one file, a crash between writing it and writing the
exported ``model.safetensors`` / ``config.json`` can never pair new weights with old optimizer
moments. The export files are each atomic too, so ``sample.py`` always sees a whole model.

Everything is stored as tensors, numbers, strings, lists and dicts so that it loads with
``torch.load(..., weights_only=True)``: a tampered file cannot run code when it is read.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomicio import atomic_write_bytes
from model import GPTConfig
from model.weights import state_tensors
from options import UsageError

STATE_FILE = "train_state.pt"
FORMAT = 1


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


def save_state(out_dir: str | Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
               scaler: torch.amp.GradScaler | None, **fields: Any) -> None:
    """Write train_state.pt atomically: serialise into memory first, then temp file + fsync + rename."""
    state = {
        "format": FORMAT,
        "model_config": _unwrap_config(model).to_dict(),
        "model": state_tensors(model),
        "optimizers": [o.state_dict() for o in optimizers],
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        **fields,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(out_dir) / STATE_FILE, buf.getvalue())


def _unwrap_config(model: torch.nn.Module) -> GPTConfig:
    from model import unwrap

    return unwrap(model).config


def load_state(out_dir: str | Path) -> dict[str, Any]:
    """Read train_state.pt with weights_only=True; any problem becomes one UsageError line."""
    path = Path(out_dir) / STATE_FILE
    resume_hint = f"train a run there first (python train.py --out_dir={out_dir}) or pick another --out_dir"
    if not Path(out_dir).is_dir():
        raise UsageError(f"cannot resume: run folder {out_dir} does not exist; {resume_hint}")
    if not path.is_file():
        raise UsageError(f"cannot resume: no {STATE_FILE} in {out_dir}; {resume_hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would import or call something: never executed
        why = next((ln.split("error:", 1)[1].strip() for ln in str(e).splitlines() if "Unpickler error:" in ln),
                   type(e).__name__)
        raise UsageError(f"refusing {path}: it holds pickled objects or code, not plain tensors ({why[:100]}); "
                         "it was not written by train.py or has been tampered with, so it was not loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UsageError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:120]}); "
                         "restore it or start a fresh run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UsageError(f"{path} is not a quillgpt train_state (format {FORMAT}); start a fresh run")
    return state


def load_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load saved weights into ``model``, naming any missing, extra or misshapen tensor."""
    from model.weights import CheckpointError, load_tensors

    try:
        load_tensors(model, tensors, path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
