"""Weights on disk: safetensors for tensors, JSON for config. No pickle anywhere.

A saved model is a folder with ``model.safetensors`` (the unwrapped module's state, tied
head stored once) and ``config.json`` (``{"model": GPTConfig fields, ...extra}``). Both are
written atomically, so a crash mid-save leaves the previous files intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from atomicio import atomic_write_bytes, atomic_write_json

from .config import GPTConfig
from .gpt import GPT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint; the message says which file and what to do."""


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to save: unwrapped, contiguous, CPU, with a tied head stored once."""
    gpt = unwrap(model)
    sd = gpt.state_dict()
    if gpt.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Write the model's weights to ``path`` (safetensors) atomically."""
    atomic_write_bytes(path, save(state_tensors(model), metadata={"format": "pt"}))


def load_weights(model: GPT, path: str | Path) -> None:
    """Load ``path`` into ``model``; raise CheckpointError naming any missing, extra or misshapen tensor."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); restore it or retrain") from None
    load_tensors(model, tensors, path)


def load_tensors(model: GPT, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a state dict read from ``path`` after checking every name and shape against ``model``."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:4]}, unexpected {extra[:4]}")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path} does not match its config: {k} has shape {tuple(v.shape)}, "
                                  f"config expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)  # strict=False: a tied lm_head.weight is not stored


def save_model(model: torch.nn.Module, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (model config + ``extra``) into ``folder``."""
    folder = Path(folder)
    save_weights(model, folder / WEIGHTS_FILE)
    atomic_write_json(folder / CONFIG_FILE, {"model": unwrap(model).config.to_dict(), **(extra or {})})


def read_config(folder: str | Path) -> dict[str, Any]:
    """The run folder's ``config.json`` as a dict (CheckpointError if missing or unreadable)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} in {folder}: is it a run folder written by train.py?")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None


def load_model(folder: str | Path, weights: str = WEIGHTS_FILE) -> tuple[GPT, dict[str, Any]]:
    """Rebuild the GPT saved in ``folder``; returns (model, config.json dict)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"run folder not found: {folder} (train one with `python train.py --out_dir={folder}`)")
    meta = read_config(folder)
    if "model" not in meta:
        raise CheckpointError(f"{folder / CONFIG_FILE} has no 'model' section: not a quillgpt checkpoint")
    try:
        config = GPTConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad model config ({e})") from None
    model = GPT(config)
    load_weights(model, folder / weights)
    return model, meta
