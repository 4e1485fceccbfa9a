"""The run folder: the one owner of its format, for train.py, sample.py and ``from_pretrained``.

A run folder (train.py's ``--out_dir``) holds::

    config.json          {"model": GPTConfig fields, "tokenizer": spec, "train": options, ...}
    model.safetensors    the latest weights (the unwrapped module; a tied head stored once)
    <tokenizer file>     named by the tokenizer spec, so the folder is self-contained
    train_state.pt       everything an exact resume needs (weights, optimizers, RNG, data position)
    best/                config.json + model.safetensors (+ tokenizer) at the best val loss
    metrics.jsonl        one JSON line per log/eval event; loss.png draws it

A folder is a *run folder* when its ``config.json`` has a ``model`` section. A local Hugging Face
GPT-2 or NanoChat folder (``save_pretrained``'s ``config.json`` + ``model.safetensors``) and a hub name
(``gpt2`` ... ``gpt2-xl``) load too, through ``from_pretrained``.

No pickle: weights are safetensors, metadata JSON, and ``train_state.pt`` is read with
``torch.load(weights_only=True)``, so a tampered file cannot run code. Every file is written
atomically (temp file, fsync, rename): a crash leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shlex
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from runtime.atomic import atomic_open, atomic_write_json, os_failure
from runtime.errors import CheckpointError
from runtime.memory import ensure_fits
from runtime.paths import member

from .config import GPTConfig
from .gpt import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
BEST_DIR = "best"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
ATTENTION_FILE = "attention.png"  # the attention grid of a fixed prompt, redrawn at each eval
STATE_FORMAT = 1
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
RUN_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, METRICS_FILE, PLOT_FILE, ATTENTION_FILE)  # a run's own files
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.tiktoken")  # the names data/tokenizer.py saves under


# ---------------------------------------------------------------------------- what a folder is


def looks_local(name: str) -> bool:
    """True if ``name`` can only mean a local path (never sent to the hub).

    A hub repo id is ``name`` or ``owner/name``; an absolute path, ``./``, ``~``, two or more
    slashes, a backslash or anything that exists on disk is local.
    """
    path = Path(name)
    return (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or path.exists())


def run_member(folder: str | Path, name: str) -> Path:
    """``folder / name``, refusing a link that leads out of the folder (a run folder is untrusted input)."""
    path = member(folder, name)
    if path is None:
        raise CheckpointError(f"{Path(folder) / name} is a link out of its run folder; refusing to follow it "
                              "(replace it with the file itself)")
    return path


def holds_run(folder: str | Path) -> list[str]:
    """The names in ``folder`` that belong to a training run (checkpoints, train state, metrics, best/)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [name for name in (*RUN_FILES, BEST_DIR) if os.path.lexists(folder / name)]


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; CheckpointError naming the file if missing or not a JSON object."""
    path = run_member(folder, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"no {CONFIG_FILE} in {folder}: is it a run folder written by train.py?") from None
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is unreadable or corrupt ({str(e)[:100]}); restore it or retrain") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; restore it or retrain")
    return data


def is_run_folder(folder: str | Path) -> bool:
    """A quillgpt run folder: a ``config.json`` with a ``model`` section (a GPT-2 folder has none)."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        return False
    try:
        return "model" in read_config(folder)
    except CheckpointError:
        return False


def is_checkpoint(folder: str | Path) -> bool:
    """A complete saved model: its ``config.json`` (written after the weights, so it marks them done) and weights."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def checkpoint_folder(out_dir: str | Path, which: str = "auto") -> tuple[Path, str]:
    """The folder of a run's ``best``, ``latest`` or ``auto`` (best if saved, else latest) checkpoint.

    Only a complete checkpoint counts (``is_checkpoint``): a run killed in the middle of its first
    save has none yet, and says so, rather than offering half-written files.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise CheckpointError(f"run folder not found: {out} (train one with "
                              f"`python train.py --out_dir={shlex.quote(str(out))}`, "
                              "or pass --out_dir / --init_from)")
    best = run_member(out, BEST_DIR)
    if which == "best" or (which == "auto" and is_checkpoint(best)):
        folder, which = best, "best"
    else:
        folder, which = out, "latest"
    if not is_checkpoint(folder):
        if which == "best" and is_checkpoint(out):
            raise CheckpointError(f"no best checkpoint in {out} yet; use --checkpoint=latest")
        if not (folder / CONFIG_FILE).is_file():  # written last: nothing complete was ever saved there
            raise CheckpointError(f"no {which} checkpoint in {out} yet: nothing has been saved there (a run saves "
                                  "at its evals after iteration 0, and may have been stopped before); train longer, "
                                  "or point --out_dir at another run folder")
        raise CheckpointError(f"no {which} checkpoint: {folder} has a {CONFIG_FILE} but no {WEIGHTS_FILE}; "
                              "restore it or retrain")
    return folder, which


def tokenizer_home(folder: str | Path, meta: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """(tokenizer spec, folder holding its file) for a run folder; ``best/`` may rely on its parent's file."""
    folder = Path(folder)
    spec = meta.get("tokenizer")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE} has no 'tokenizer' spec; re-save the run with train.py")
    mine, parents = member(folder, spec.get("file")), member(folder.parent, spec.get("file"))
    if folder.name == BEST_DIR and mine is not None and not mine.is_file() and parents is not None \
            and parents.is_file():
        return spec, folder.parent
    return spec, folder


# ---------------------------------------------------------------------------- weights


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def state_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict to save: unwrapped, contiguous, CPU, with a tied head stored once.

    ``tensors``: the model's state dict gathered elsewhere (FSDP's full state on rank 0), else read here.
    """
    gpt = unwrap(model)
    sd = gpt.state_dict() if tensors is None else dict(tensors)
    if gpt.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def load_tensors(model: GPT, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a state dict read from ``path`` after checking every name and shape against ``model``."""
    expected = model.state_dict()
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path}: the weights are not a table of tensors; restore the file or retrain")
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:4]}, unexpected {extra[:4]}")
    for k, v in tensors.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path} does not match its config: {k} has shape {tuple(v.shape)}, "
                                  f"config expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)  # strict=False: a tied lm_head.weight is not stored


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU (CheckpointError if missing or corrupt)."""
    path = run_member(Path(path).parent, Path(path).name)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({e}); restore it or retrain") from None


def model_config(meta: dict[str, Any], where: str | Path, **overrides: Any) -> GPTConfig:
    """The GPTConfig of a run folder's ``config.json`` dict, with ``overrides`` (e.g. dropout) applied."""
    section = meta.get("model")
    if not isinstance(section, dict):
        raise CheckpointError(f"{where} has no 'model' section: not a quillgpt checkpoint")
    try:
        return GPTConfig.from_dict({**section, **overrides})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad model config ({e})") from None


def build_model(config: GPTConfig, where: str | Path) -> GPT:
    """``GPT(config)``, after checking that this machine can hold it (a config is untrusted input:
    one asking for 51 GB is refused in a second, before any allocation)."""
    ensure_fits(config.model_bytes(), "cpu", f"the model of {where} ({config.num_params() / 1e6:,.1f}M parameters)",
                "use a machine with more memory, or check that the file is the one you meant")
    return GPT(config)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """A failed write inside (disk full, too large, read-only, permissions) -> CheckpointError naming the file.

    Whatever the writer raised (see runtime.atomic.os_failure); the file's previous version stays,
    the temp file is gone, and the message says how to go on from the run's last train state.
    """
    try:
        yield
    except Exception as e:
        failure = os_failure(e)
        if failure is None:
            raise
        name = Path(failure.filename or path)
        run = name if name.is_dir() else name.parent
        run = run.parent if run.name == BEST_DIR else run
        how = "resume the run with --init_from=resume" if (run / STATE_FILE).is_file() else \
            "start the run over with --overwrite, since it saved no train state yet"
        raise CheckpointError(f"cannot write {name}: {failure.strerror or failure}; the previous file was kept "
                              f"(free some disk space or fix the folder's permissions, then {how})") from None


# safetensors' names of the dtypes a state dict holds
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def _write_safetensors(f: Any, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` into the open file ``f`` in the safetensors format, one tensor at a time.

    Not safetensors' ``save_file``: it writes a temp file of its own beside the target and renames
    it, which a kill would leave behind under a name no cleanup knows (and with mode 0600); nor
    ``save``, which builds the whole file as bytes in memory first. Layout as the library's: an
    8-byte little-endian header length, the JSON header padded with spaces to 8 bytes, then the
    tensors' bytes back to back, widest dtype first so each starts aligned to its element size.
    """
    if sys.byteorder != "little":  # the format is little-endian; let the library swap the bytes
        f.write(safetensors_bytes(tensors, metadata=metadata))
        return
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for k in names:
        t = tensors[k]
        size = t.numel() * t.element_size()
        header[k] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for k in names:
        if tensors[k].numel():
            f.write(tensors[k].reshape(-1).view(torch.uint8).numpy())  # the tensor's own memory, not a copy


def save_model(model: torch.nn.Module, folder: str | Path, extra: dict[str, Any] | None = None,
               tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``model.safetensors`` then ``config.json`` (model config + ``extra``) into ``folder``.

    config.json is written last, so a folder whose config.json names a model always has its weights.
    ``tensors``: the state dict to write when it was gathered elsewhere (see ``state_tensors``).
    """
    folder = Path(folder)
    with writing(folder / WEIGHTS_FILE), atomic_open(folder / WEIGHTS_FILE, "wb") as f:
        _write_safetensors(f, state_tensors(model, tensors), {"format": "pt"})
    with writing(folder / CONFIG_FILE):
        atomic_write_json(folder / CONFIG_FILE, {"model": unwrap(model).config.to_dict(), **(extra or {})})


def load_model(folder: str | Path, **overrides: Any) -> tuple[GPT, dict[str, Any]]:
    """Rebuild the GPT saved in a run folder, config fields in ``overrides`` replaced; returns (model, config.json)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"run folder not found: {folder} (train one with "
                              f"`python train.py --out_dir={shlex.quote(str(folder))}`)")
    meta = read_config(folder)
    model = build_model(model_config(meta, folder / CONFIG_FILE, **overrides), folder)
    load_tensors(model, read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    return model, meta


# ---------------------------------------------------------------------------- train state


def save_train_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Write ``train_state.pt`` atomically, streamed into the temp file (no second copy in memory).

    ``state`` must hold only tensors, numbers, strings, lists and dicts, so that it loads with
    ``weights_only=True``.
    """
    with writing(Path(folder) / STATE_FILE), atomic_open(Path(folder) / STATE_FILE, "wb") as f:
        torch.save({"format": STATE_FORMAT, **state}, f)  # into the open file: torch keeps no temp file of its own


def load_train_state(folder: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` with ``weights_only=True`` (memory-mapped); CheckpointError for any problem."""
    folder = Path(folder)
    hint = f"train a run there first (python train.py --out_dir={shlex.quote(str(folder))}) or pick another --out_dir"
    if not folder.is_dir():
        raise CheckpointError(f"cannot resume: run folder {folder} does not exist; {hint}")
    path = run_member(folder, STATE_FILE)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no {STATE_FILE} in {folder}; {hint}")
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"  # torch.save's format; a bare pickle stream is never ours
    if not is_zip:
        raise CheckpointError(f"refusing {path}: it is a bare pickle stream, not a train_state written by train.py; "
                              "it was not loaded")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would import or call something: never executed
        why = next((ln.split("error:", 1)[1].strip() for ln in str(e).splitlines() if "Unpickler error:" in ln),
                   type(e).__name__)
        raise CheckpointError(f"refusing {path}: it holds pickled objects or code, not plain tensors ({why[:100]}); "
                              "it was not written by train.py or has been tampered with, so it was not loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {str(e)[:120]}); "
                              "restore it or start a fresh run") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a quillgpt train_state (format {STATE_FORMAT}); start a fresh run")
    return state


# ---------------------------------------------------------------------------- GPT-2 (Hugging Face format)

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                   "gelu": "gelu", "relu2": "relu2"}
HF_MODEL_TYPES = {"gpt2": "GPT-2", "nanochat": "NanoChat"}  # config.json model_type -> how to name it


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> GPTConfig:
    """Translate a Hugging Face GPT2Config dict into the classic preset."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise CheckpointError(f"unsupported GPT-2 activation_function {act!r}; "
                              f"supported: {', '.join(_HF_ACTIVATIONS)}")
    try:
        n_embd = hf["n_embd"]
        n_inner = hf.get("n_inner") or 4 * n_embd
        if n_inner % n_embd:
            raise CheckpointError(f"n_inner={n_inner} is not a multiple of n_embd={n_embd}")
        args = dict(block_size=hf.get("n_positions", hf.get("n_ctx", 1024)), vocab_size=hf["vocab_size"],
                    n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd, mlp_ratio=n_inner // n_embd,
                    norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation=_HF_ACTIVATIONS[act], bias=True,
                    tie_embeddings=hf.get("tie_word_embeddings", True), dropout=0.0)
        return GPTConfig.classic(**{**args, **overrides})
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"not a usable GPT-2 config.json ({type(e).__name__}: {e})") from None


def load_hf_gpt2(folder: str | Path, **overrides: Any) -> GPT:
    """Build a classic GPT from a Hugging Face GPT-2 folder's ``config.json`` and ``model.safetensors``.

    Hugging Face stores GPT-2's projections as ``Conv1D`` weights, (in, out); ``nn.Linear`` wants
    (out, in), so those four matrices are transposed on the way in.
    """
    weights_path = Path(folder) / WEIGHTS_FILE
    model = build_model(config_from_hf(read_config(folder), **overrides), folder)
    theirs = read_safetensors(weights_path)
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


def hf_model_type(meta: dict[str, Any], where: str | Path) -> str:
    """A Hugging Face folder's ``model_type`` (gpt2 when absent, as old GPT-2 folders); others refused."""
    kind = meta.get("model_type", "gpt2")
    if kind not in HF_MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type {kind!r} is not one quillgpt loads "
                              f"(supported: {', '.join(HF_MODEL_TYPES)})")
    return kind


def hf_config(meta: dict[str, Any], **overrides: Any) -> GPTConfig:
    """The GPTConfig of a Hugging Face config.json: GPT-2 -> classic, NanoChat -> modern."""
    from .hf_export import nanochat_config

    if meta.get("model_type", "gpt2") == "nanochat":
        return nanochat_config(meta, **overrides)
    return config_from_hf(meta, **overrides)


def load_hf_nanochat(folder: str | Path, **overrides: Any) -> GPT:
    """Build a modern GPT from a Hugging Face NanoChatForCausalLM folder (config.json + model.safetensors)."""
    from .hf_export import load_nanochat_tensors, nanochat_config

    meta = read_config(folder)
    model = build_model(nanochat_config(meta, **overrides), folder)
    load_nanochat_tensors(model, meta, read_safetensors(Path(folder) / WEIGHTS_FILE))
    return model


# ---------------------------------------------------------------------------- where a model comes from


@dataclass(frozen=True)
class Source:
    """A model's origin, decided from its name before any weights are read (``resolve_source``)."""

    folder: Path | None  # a quillgpt checkpoint folder (config.json + model.safetensors)
    pretrained: str | None  # otherwise: a local Hugging Face GPT-2 or NanoChat folder, or a hub name
    meta: dict[str, Any]  # the folder's config.json (ours or GPT-2's); {} for a hub name, not fetched yet
    label: str  # how to name it to a person


def resolve_source(name_or_folder: str | Path, which: str | None = None) -> Source:
    """The one dispatch of ``from_pretrained``, train.py --init_from and sample.py.

    ``which`` (best, latest or auto): ``name_or_folder`` is a run's --out_dir and that checkpoint
    of it is meant (``checkpoint_folder``). None: a quillgpt checkpoint folder itself, a local
    Hugging Face folder (config.json ``model_type`` gpt2 or nanochat), or a hub name. A folder is
    checked here (a config that is neither ours nor a usable GPT-2/NanoChat one, a missing weights
    file), so a bad one is refused before any download.
    """
    if which is not None:
        folder, which = checkpoint_folder(name_or_folder, which)
        meta = read_config(folder)
        if "model" not in meta:
            raise CheckpointError(f"{folder / CONFIG_FILE} has no 'model' section: not a quillgpt checkpoint")
        facts = [which]
        if isinstance(meta.get("iter"), int):
            facts.append(f"iter {meta['iter']}")
        if isinstance(meta.get("val_loss"), (int, float)):
            facts.append(f"val loss {meta['val_loss']:.4f}")
        return Source(folder, None, meta, f"{folder} ({', '.join(facts)})")
    name = str(name_or_folder)
    path = Path(name)
    if path.is_dir():
        if not run_member(path, CONFIG_FILE).is_file():
            raise CheckpointError(f"no {CONFIG_FILE} in {path}: expected a quillgpt run folder or a Hugging Face "
                                  f"GPT-2 or NanoChat folder ({CONFIG_FILE} + {WEIGHTS_FILE})")
        meta = read_config(path)
        if "model" in meta:
            if not is_checkpoint(path):
                raise CheckpointError(f"{path}: its {WEIGHTS_FILE} is missing (a run stopped before its first "
                                      "save?); give a folder with a saved model")
            return Source(path, None, meta, str(path))
        kind = hf_model_type(meta, path / CONFIG_FILE)
        label = HF_MODEL_TYPES[kind]
        try:
            hf_config(meta)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: its {CONFIG_FILE} has no 'model' section (quillgpt) and is not a "
                                  f"{label} config either: {e}") from None
        if not run_member(path, WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{path}: no {WEIGHTS_FILE} beside its {label} {CONFIG_FILE}")
        return Source(None, name, meta, f"{path} (Hugging Face {label} folder)")
    if looks_local(name):
        raise CheckpointError(f"no such folder: {name} (give a quillgpt run folder, a Hugging Face GPT-2 or "
                              f"NanoChat folder with {CONFIG_FILE} and {WEIGHTS_FILE}, or a hub name such as gpt2)")
    return Source(None, name, {}, f"{name} (GPT-2 from the Hugging Face hub)")


def source_config(source: Source, **overrides: Any) -> GPTConfig | None:
    """The GPTConfig a source builds, read without building it; None for a hub name (not fetched yet)."""
    if source.folder is not None:
        return model_config(source.meta, source.folder / CONFIG_FILE, **overrides)
    if source.meta:
        return hf_config(source.meta, **overrides)
    return None


def source_tokenizer(source: Source, gpt2_ranks: str | None = None) -> Any:
    """The run's own tokenizer (its spec in config.json); a Hugging Face folder's tokenizer.json;
    else GPT-2's for GPT-2 weights (a hub name, a GPT-2 folder without one)."""
    from data.tokenizer import load_tokenizer

    if source.folder is None:
        hf_json = Path(source.pretrained or ".") / "tokenizer.json"
        if source.meta and hf_json.is_file():
            from data.hf_tokenizer import HFTokenizer

            return HFTokenizer(hf_json)
        if source.meta.get("model_type") == "nanochat":
            raise CheckpointError(f"{source.pretrained}: no tokenizer.json beside the NanoChat weights; add the "
                                  "tokenizer the model was trained with (python export.py writes one)")
        return load_tokenizer({"kind": "gpt2"}, ".", gpt2_ranks=gpt2_ranks)
    spec, home = tokenizer_home(source.folder, source.meta)
    return load_tokenizer(spec, home, gpt2_ranks=gpt2_ranks)


def fetch_hub(name: str) -> Path:
    """Download a hub model's config.json and model.safetensors; the folder holding both."""
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id=name, filename=WEIGHTS_FILE)
        return Path(hf_hub_download(repo_id=name, filename=CONFIG_FILE)).parent  # both files land here
    except Exception as e:  # network errors, unknown repo ids: one message, not a stack of HTTP internals
        raise CheckpointError(f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}); "
                              f"known GPT-2 names: {', '.join(HUB_NAMES)}; offline, pass a local folder") from None


def from_pretrained(name_or_dir: str | Path | Source, **overrides: Any) -> GPT:
    """A quillgpt run folder, a local Hugging Face GPT-2 or NanoChat folder, a hub name (gpt2 ... gpt2-xl),
    or a ``Source`` already resolved; float32 on the CPU.

    ``overrides`` replace config fields (``dropout=0.1``, say) whichever the source.
    """
    source = name_or_dir if isinstance(name_or_dir, Source) else resolve_source(name_or_dir)
    if source.folder is not None:
        return load_model(source.folder, **overrides)[0]
    folder = Path(source.pretrained) if source.meta else fetch_hub(source.pretrained)
    if source.meta.get("model_type") == "nanochat":
        return load_hf_nanochat(folder, **overrides)
    return load_hf_gpt2(folder, **overrides)
