"""Autoregressive generation: prefill once, then one cached token per step.

Window policy (what happens past ``block_size``)
-----------------------------------------------
The model never attends over more than ``block_size`` tokens. The context for the next
token is ``tokens[start:n]``:

- a prompt longer than the window keeps its last ``block_size`` tokens (``start = n - block_size``);
- when a new token would make the window overflow, the window slides: it keeps the last
  ``window_keep`` tokens (default ``block_size // 2``) and those are prefilled again.

Learned positions make cached keys position-dependent, so the cache cannot slide; rotary
keys could, but their deeper layers were computed with the older context. Re-prefilling
is exact for both, and doing it every ``block_size - window_keep`` tokens keeps its cost
amortised. ``window_keep = block_size`` gives nanoGPT's crop-every-step behaviour (a full
forward per token past the window). Between slides each step feeds only the token sampled
the step before, so a decode step is one (B, 1) forward with no slicing or copying of the
context. The uncached path (``use_cache=False``) applies the same
policy with a full forward per token, so both paths produce the same tokens.

Compiled decoding (``compile=True``)
------------------------------------
A small model's decode step is a chain of tiny kernels, so per-op overhead and (at batch 1)
matrix-vector products dominate. ``compile=True`` runs each decode step through
``torch.compile`` in fixed shapes, the recipe of PyTorch's gpt-fast: the token's position is a
tensor, the cache is written at that slot and attention covers every slot under a mask
(``GPT.forward``'s ``input_pos``), so one graph is traced per batch size and reused at every
position and window. Prefills stay eager. Compiling costs seconds once per process, so it
pays off for long generations, not for a few tokens.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from runtime.errors import DeviceError
from runtime.memory import ensure_fits

from .kv_cache import KVCache
from .sampling import apply_repetition_penalty, check_sampling_args, sample_next

if TYPE_CHECKING:
    from .config import GPTConfig


def _make_generator(device: torch.device, seed: int | None,
                    generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _decode_step(model: torch.nn.Module, token: torch.Tensor, cache: KVCache, pos: torch.Tensor) -> torch.Tensor:
    return model(token, kv_cache=cache, last_only=True, input_pos=pos)[0]


# On CPU a batch-1 step is matrix-vector products, which MKL's gemv streams at about a third
# of the memory bandwidth here (compare the GB/s lines of bench/bench_generate.py). Inductor's
# decompose_mm_pass turns one-row matmuls into multiply-reduce loops, which it fuses and
# spreads over all cores. On CUDA the pass leaves these shapes alone.
INDUCTOR_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend can use ($CXX, g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def check_can_compile(device: torch.device) -> None:
    """Raise DeviceError, saying what to install, if compile=True cannot work on ``device``."""
    if device.type == "cpu" and cpu_compiler() is None:
        raise DeviceError("--compile: torch.compile on CPU needs a C++ compiler: install g++ (or set $CXX), "
                          "or drop --compile")


def generation_bytes(config: "GPTConfig", batch_size: int, prompt_len: int, max_new_tokens: int,
                     dtype_bytes: int = 4) -> int:
    """A lower bound on the memory ``generate_stream`` allocates besides the model, in bytes.

    The KV cache (keys and values of every layer over the whole context), the token buffer
    (prompt + every new token, int64) and a step's logits and probabilities (fp32).
    """
    kv_cache = 2 * config.n_layer * batch_size * config.n_kv_head * config.block_size * config.head_dim * dtype_bytes
    tokens = 8 * batch_size * (prompt_len + max_new_tokens)
    logits = 2 * 4 * batch_size * config.vocab_size
    return kv_cache + tokens + logits


@functools.cache
def compiled_decode_step() -> Callable:
    """``_decode_step`` under torch.compile, built once per process (graphs are cached per shape).

    Not mode="reduce-overhead": CUDA graphs would want the cache as static module buffers,
    and this path is only exercised on CPU here.
    """
    return torch.compile(_decode_step, fullgraph=True, dynamic=False, options=INDUCTOR_OPTIONS)


@torch.inference_mode()
def generate_stream(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    repetition_penalty: float | None = None, stop_ids: list[int] | None = None,
                    seed: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
                    window_keep: int | None = None, compile: bool = False) -> Iterator[torch.Tensor]:
    """Yield each step's sampled tokens, (B,) int64, for up to ``max_new_tokens`` steps.

    A row that samples one of ``stop_ids`` is finished: it keeps repeating that token, and
    the stream ends early once every row is finished.
    """
    if idx.dim() != 2 or idx.size(1) < 1:
        raise ValueError(f"idx must be a (B, T) tensor of token ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    if compile and not use_cache:
        raise ValueError("compile=True compiles the cached decode step: it needs use_cache=True")
    if compile:
        check_can_compile(idx.device)
    cfg = model.config
    block = cfg.block_size
    keep = block // 2 if window_keep is None else window_keep
    if not 1 <= keep <= block:
        raise ValueError(f"window_keep must be in [1, block_size={block}], got {window_keep}")

    B, T0 = idx.shape
    device = idx.device
    # a request too big for the machine fails here, in one line (2 bytes: autocast may halve the cache)
    ensure_fits(generation_bytes(cfg, B, T0, max_new_tokens, dtype_bytes=2), str(device),
                f"generating {max_new_tokens:,} tokens x {B} row(s)", "generate fewer tokens or rows at a time")
    gen = _make_generator(device, seed, generator)
    tokens = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=device)  # written in place, no cat
    tokens[:, :T0] = idx
    n = T0  # tokens so far
    start = max(0, n - block)  # the window is tokens[start:n]
    cache = model.new_kv_cache(B) if use_cache else None
    pos = torch.zeros(1, dtype=torch.long, device=device) if compile else None  # the compiled step's token slot
    cache_start = start  # the cache holds tokens[cache_start : cache_start + cache.pos]
    seen = None
    if repetition_penalty is not None and repetition_penalty != 1.0:
        seen = torch.zeros(B, cfg.vocab_size, dtype=torch.bool, device=device).scatter_(1, idx, True)
    stop = torch.tensor(sorted(set(stop_ids)), device=device) if stop_ids else None
    finished = torch.zeros(B, dtype=torch.bool, device=device) if stop is not None else None

    nxt = None  # the last sampled (B,) tokens
    for _ in range(max_new_tokens):
        if n - start > block:  # overflow: slide the window, keeping its last `keep` tokens
            start = n - keep
        if cache is None:
            logits, _ = model(tokens[:, start:n], last_only=True)
        elif cache_start != start or nxt is None:  # first step, or the window slid: (re-)prefill it
            cache.reset()
            cache_start = start
            logits, _ = model(tokens[:, start:n], kv_cache=cache, last_only=True)
            cache.advance(n - start)
        elif not compile:  # decode: only the token sampled last step is new (cache_start + cache.pos == n - 1)
            logits, _ = model(nxt.view(B, 1), kv_cache=cache, last_only=True)
            cache.advance(1)
        else:  # the same decode step, compiled (on first use: the prefill's token shows up first)
            logits = compiled_decode_step()(model, nxt.view(B, 1), cache, pos.fill_(cache.pos))
            cache.advance(1)
        logits = logits.view(B, -1)  # (B, V)
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        nxt = sample_next(logits, temperature, top_k, top_p, min_p, generator=gen)  # (B,)
        if finished is not None:
            nxt = torch.where(finished, tokens.select(1, n - 1), nxt)  # finished rows repeat their stop token
            finished |= torch.isin(nxt, stop)
        if seen is not None:
            seen.scatter_(1, nxt.unsqueeze(1), True)
        tokens.select(1, n).copy_(nxt)
        n += 1
        yield nxt
        if finished is not None and bool(finished.all()):
            return


def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, *,
             callback: Callable[[torch.Tensor], None] | None = None, **kwargs) -> torch.Tensor:
    """Continue ``idx`` (B, T); returns (B, T + new) like nanoGPT's generate.

    ``callback`` (if given) receives each step's (B,) tokens as they are sampled. ``new`` is
    ``max_new_tokens`` unless every row hit a stop id first. Keyword arguments are those of
    ``generate_stream``: temperature, top_k, top_p, min_p, repetition_penalty, stop_ids, seed,
    generator, use_cache, window_keep, compile.
    """
    steps = []
    for nxt in generate_stream(model, idx, max_new_tokens, **kwargs):
        steps.append(nxt)
        if callback is not None:
            callback(nxt)
    return torch.cat([idx, torch.stack(steps, dim=1)], dim=1)
