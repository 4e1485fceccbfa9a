"""GPT.from_pretrained: OpenAI's GPT-2 weights (Hugging Face format) or a quillgpt run folder.

Accepted sources, tried in this order:
1. a quillgpt run folder (``config.json`` with a ``model`` section + ``model.safetensors``);
2. a local Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``, as written by
   ``GPT2LMHeadModel.save_pretrained``);
3. a hub name, ``gpt2`` / ``gpt2-medium`` / ``gpt2-large`` / ``gpt2-xl`` (or any GPT-2 repo id),
   downloaded through ``huggingface_hub`` (needs the network once; cached afterwards).

Hugging Face stores GPT-2's projections as ``Conv1D`` weights, (in, out); ``nn.Linear`` wants
(out, in), so those four matrices are transposed on the way in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import GPTConfig
from .gpt import GPT
from .weights import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_model

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """Translate a Hugging Face GPT2Config dict into the classic preset."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise CheckpointError(f"unsupported GPT-2 activation_function {act!r}; supported: {', '.join(_ACTIVATIONS)}")
    n_embd = hf["n_embd"]
    n_inner = hf.get("n_inner") or 4 * n_embd
    if n_inner % n_embd:
        raise CheckpointError(f"n_inner={n_inner} is not a multiple of n_embd={n_embd}")
    args = dict(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd, mlp_ratio=n_inner // n_embd,
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_ACTIVATIONS[act], bias=True,
                tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0)
    args.update(overrides)
    return GPTConfig.classic(**args)


def load_hf_gpt2(config_path: Path, weights_path: Path, **overrides: Any) -> GPT:
    """Build a classic GPT from a Hugging Face GPT-2 ``config.json`` and ``model.safetensors``."""
    with open(config_path, encoding="utf-8") as f:
        hf = json.load(f)
    model = GPT(config_from_hf(hf, **overrides))
    try:
        theirs = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path} is truncated or corrupt ({e})") from None
    ours = model.state_dict()
    loaded = set()
    with torch.no_grad():
        for key, tensor in theirs.items():
            if key.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # old transformers saved the causal mask as a buffer
            name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
            if name not in ours:
                raise CheckpointError(f"{weights_path}: unexpected tensor {key!r}; is this a GPT-2 checkpoint?")
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            if tensor.shape != ours[name].shape:
                raise CheckpointError(f"{weights_path}: {key} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(ours[name].shape)}")
            ours[name].copy_(tensor)
            loaded.add(name)
    missing = set(ours) - loaded
    if model.config.tie_embeddings:
        missing.discard("lm_head.weight")
    if missing:
        raise CheckpointError(f"{weights_path} lacks {sorted(missing)[:4]}")
    return model


def from_pretrained(name_or_dir: str, **overrides: Any) -> GPT:
    """See the module docstring. ``overrides`` change config fields such as ``dropout``."""
    path = Path(name_or_dir)
    if path.is_dir():
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise CheckpointError(f"{path} has no {CONFIG_FILE}: expected a quillgpt run or a Hugging Face GPT-2 folder")
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
        if "model" in meta:  # our own run folder
            model, _ = load_model(path)
            return model
        return load_hf_gpt2(cfg_path, path / WEIGHTS_FILE, **overrides)
    # A hub repo id is "name" or "owner/name"; anything else that looks like a path (absolute, ./, ~,
    # two or more slashes, an existing file) is a local folder that is missing, so say that and never
    # send a path to the hub.
    looks_local = (path.is_absolute() or name_or_dir.startswith((".", "~")) or name_or_dir.count("/") > 1
                   or "\\" in name_or_dir or path.exists())
    if looks_local:
        raise CheckpointError(f"no such folder: {name_or_dir} (expected a quillgpt run folder or a Hugging Face "
                              f"GPT-2 folder with {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        raise CheckpointError("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        cfg_path = hf_hub_download(repo_id=name_or_dir, filename=CONFIG_FILE)
        weights_path = hf_hub_download(repo_id=name_or_dir, filename=WEIGHTS_FILE)
    except Exception as e:  # network errors, unknown repo ids: one message, not a stack of HTTP internals
        raise CheckpointError(f"could not fetch {name_or_dir!r} from the Hugging Face hub ({type(e).__name__}); "
                              f"known GPT-2 names: {', '.join(HUB_NAMES)}; offline, pass a local folder") from None
    return load_hf_gpt2(Path(cfg_path), Path(weights_path), **overrides)
