"""Generation: cache vs no cache, the window policy past block_size, stop ids, streams, seeds."""

from __future__ import annotations

import importlib

import pytest
import torch

from conftest import needs_cpu_compiler, random_model
from model import GPT, GPTConfig
from model.generate import generate_stream


V = 64


def tiny(preset: str, block_size: int = 32, **kw) -> GPT:
    cfg = GPTConfig.preset(preset, block_size=block_size, vocab_size=V, n_layer=2, n_head=2, n_embd=32, **kw)
    return random_model(cfg)


def prompt(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_greedy(model: GPT, idx: torch.Tensor, steps: int, keep: int,
                     repetition_penalty: float | None = None) -> torch.Tensor:
    """The documented window policy, written out with a full forward per token and no cache.

    The context is tokens[start:n]; when it would exceed block_size, start jumps so the last
    ``keep`` tokens remain (keep = block_size is nanoGPT's crop to the last block_size tokens).
    """
    block = model.config.block_size
    tokens = idx.clone()
    start = max(0, tokens.size(1) - block)
    for _ in range(steps):
        n = tokens.size(1)
        if n - start > block:
            start = n - keep
        logits = model(tokens[:, start:n])[0][:, -1]  # (B, V)
        if repetition_penalty is not None:
            for b in range(tokens.size(0)):
                for tok in set(tokens[b].tolist()):
                    x = logits[b, tok]
                    logits[b, tok] = x / repetition_penalty if x > 0 else x * repetition_penalty
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


@torch.no_grad()
def nanogpt_crop_greedy(model: GPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """nanoGPT's loop: crop to the last block_size tokens, full forward, argmax."""
    for _ in range(steps):
        logits = model(idx[:, -model.config.block_size:])[0]
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_greedy_with_and_without_cache_agree_across_the_window(preset: str) -> None:
    model = tiny(preset, block_size=256)
    idx = prompt(2, 5)
    cached = model.generate(idx, 300, temperature=0.0)
    uncached = model.generate(idx, 300, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 305)
    assert torch.equal(cached[:, :5], idx)
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, 5:].flatten().tolist())) > 1  # not a constant continuation


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_compiled_decoding_matches_reference_loop(preset: str) -> None:
    """torch.compile'd fixed-shape decode steps give the full-recompute tokens across window slides,
    compiling once per batch size (a recompile per position would make it useless)."""
    import torch._dynamo

    needs_cpu_compiler()
    model = tiny(preset)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        idx = prompt(2, 5, seed=4)
        out = model.generate(idx, 70, temperature=0.0, compile=True)
        assert torch.equal(out, reference_greedy(model, idx, 70, keep=16))
        again = prompt(2, 9, seed=5)  # a new cache and prompt reuse the same graph
        assert torch.equal(model.generate(again, 40, temperature=0.0, compile=True),
                           reference_greedy(model, again, 40, keep=16))


def test_repeated_compiled_generations_compile_once_and_free_their_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each generate call makes a new KV cache whose tensors are marked static (what a CUDA graph
    needs): five calls must reuse the one graph, and no graph may keep an old cache alive."""
    import gc
    import weakref

    import torch._dynamo
    from torch._dynamo.utils import counters

    needs_cpu_compiler()
    model = tiny("classic")
    buffers = []
    new_kv_cache = model.new_kv_cache

    def tracked(*args, **kwargs):
        cache = new_kv_cache(*args, **kwargs)
        buffers.append(cache)
        return cache

    monkeypatch.setattr(model, "new_kv_cache", tracked)
    torch._dynamo.reset()
    counters.clear()
    tensors = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(5):
            idx = prompt(2, 5, seed=10 + i)
            assert torch.equal(model.generate(idx, 12, temperature=0.0, compile=True),
                               reference_greedy(model, idx, 12, keep=16))
            cache = buffers.pop()
            tensors.append((weakref.ref(cache.k), weakref.ref(cache.v)))
            del cache
            gc.collect()
            assert all(k() is None and v() is None for k, v in tensors)  # nothing holds an old cache
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("preset", ["classic", "modern"])
@pytest.mark.parametrize("keep", [None, 20, 1])
def test_window_policy_matches_reference_loop(preset: str, keep: int | None) -> None:
    model = tiny(preset)
    idx = prompt(2, 9, seed=1)
    ref = reference_greedy(model, idx, 70, keep=32 // 2 if keep is None else keep)
    for use_cache in (True, False):
        out = model.generate(idx, 70, temperature=0.0, window_keep=keep, use_cache=use_cache)
        assert torch.equal(out, ref)


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_window_keep_block_size_is_nanogpt_crop(preset: str) -> None:
    model = tiny(preset)
    idx = prompt(2, 3, seed=2)
    ref = nanogpt_crop_greedy(model, idx, 50)
    for use_cache in (True, False):
        assert torch.equal(model.generate(idx, 50, temperature=0.0, window_keep=32, use_cache=use_cache), ref)


def test_prompt_longer_than_block_keeps_its_tail() -> None:
    model = tiny("classic")
    idx = prompt(1, 50, seed=3)
    out = model.generate(idx, 10, temperature=0.0)
    assert torch.equal(out[:, :50], idx)
    # the first new token only depends on the last block_size prompt tokens
    other = idx.clone()
    other[:, :18] = (idx[:, :18] + 1) % V
    assert torch.equal(model.generate(other, 10, temperature=0.0)[:, 50:], out[:, 50:])


class LogitRecorder:
    """Records the last-position logits of every forward pass the model makes."""

    def __init__(self, model: GPT) -> None:
        self.logits: list[torch.Tensor] = []
        self.handle = model.lm_head.register_forward_hook(lambda m, i, o: self.logits.append(o[:, -1].clone()))


@pytest.mark.parametrize("preset", ["classic", "modern"])
@pytest.mark.parametrize("keep", [None, 32])
@pytest.mark.parametrize("use_cache", [True, False])
def test_tokens_that_left_the_window_cannot_influence_logits(preset: str, keep: int | None, use_cache: bool) -> None:
    """Two prompts of exactly block_size tokens differ only in their first token.

    Step 1 sees the whole prompt, so its logits differ. From step 2 on the window has slid
    past the first token (by 1 with keep = block_size, nanoGPT's crop; by block_size + 1 - keep
    otherwise), so if step 1 picked the same token in both runs every later logit must be
    identical: nothing outside the window is attended, with or without the cache.
    """
    model = tiny(preset)
    base = prompt(1, 32, seed=4)
    found = 0
    for trial in range(20):
        other = base.clone()
        other[0, 0] = (base[0, 0] + 1 + trial) % V
        runs = []
        for p in (base, other):
            rec = LogitRecorder(model)
            out = model.generate(p, 12, temperature=0.0, window_keep=keep, use_cache=use_cache)
            rec.handle.remove()
            runs.append((out, torch.stack(rec.logits)))
        (out_a, logits_a), (out_b, logits_b) = runs
        if out_a[0, 32] != out_b[0, 32]:
            continue  # step 1 legitimately differed; try another far past
        assert not torch.allclose(logits_a[0], logits_b[0])  # the far past mattered while in the window
        assert torch.equal(out_a[:, 32:], out_b[:, 32:])
        torch.testing.assert_close(logits_a[1:], logits_b[1:], rtol=0, atol=1e-5)
        found += 1
    assert found >= 3


def test_stop_ids_stop_rows_independently() -> None:
    model = tiny("classic")
    idx = prompt(3, 4, seed=5)
    free = model.generate(idx, 40, temperature=0.0)[:, 4:]  # (3, 40) unstopped greedy continuation
    stop_a, stop_b = free[0, 3].item(), free[1, 10].item()
    stops = {stop_a, stop_b}

    def first_stop(row: torch.Tensor) -> int | None:
        hits = [i for i, t in enumerate(row.tolist()) if t in stops]
        return hits[0] if hits else None

    firsts = [first_stop(free[b]) for b in range(3)]
    out = model.generate(idx, 40, temperature=0.0, stop_ids=[stop_a, stop_b])
    new = out[:, 4:]
    if all(f is not None for f in firsts):
        assert new.size(1) == max(firsts) + 1  # ends early once every row has stopped
    else:
        assert new.size(1) == 40
    for b, f in enumerate(firsts):
        if f is None:
            assert torch.equal(new[b], free[b, :new.size(1)])
        else:
            assert torch.equal(new[b, :f + 1], free[b, :f + 1])  # identical until its stop token
            assert torch.all(new[b, f:] == free[b, f])  # then repeats it


def test_generation_ends_when_all_rows_stop() -> None:
    model = tiny("modern")
    idx = prompt(2, 4, seed=6)
    free = model.generate(idx, 20, temperature=0.0)[:, 4:]
    out = model.generate(idx, 20, temperature=0.0, stop_ids=free[:, 0].tolist())
    assert out.shape == (2, 5)
    assert torch.equal(out[:, 4], free[:, 0])


@pytest.mark.parametrize("use_cache", [True, False])
def test_stream_callback_and_tensor_forms_agree(use_cache: bool) -> None:
    model = tiny("modern")
    idx = prompt(2, 6, seed=7)
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, seed=11, use_cache=use_cache)
    tensor = model.generate(idx, 40, **kw)
    streamed = torch.stack(list(model.generate_stream(idx, 40, **kw)), dim=1)
    calls: list[torch.Tensor] = []
    again = model.generate(idx, 40, callback=calls.append, **kw)
    assert torch.equal(tensor[:, 6:], streamed)
    assert torch.equal(again, tensor)
    assert torch.equal(torch.stack(calls, dim=1), streamed)
    assert torch.equal(torch.stack(list(generate_stream(model, idx, 40, **kw)), dim=1), streamed)


@pytest.mark.parametrize("use_cache", [True, False])
def test_on_step_sees_the_logits_sampled_from_and_changes_nothing(use_cache: bool) -> None:
    model = tiny("modern")
    idx = prompt(2, 5, seed=12)
    kw = dict(temperature=0.8, top_k=10, repetition_penalty=1.3, seed=5, use_cache=use_cache)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    out = model.generate(idx, 12, on_step=lambda logits, nxt: seen.append((logits.clone(), nxt.clone())), **kw)
    assert torch.equal(out, model.generate(idx, 12, **kw))  # the hook does not disturb the draws
    assert len(seen) == 12
    for step, (logits, nxt) in enumerate(seen):
        n = 5 + step
        assert torch.equal(nxt, out[:, n])
        with torch.no_grad():  # the reference: a full forward, then the CTRL penalty on the tokens so far
            ref = model(out[:, :n])[0][:, -1]
        penalised = torch.where(ref > 0, ref / 1.3, ref * 1.3)
        seen_mask = torch.zeros_like(ref, dtype=torch.bool).scatter_(1, out[:, :n], True)
        torch.testing.assert_close(logits, torch.where(seen_mask, penalised, ref), rtol=0, atol=1e-5)


def test_seed_and_generator_reproduce_and_differ() -> None:
    model = tiny("classic")
    idx = prompt(2, 3, seed=8)
    a = model.generate(idx, 30, temperature=1.0, seed=123)
    assert torch.equal(a, model.generate(idx, 30, temperature=1.0, seed=123))
    assert not torch.equal(a, model.generate(idx, 30, temperature=1.0, seed=124))
    g = torch.Generator().manual_seed(123)
    assert torch.equal(a, model.generate(idx, 30, temperature=1.0, generator=g))
    # cached and uncached paths draw the same samples from the same seed
    assert torch.equal(a, model.generate(idx, 30, temperature=1.0, seed=123, use_cache=False))


def test_batched_rows_match_single_rows() -> None:
    model = tiny("modern")
    idx = prompt(3, 5, seed=9)
    batched = model.generate(idx, 25, temperature=0.0)
    for b in range(3):
        assert torch.equal(batched[b:b + 1], model.generate(idx[b:b + 1], 25, temperature=0.0))


def test_repetition_penalty_matches_reference() -> None:
    model = tiny("classic")
    idx = prompt(2, 6, seed=10)
    out = model.generate(idx, 20, temperature=0.0, repetition_penalty=1.8)
    assert torch.equal(out, reference_greedy(model, idx, 20, keep=16, repetition_penalty=1.8))
    assert not torch.equal(out, model.generate(idx, 20, temperature=0.0))


def test_generate_leaves_training_mode_and_grad_alone() -> None:
    model = tiny("classic")
    model.train()
    out = model.generate(prompt(1, 2), 3, temperature=0.0)
    assert model.training and not out.requires_grad


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_new_tokens=0), r">= 1"),
    (dict(temperature=-1.0), r">= 0"),
    (dict(top_p=0.0), r"\(0, 1\]"),
    (dict(top_p=1.01), r"\(0, 1\]"),
    (dict(top_k=-3), r">= 0"),
    (dict(min_p=1.5), r"\[0, 1\]"),
    (dict(repetition_penalty=0.0), r"> 0"),
    (dict(window_keep=0), r"\[1, block_size"),
    (dict(window_keep=33), r"\[1, block_size"),
    (dict(compile=True, use_cache=False), r"needs use_cache=True"),
])
def test_invalid_arguments_raise_with_the_range(kwargs: dict, match: str) -> None:
    model = tiny("classic")
    args = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        model.generate(prompt(1, 2), args.pop("max_new_tokens"), **args)


def test_invalid_prompt_shape_raises() -> None:
    model = tiny("classic")
    with pytest.raises(ValueError, match="idx"):
        model.generate(torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="idx"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)


def test_compile_without_a_cpp_compiler_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = importlib.import_module("model.generate")  # `import model.generate` would give the function
    from runtime.errors import DeviceError

    monkeypatch.setattr(gen, "cpu_compiler", lambda: None)
    with pytest.raises(DeviceError, match=r"^--compile: torch\.compile on CPU needs a C\+\+ compiler") as e:
        gen.check_can_compile(torch.device("cpu"))
    assert "\n" not in str(e.value)
    with pytest.raises(DeviceError, match="needs a C\\+\\+ compiler"):
        next(tiny("classic").generate_stream(prompt(1, 2), 3, temperature=0.0, compile=True))
    gen.check_can_compile(torch.device("meta"))  # only CPU compilation needs the compiler


def test_sampling_arguments_are_checked_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = importlib.import_module("model.generate")  # `import model.generate` would give the function
    from runtime.errors import ConfigError

    calls = []
    real = gen.check_sampling_args
    monkeypatch.setattr(gen, "check_sampling_args", lambda *a: (calls.append(a), real(*a))[1])
    out = tiny("classic").generate(prompt(1, 2), 20, temperature=0.9, top_k=5, seed=1)
    assert out.shape == (1, 22) and len(calls) == 1  # not once per token
    with pytest.raises(ConfigError, match="top_k must be >= 0"):
        tiny("classic").generate(prompt(1, 2), 5, top_k=-1)


@pytest.fixture
def cuda_autocast_rms_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's autocast (torch >= 2.12) runs rms_norm in fp32; CPU's keeps bf16. Make CPU do what CUDA does."""
    import torch.nn.functional as F

    real = F.rms_norm

    def fp32_under_autocast(x, *args, **kwargs):
        if torch.is_autocast_enabled("cpu"):
            return real(x.float(), *args, **kwargs)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(F, "rms_norm", fp32_under_autocast)


@torch.no_grad()
def test_kv_cache_holds_the_attention_dtype_under_a_cuda_like_autocast(cuda_autocast_rms_norm) -> None:
    """modern (QK-norm): k leaves the norm in fp32 while v is bf16; the cache must be bf16 (half the memory,
    and one dtype for the compiled step's index_copy_), and cached decoding must match the full forward."""
    model = tiny("modern")
    idx = prompt(1, 12, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F_rms_norm_is_fp32()
        full = model(idx)[0][:, -1]  # (1, V)
        cache = model.new_kv_cache(1)
        model(idx[:, :-1], kv_cache=cache)
        cache.advance(11)
        step = model(idx[:, -1:], kv_cache=cache)[0][:, -1]
    assert cache.k.dtype == cache.v.dtype == torch.bfloat16
    torch.testing.assert_close(step, full, rtol=0.05, atol=0.05)
    assert torch.equal(step.argmax(-1), full.argmax(-1))


def F_rms_norm_is_fp32() -> bool:
    return torch.nn.functional.rms_norm(torch.ones(2, 4, dtype=torch.bfloat16), (4,)).dtype == torch.float32


def test_fixed_shape_cache_write_under_a_cuda_like_autocast(cuda_autocast_rms_norm) -> None:
    """The compiled step's write (index_copy_ at input_pos) needs one dtype for cache and keys: under a
    CUDA-like autocast a modern model's normed keys come out fp32 while its values are bf16."""
    model = tiny("modern")
    idx = prompt(1, 8, seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(idx)[0][:, -1]
        cache = model.new_kv_cache(1)
        model(idx[:, :-1], kv_cache=cache)
        cache.advance(7)
        step = model(idx[:, -1:], kv_cache=cache, input_pos=torch.tensor([7]))[0][:, -1]
    assert cache.k.dtype == torch.bfloat16
    torch.testing.assert_close(step, full, rtol=0.05, atol=0.05)


def test_compiled_decoding_under_a_cuda_like_autocast(cuda_autocast_rms_norm, monkeypatch) -> None:
    """`sample.py --compile` with a modern checkpoint on CUDA, compiled for real: a bf16 cache, and the
    tokens of eager decoding."""
    import torch._dynamo

    needs_cpu_compiler()
    model = tiny("modern", block_size=64)
    caches = []
    new_cache = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda *a, **k: caches.append(new_cache(*a, **k)) or caches[-1])
    idx = prompt(1, 5, seed=6)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compiled = model.generate(idx, 12, temperature=0.0, compile=True)
        eager = model.generate(idx, 12, temperature=0.0)
    assert caches[0].k.dtype == caches[0].v.dtype == torch.bfloat16
    assert torch.equal(compiled, eager)


# ---------------------------------------------------------------------------- the GPU decode recipe


def test_decode_compile_options_per_device() -> None:
    """CUDA: CUDA graphs (reduce-overhead) and no Inductor options, which torch.compile refuses beside a mode."""
    gen = importlib.import_module("model.generate")
    cuda, cpu = gen.decode_compile_options("cuda"), gen.decode_compile_options("cpu")
    assert cuda == {"fullgraph": True, "dynamic": False, "mode": "reduce-overhead"}
    assert cpu == {"fullgraph": True, "dynamic": False, "options": gen.INDUCTOR_OPTIONS}
    for kwargs in (cuda, cpu):
        torch.compile(lambda x: x + 1, **kwargs)  # accepted (building is lazy: nothing compiles here)
    with pytest.raises(RuntimeError, match="mode or options"):
        torch.compile(lambda x: x + 1, mode="reduce-overhead", options=gen.INDUCTOR_OPTIONS)


def test_decode_precision_per_device() -> None:
    gen = importlib.import_module("model.generate")
    assert gen.decode_precision("cuda", torch.bfloat16) == (torch.bfloat16, False)  # cast once, no autocast
    assert gen.decode_precision("cuda", torch.float16) == (torch.float16, False)
    assert gen.decode_precision("cuda", torch.float32) == (torch.float32, False)
    assert gen.decode_precision("cpu", torch.bfloat16) == (torch.float32, True)
    assert gen.decode_precision("cpu", torch.float32) == (torch.float32, False)
    assert gen.decode_precision("mps", torch.float16) == (torch.float32, True)


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_cast_weights_keeps_ties_and_rotary_tables(preset: str) -> None:
    """bf16 weights without autocast decode like fp32 weights under bf16 autocast, the tie stays one tensor,
    and the rotary tables stay fp32 (bf16 angles drift at long positions)."""
    gen = importlib.import_module("model.generate")
    model, reference = tiny(preset), tiny(preset)
    gen.cast_weights(model, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.long) for b in model.buffers())
    if model.config.tie_embeddings:
        assert model.lm_head.weight is model.transformer.wte.weight
    idx = prompt(1, 10, seed=7)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = reference(idx)[0]
        got = model(idx)[0]
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("prompt_len, new, slots", [(5, 10, 64), (60, 4, 64), (5, 60, 128), (5, 300, 256),
                                                    (300, 5, 256)])
def test_the_cache_holds_prompt_plus_new_tokens(monkeypatch, prompt_len: int, new: int, slots: int) -> None:
    model = tiny("modern", block_size=256)
    caches = []
    new_cache = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda *a, **k: caches.append(new_cache(*a, **k)) or caches[-1])
    idx = prompt(1, prompt_len, seed=8)
    out = model.generate(idx, new, temperature=0.0)
    assert caches[0].max_len == slots
    assert torch.equal(out, reference_greedy(model, idx, new, keep=128))


def test_compiled_sampling_matches_eager_sampling() -> None:
    """The compiled step now also masks padded ids, applies the penalty and filters; the seeded draw
    outside it gives the eager path's tokens."""
    import torch._dynamo

    needs_cpu_compiler()
    model = tiny("classic", block_size=64)
    idx = prompt(2, 4, seed=9)
    kwargs = dict(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.3, vocab_limit=50, seed=3)
    torch._dynamo.reset()
    compiled = model.generate(idx, 30, compile=True, **kwargs)
    eager = model.generate(idx, 30, **kwargs)
    assert torch.equal(compiled, eager)
    assert int(compiled[:, 4:].max()) < 50  # never a padded id


@pytest.mark.parametrize("use_cache", [True, False])
def test_vocab_limit_never_samples_padded_ids(use_cache: bool) -> None:
    """A head padded past the tokenizer (64 rows, 40 ids) whose padded rows dominate: never drawn."""
    model = tiny("classic")
    with torch.no_grad():
        model.lm_head.weight[40:] *= 50  # tied: large padded logits
    idx = prompt(3, 4, seed=10)
    free = model.generate(idx, 20, temperature=1.0, seed=1, use_cache=use_cache)
    assert int(free[:, 4:].max()) >= 40  # without the limit the padded ids win
    for temperature in (0.0, 1.0):
        limited = model.generate(idx, 20, temperature=temperature, seed=1, vocab_limit=40, use_cache=use_cache)
        assert int(limited[:, 4:].max()) < 40


# ---------------------------------------------------------------------------- before generating


def test_check_generation_fits_counts_model_cache_and_kept_tokens(monkeypatch) -> None:
    from model.generate import check_generation_fits, generation_bytes
    from runtime.errors import CheckpointError, DeviceError
    from runtime.memory import MEMORY_ENV

    cfg = GPTConfig.classic(block_size=64, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
    with pytest.raises(CheckpointError, match="tokenizer has 101 tokens but its model only 100"):
        check_generation_fits(cfg, 101, 1, 4, 10, torch.float32, "cpu")
    # what it must hold, counted here from the shapes: fp32 weights, the cache, tokens, logits; kept ids
    need = 4 * cfg.num_params() + 8 * 64 + generation_bytes(cfg, 3, 4, 1000, 4)  # + the position ids
    kv = 2 * 2 * 3 * 2 * 64 * 16 * 4
    assert generation_bytes(cfg, 3, 4, 1000, 4) == kv + 8 * 3 * 1004 + 2 * 4 * 3 * 100
    monkeypatch.setenv(MEMORY_ENV, str(need + 8 * 3 * 1000))
    check_generation_fits(cfg, 100, 3, 4, 1000, torch.float32, "cpu", keep_tokens=True)  # exactly enough
    with pytest.raises(DeviceError, match="3 sample\\(s\\) of 1,001 tokens.*fewer please"):
        check_generation_fits(cfg, 100, 3, 4, 1001, torch.float32, "cpu", keep_tokens=True, fix="fewer please")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepare_for_decoding_on_cpu_keeps_fp32_weights_under_autocast(dtype) -> None:
    from model.generate import prepare_for_decoding

    model = tiny("modern").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepare_for_decoding(model, torch.device("cpu"), dtype) == dtype  # fp32: float32 means no autocast
    assert not model.training
    assert all(torch.equal(before[k], v) and v.dtype == before[k].dtype for k, v in model.state_dict().items())


def test_compiled_generations_reuse_one_cache_given_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache handed to five compiled generate calls of one shape is the one they decode into: no new
    cache is made, its storage keeps its address (what lets a CUDA graph be replayed, not re-recorded),
    one graph is compiled, and each call still gives the full-recompute tokens. Another shape gets a
    cache of its own."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    gen = importlib.import_module("model.generate")
    needs_cpu_compiler()
    model = tiny("classic")
    cache = model.new_kv_cache(2, gen.cache_length(model.config.block_size, 5, 12))
    made = []
    new_kv_cache = model.new_kv_cache
    monkeypatch.setattr(model, "new_kv_cache", lambda *a, **k: made.append(a) or new_kv_cache(*a, **k))
    torch._dynamo.reset()
    counters.clear()
    addresses = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(5):
            idx = prompt(2, 5, seed=20 + i)
            assert torch.equal(model.generate(idx, 12, temperature=0.0, compile=True, kv_cache=cache),
                               reference_greedy(model, idx, 12, keep=16))
            addresses.add((cache.k.data_ptr(), cache.v.data_ptr()))
    assert made == [] and len(addresses) == 1
    assert counters["stats"]["unique_graphs"] == 1
    idx = prompt(3, 5, seed=30)  # a batch of 3: the given cache (2 rows) does not fit
    assert torch.equal(model.generate(idx, 12, temperature=0.0, kv_cache=cache),
                       reference_greedy(model, idx, 12, keep=16))
    assert len(made) == 1 and made[0][0] == 3 and addresses == {(cache.k.data_ptr(), cache.v.data_ptr())}
