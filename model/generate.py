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
amortised. ``window_keep = block_size`` crops at every step instead (a full forward per
token past the window). Between slides each step feeds only the token sampled
the step before, so a decode step is one (B, 1) forward with no slicing or copying of the
context. The uncached path (``use_cache=False``) applies the same
policy with a full forward per token, so both paths produce the same tokens.

Compiled decoding (``compile=True``)
------------------------------------
A small model's decode step is a chain of tiny kernels, so per-op overhead and (at batch 1)
matrix-vector products dominate. ``compile=True`` runs each decode step, together with the
logit processing that precedes the draw (padded-id mask, repetition penalty, temperature,
top-k/top-p/min-p), through ``torch.compile`` in fixed shapes, the recipe of PyTorch's
gpt-fast: the token's position is a tensor, the cache is written at that slot and attention
covers every slot under a mask (``GPT.forward``'s ``input_pos``), so one graph is traced per
batch size and reused at every position and window. On CUDA the graph is also captured as a
CUDA graph (``mode="reduce-overhead"``: one launch per token; the cache tensors are marked
static so it may write them in place). The draw itself stays outside, so a seeded
``torch.Generator`` still decides it. Prefills stay eager. Compiling costs seconds once per
process, so it pays off for long generations, not for a few tokens.

The cache holds prompt + new tokens (rounded up to a multiple of 64, at most ``block_size``),
so a short generation never attends over a whole block of empty slots.

Precision (``decode_precision``): on CUDA the weights are cast once to the compute dtype and
run without autocast (autocast would re-cast every fp32 weight at every step, and a decode
step is bound by reading the weights); elsewhere the weights stay fp32 under autocast.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from runtime.errors import CheckpointError, DeviceError
from runtime.memory import ensure_fits

from .kv_cache import KVCache
from .sampling import apply_repetition_penalty, check_sampling_args, draw, sampling_weights

if TYPE_CHECKING:
    from .config import GPTConfig


def _make_generator(device: torch.device, seed: int | None,
                    generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None:
        return generator
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _process_logits(logits: torch.Tensor, seen: torch.Tensor | None, penalty: float | None,
                    vocab_limit: int | None) -> torch.Tensor:
    """(B, V) logits as the sampler receives them: padded ids masked, repetition penalty applied.
    No host sync, so it runs inside the compiled step too."""
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        logits[:, vocab_limit:] = float("-inf")  # padded ids no tokenizer can decode
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, penalty)
    return logits


def _decode_step(model: torch.nn.Module, token: torch.Tensor, cache: KVCache, pos: torch.Tensor,
                 seen: torch.Tensor | None, penalty: float | None, vocab_limit: int | None, temperature: float,
                 top_k: int | None, top_p: float | None, min_p: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed-shape decode step and the logit processing after it: the unit that is compiled.
    Returns (processed logits, what ``draw`` needs)."""
    logits = model(token, kv_cache=cache, last_only=True, input_pos=pos)[0].view(token.size(0), -1)
    logits = _process_logits(logits, seen, penalty, vocab_limit)
    return logits, sampling_weights(logits, temperature, top_k, top_p, min_p)


# On CPU a batch-1 step is matrix-vector products, which MKL's gemv streams at about a third
# of the memory bandwidth here (compare the GB/s lines of bench/bench_generate.py). Inductor's
# decompose_mm_pass turns one-row matmuls into multiply-reduce loops, which it fuses and
# spreads over all cores. On CUDA the pass leaves these shapes alone.
INDUCTOR_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


def decode_compile_options(device_type: str) -> dict[str, Any]:
    """torch.compile's keyword arguments for the decode step on ``device_type``.

    CUDA: CUDA graphs (``mode="reduce-overhead"``), which replay the whole step in one launch.
    torch.compile refuses ``mode`` together with ``options``, and the CPU pass is of no use there.
    Elsewhere: Inductor with the one-row matmul pass above.
    """
    if device_type == "cuda":
        return {"fullgraph": True, "dynamic": False, "mode": "reduce-overhead"}
    return {"fullgraph": True, "dynamic": False, "options": INDUCTOR_OPTIONS}


def decode_precision(device_type: str, dtype: torch.dtype) -> tuple[torch.dtype, bool]:
    """(dtype for the weights, use autocast?) to generate in ``dtype`` on ``device_type``.

    CUDA: weights cast once to ``dtype``, no autocast (gpt-fast's recipe: autocast would re-cast
    each fp32 weight at every step, doubling the bytes a memory-bound decode step reads). CPU and
    MPS keep fp32 weights under autocast: their bf16/fp16 matmul speed varies by chip, and
    autocast keeps the fp32 master weights exact.
    """
    if device_type == "cuda":
        return dtype, False
    return torch.float32, dtype != torch.float32


def cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Parameters to ``dtype`` in place; buffers (rotary tables) keep fp32, for exact angles at long positions."""
    with torch.no_grad():
        for p in model.parameters():  # a tied head is one Parameter: it stays tied
            p.data = p.data.to(dtype)


def prepare_for_decoding(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Put ``model`` in eval mode on ``device`` with its weights as ``decode_precision`` says for ``dtype``;
    returns the dtype to autocast to around generation (float32: none)."""
    model.eval().to(device)
    weights_dtype, use_autocast = decode_precision(device.type, dtype)
    if weights_dtype != torch.float32:
        cast_weights(model, weights_dtype)
    return dtype if use_autocast else torch.float32


def cache_length(block_size: int, prompt_len: int, max_new_tokens: int, multiple: int = 64) -> int:
    """Slots the KV cache needs: prompt + new tokens rounded up to ``multiple`` (fewer graphs to compile
    across generations), never more than the window of ``block_size``."""
    need = -(-(prompt_len + max_new_tokens) // multiple) * multiple
    return min(block_size, need)


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


def check_generation_fits(config: "GPTConfig", tokenizer_vocab: int, batch_size: int, prompt_len: int,
                          max_new_tokens: int, dtype: torch.dtype, device: str, keep_tokens: bool = False,
                          fix: str = "generate fewer samples or tokens, or use a machine with more memory") -> None:
    """Refuse, before the model exists, a tokenizer that is not the model's or a job ``device`` cannot hold
    (the model, ``generation_bytes``, and with ``keep_tokens`` every sampled id kept until the end)."""
    if tokenizer_vocab > config.vocab_size:
        raise CheckpointError(f"the checkpoint's tokenizer has {tokenizer_vocab} tokens but its model only "
                              f"{config.vocab_size}: the run folder mixes files from different runs")
    need = config.model_bytes() + generation_bytes(config, batch_size, prompt_len, max_new_tokens, dtype.itemsize)
    if keep_tokens:
        need += 8 * batch_size * max_new_tokens
    ensure_fits(need, device, f"{batch_size} sample(s) of {max_new_tokens:,} tokens with this model "
                f"({config.num_params() / 1e6:,.1f}M parameters)", fix)


@functools.cache
def compiled_decode_step(device_type: str = "cpu") -> Callable:
    """``_decode_step`` under torch.compile for ``device_type``, built once per process (graphs are cached
    per shape and sampling setting)."""
    return torch.compile(_decode_step, **decode_compile_options(device_type))


def _mark_static(cache: KVCache) -> None:
    """Tell torch.compile the cache tensors keep their addresses, so a CUDA graph may write them in place.

    guard=False: a guarded address is an identity guard and a graph attribute, so every new cache
    (every generate call) would compile the step again, keep the old cache alive in the old graph,
    and past the recompile limit fall back to eager without a word. Unguarded, one graph serves
    every cache of the same shape (a CUDA graph re-records for a new address instead).
    """
    import torch._dynamo

    for t in (cache.k, cache.v, *(x for pair in cache.layers for x in pair)):
        torch._dynamo.mark_static_address(t, guard=False)


def _check_generation(idx: torch.Tensor, max_new_tokens: int, block: int, window_keep: int | None,
                      use_cache: bool, compile: bool) -> int:
    """ValueError/DeviceError for arguments generation cannot use; returns the window_keep in force."""
    if idx.dim() != 2 or idx.size(1) < 1:
        raise ValueError(f"idx must be a (B, T) tensor of token ids with T >= 1, got shape {tuple(idx.shape)}")
    if max_new_tokens is None or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if compile and not use_cache:
        raise ValueError("compile=True compiles the cached decode step: it needs use_cache=True")
    if compile:
        check_can_compile(idx.device)
    keep = block // 2 if window_keep is None else window_keep
    if not 1 <= keep <= block:
        raise ValueError(f"window_keep must be in [1, block_size={block}], got {window_keep}")
    return keep


@torch.inference_mode()
def generate_stream(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
                    repetition_penalty: float | None = None, stop_ids: list[int] | None = None,
                    seed: int | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
                    window_keep: int | None = None, compile: bool = False,
                    vocab_limit: int | None = None, kv_cache: KVCache | None = None,
                    on_step: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> Iterator[torch.Tensor]:
    """Yield each step's sampled tokens, (B,) int64, for up to ``max_new_tokens`` steps.

    ``vocab_limit``: only ids below it are sampled (a head padded past the tokenizer's vocabulary
    has rows no tokenizer can decode).

    ``kv_cache``: a cache an earlier call decoded into, reused when it has the shape this call needs
    (this model, batch size and length; else a new one is made). Its tensors keep their addresses,
    so the compiled step's CUDA graph is replayed for it, where each new cache would record it again.

    A row that samples one of ``stop_ids`` is finished: it keeps repeating that token, and
    the stream ends early once every row is finished. ``on_step`` (if given) sees each step's
    (B, V) logits exactly as the sampler received them (padded ids masked, repetition penalty
    applied) and the (B,) tokens it drew: a window onto the choices, for sample.py's --attention page.
    """
    check_sampling_args(temperature, top_k, top_p, min_p, repetition_penalty)
    cfg = model.config
    block = cfg.block_size
    keep = _check_generation(idx, max_new_tokens, block, window_keep, use_cache, compile)

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
    cache = None
    if use_cache:
        length = cache_length(block, T0, max_new_tokens)
        same = kv_cache is not None and kv_cache.shape == (cfg.n_layer, B, cfg.n_kv_head, length, cfg.head_dim)
        cache = kv_cache if same else model.new_kv_cache(B, length)
    pos = torch.zeros(1, dtype=torch.long, device=device) if compile else None  # the compiled step's token slot
    cache_start = start  # the cache holds tokens[cache_start : cache_start + cache.pos]
    seen = None
    if repetition_penalty is not None and repetition_penalty != 1.0:
        seen = torch.zeros(B, cfg.vocab_size, dtype=torch.bool, device=device).scatter_(1, idx, True)
    stop = torch.tensor(sorted(set(stop_ids)), device=device) if stop_ids else None
    sampling = (temperature, top_k, top_p, min_p)
    finished = torch.zeros(B, dtype=torch.bool, device=device) if stop is not None else None

    nxt = None  # the last sampled (B,) tokens
    for _ in range(max_new_tokens):
        if n - start > block:  # overflow: slide the window, keeping its last `keep` tokens
            start = n - keep
        weights = None
        if cache is None:
            logits, _ = model(tokens[:, start:n], last_only=True)
        elif cache_start != start or nxt is None:  # first step, or the window slid: (re-)prefill it
            cache.reset()
            cache_start = start
            logits, _ = model(tokens[:, start:n], kv_cache=cache, last_only=True)
            cache.advance(n - start)
            if compile:  # what CUDA graphs need; marked on every device so CPU runs the same path
                _mark_static(cache)
        elif not compile:  # decode: only the token sampled last step is new (cache_start + cache.pos == n - 1)
            logits, _ = model(nxt.view(B, 1), kv_cache=cache, last_only=True)
            cache.advance(1)
        else:  # the same decode step and the logit processing, compiled (the prefill's token shows up first)
            logits, weights = compiled_decode_step(device.type)(
                model, nxt.view(B, 1), cache, pos.fill_(cache.pos), seen, repetition_penalty, vocab_limit, *sampling)
            cache.advance(1)
        if weights is None:  # the eager paths: the same processing, outside a graph
            logits = _process_logits(logits.view(B, -1), seen, repetition_penalty, vocab_limit)  # (B, V)
            weights = sampling_weights(logits, *sampling)
        # cloned: a CUDA graph's outputs are overwritten by its next replay, and callers keep the tokens
        nxt = draw(weights, gen).clone()  # (B,)
        if on_step is not None:
            on_step(logits, nxt)
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
    """Continue ``idx`` (B, T); returns (B, T + new): the prompt and its continuation.

    ``callback`` (if given) receives each step's (B,) tokens as they are sampled. ``new`` is
    ``max_new_tokens`` unless every row hit a stop id first. Keyword arguments are those of
    ``generate_stream``: temperature, top_k, top_p, min_p, repetition_penalty, stop_ids, seed,
    generator, use_cache, window_keep, compile, vocab_limit, kv_cache, on_step.
    """
    steps = []
    for nxt in generate_stream(model, idx, max_new_tokens, **kwargs):
        steps.append(nxt)
        if callback is not None:
            callback(nxt)
    return torch.cat([idx, torch.stack(steps, dim=1)], dim=1)
