"""GPTConfig validation, presets, init, causality, KV cache vs full recompute, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_model
from model import GPT, GPTConfig, KVCache
from runtime.errors import ConfigError


TINY = dict(block_size=32, vocab_size=64, n_layer=2, n_head=4, n_embd=32)
PRESETS = {
    "classic": lambda **kw: GPTConfig.classic(**{**TINY, **kw}),
    "modern": lambda **kw: GPTConfig.modern(**{**TINY, **kw}),
    "modern-gqa": lambda **kw: GPTConfig.modern(**{**TINY, "n_kv_head": 2, **kw}),
}


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("field, kwargs", [
    ("n_embd", dict(n_embd=30, n_head=4)),
    ("n_kv_head", dict(n_head=4, n_kv_head=3)),
    ("block_size", dict(block_size=0)),
    ("vocab_size", dict(vocab_size=-1)),
    ("n_layer", dict(n_layer=0)),
    ("n_head", dict(n_head=0)),
    ("n_embd", dict(n_embd=0)),
    ("n_kv_head", dict(n_kv_head=0)),
    ("mlp_ratio", dict(mlp_ratio=0)),
    ("dropout", dict(dropout=1.0)),
    ("pos_emb", dict(pos_emb="alibi")),
    ("norm", dict(norm="batchnorm")),
    ("activation", dict(activation="swish")),
    ("logit_softcap", dict(logit_softcap=0.0)),
])
def test_config_rejects_bad_values_naming_the_field(field: str, kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=field) as e:
        GPTConfig(**{**TINY, **kwargs})
    assert "GPTConfig." not in str(e.value) and "\n" not in str(e.value)  # the field as the user spells it
    assert isinstance(e.value, ValueError)  # callers catching ValueError keep working


def test_config_rejects_odd_rotary_head_size() -> None:
    with pytest.raises(ConfigError, match="^pos_emb='rope' needs an even head size"):
        GPTConfig.modern(n_embd=36, n_head=4)  # head size 9


def test_config_round_trips_through_dict_and_rejects_unknown_fields() -> None:
    cfg = GPTConfig.modern(**TINY, n_kv_head=2)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_experts": 8})
    with pytest.raises(ConfigError, match="unknown model preset"):
        GPTConfig.preset("llama")


def test_presets_set_their_switches() -> None:
    c = GPTConfig.preset("classic")
    assert (c.pos_emb, c.norm, c.activation, c.bias, c.tie_embeddings, c.qk_norm, c.zero_init) == \
        ("learned", "layernorm", "gelu_tanh", True, True, False, False)
    assert c.logit_softcap is None and c.n_kv_head == c.n_head
    m = GPTConfig.preset("modern", n_kv_head=4)
    assert (m.pos_emb, m.norm, m.activation, m.bias, m.tie_embeddings, m.qk_norm) == \
        ("rope", "rmsnorm", "relu2", False, False, True)
    assert m.n_kv_head == 4
    assert GPTConfig.modern(logit_softcap=None).logit_softcap is None  # each switch is overridable


# ---------------------------------------------------------------------------- init and parameter counts


def expected_params(cfg: GPTConfig) -> int:
    """Parameter count from the architecture, written out by hand."""
    C, kv = cfg.n_embd, cfg.n_kv_head * cfg.head_dim
    b = 1 if cfg.bias else 0
    norm = C * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    attn = C * (C + 2 * kv) + b * (C + 2 * kv) + C * C + b * C
    mlp = C * cfg.mlp_ratio * C + b * cfg.mlp_ratio * C + cfg.mlp_ratio * C * C + b * C
    n = cfg.vocab_size * C + cfg.n_layer * (2 * norm + attn + mlp) + norm
    if cfg.pos_emb == "learned":
        n += cfg.block_size * C
    if not cfg.tie_embeddings:
        n += cfg.vocab_size * C
    return n


@pytest.mark.parametrize("preset", PRESETS)
def test_param_count_matches_hand_formula(preset: str) -> None:
    cfg = PRESETS[preset]()
    model = GPT(cfg)
    assert model.num_params() == expected_params(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected_params(cfg)


def test_gpt2_124m_shape_on_meta_device() -> None:
    cfg = GPTConfig.classic(vocab_size=50257, block_size=1024)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.lm_head.weight.is_meta
    assert model.num_params() == 124_439_808 == expected_params(cfg)
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_classic_init_is_gpt2s() -> None:
    cfg = GPTConfig.classic(block_size=64, vocab_size=512, n_layer=8, n_head=4, n_embd=256)
    torch.manual_seed(0)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    block = model.transformer.h[0]
    proj_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for w, std in ((block.attn.c_attn.weight, 0.02), (block.mlp.c_fc.weight, 0.02),
                   (block.attn.c_proj.weight, proj_std), (block.mlp.c_proj.weight, proj_std),
                   (model.transformer.wte.weight, 0.02), (model.transformer.wpe.weight, 0.02)):
        assert w.std().item() == pytest.approx(std, rel=0.05)
        assert abs(w.mean().item()) < std / 10
    assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.ln_1.weight == 1)


def test_modern_init_zeroes_output_projections_and_head() -> None:
    model = GPT(PRESETS["modern"]())
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.all(model.lm_head.weight == 0)
    assert all(torch.all(b.attn.c_proj.weight == 0) and torch.all(b.mlp.c_proj.weight == 0)
               for b in model.transformer.h)
    assert model.transformer.wte.weight.std() > 0.01
    logits, _ = model(torch.zeros(1, 3, dtype=torch.long))
    assert torch.all(logits == 0)  # uniform predictions at step 0


# ---------------------------------------------------------------------------- forward


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_shapes_loss_and_last_only(preset: str) -> None:
    model = random_model(PRESETS[preset]())
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    last, _ = model(idx, last_only=True)
    assert last.shape == (3, 1, 64)
    torch.testing.assert_close(last[:, 0], logits[:, -1])
    targets = torch.randint(0, 64, (3, 10))
    targets[0, :4] = -1  # ignored positions
    _, loss = model(idx, targets)
    keep = targets != -1
    ref = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, ref)


def test_logit_softcap_bounds_logits() -> None:
    model = random_model(PRESETS["modern"](logit_softcap=2.0), std=0.5)
    logits, _ = model(torch.randint(0, 64, (2, 16)))
    assert logits.abs().max() < 2.0
    uncapped = random_model(PRESETS["modern"](logit_softcap=None), std=0.5)
    raw, _ = uncapped(torch.randint(0, 64, (2, 16)))
    assert raw.abs().max() > 2.0  # the cap is doing something at this scale


def test_forward_refuses_more_than_block_size() -> None:
    model = GPT(PRESETS["classic"]())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 30, dtype=torch.long), kv_cache=cache)
    cache.advance(30)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


@pytest.mark.parametrize("preset", PRESETS)
def test_causality(preset: str) -> None:
    """Changing tokens after position t leaves the logits at positions <= t unchanged."""
    model = random_model(PRESETS[preset]())
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 64, (2, 24), generator=gen)
    base, _ = model(idx)
    for t in (0, 5, 22):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 64, (2, 23 - t), generator=gen)
        assert not torch.equal(changed, idx)
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:], atol=1e-3)  # the future does matter


def cached_forward(model: GPT, idx: torch.Tensor, cache: KVCache, **kw) -> torch.Tensor:
    """One forward over new tokens, then the caller's advance (the forward never moves the cache)."""
    logits, _ = model(idx, kv_cache=cache, **kw)
    cache.advance(idx.size(1))
    return logits


@pytest.mark.parametrize("preset", PRESETS)
def test_kv_cache_matches_full_recompute(preset: str) -> None:
    """Prefill, one-token decodes and a multi-token chunk after a cache all equal one full forward."""
    model = random_model(PRESETS[preset]())
    idx = torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)  # (3, 32, V)
    cache = model.new_kv_cache(3)
    pieces = [cached_forward(model, idx[:, :7], cache)]  # prefill 7
    for t in range(7, 12):  # 5 one-token decode steps
        pieces.append(cached_forward(model, idx[:, t:t + 1], cache))
    pieces.append(cached_forward(model, idx[:, 12:20], cache))  # a chunk of 8 after the cache
    pieces.append(cached_forward(model, idx[:, 20:21], cache))
    pieces.append(cached_forward(model, idx[:, 21:32], cache))  # chunk that fills the cache exactly
    assert cache.pos == 32
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    # the last_only path used by generation agrees too
    cache.reset()
    cached_forward(model, idx[:, :31], cache, last_only=True)
    last = cached_forward(model, idx[:, 31:], cache, last_only=True)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_fixed_shape_decode_matches_full_recompute(preset: str) -> None:
    """The input_pos path (what compiled decoding runs) equals one full forward, after a
    prefill and after a reset that leaves stale keys in the slots it must not see."""
    model = random_model(PRESETS[preset]())
    idx = torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(3))
    full, _ = model(idx)
    cache = model.new_kv_cache(3)
    model(torch.randint(0, 64, (3, 32), generator=torch.Generator().manual_seed(4)), kv_cache=cache)  # stale slots
    cache.reset()
    pieces = [cached_forward(model, idx[:, :7], cache)]  # eager prefill
    for t in range(7, 32):
        pos = torch.tensor([t])
        logits, _ = model(idx[:, t:t + 1], kv_cache=cache, input_pos=pos)
        assert cache.pos == 7  # the caller advances the cache on this path
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="input_pos needs a kv_cache"):
        model(idx[:, :1], input_pos=torch.tensor([0]))


def test_kv_cache_is_preallocated_and_reused() -> None:
    model = random_model(PRESETS["modern-gqa"]())
    cache = model.new_kv_cache(2)
    cached_forward(model, torch.zeros(2, 4, dtype=torch.long), cache)
    k = cache.k
    assert k.shape == (2, 2, 2, 32, 8)  # (n_layer, B, n_kv_head, block_size, head_dim)
    ptr = k.data_ptr()
    for _ in range(5):
        cached_forward(model, torch.zeros(2, 1, dtype=torch.long), cache)
    assert cache.k.data_ptr() == ptr and cache.pos == 9
    cache.reset()
    assert cache.pos == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_forward_never_moves_the_cache_and_input_pos_equals_cache_pos(preset: str) -> None:
    """One rule: the forward writes keys/values at kv_cache.pos (or at input_pos) and leaves pos
    alone, whichever path; the caller advances. input_pos = [pos, pos+T) gives the same logits
    as the implicit position, and a forward repeated without advancing overwrites the same slots."""
    model = random_model(PRESETS[preset]())
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    full, _ = model(idx)
    implicit, explicit = model.new_kv_cache(2), model.new_kv_cache(2)
    for cache in (implicit, explicit):
        model(idx[:, :5], kv_cache=cache)
        assert cache.pos == 0  # prefill did not advance
        cache.advance(5)
    for t in range(5, 12):
        a, _ = model(idx[:, t:t + 1], kv_cache=implicit)
        b, _ = model(idx[:, t:t + 1], kv_cache=explicit, input_pos=torch.tensor([explicit.pos]))
        assert implicit.pos == explicit.pos == t  # neither path moved the cache
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[:, 0], full[:, t], rtol=1e-4, atol=1e-4)
        again, _ = model(idx[:, t:t + 1], kv_cache=implicit)  # not advanced: the same slot, the same answer
        torch.testing.assert_close(again, a, rtol=0, atol=0)
        implicit.advance(1)
        explicit.advance(1)
    assert implicit.pos == explicit.pos == 12


def test_attn_dropout_defaults_to_dropout_and_drops_only_the_attention_weights() -> None:
    assert GPTConfig(dropout=0.1).attn_dropout == 0.1
    assert GPTConfig(dropout=0.1, attn_dropout=0.0).attn_dropout == 0.0
    with pytest.raises(ConfigError, match="attn_dropout must be in"):
        GPTConfig(attn_dropout=1.0)
    x = torch.randn(2, 16, 32)

    def attention_twice(attn_dropout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        cfg = GPTConfig.modern(n_layer=1, n_head=4, n_embd=32, block_size=16, vocab_size=64, zero_init=False,
                               dropout=0.5, attn_dropout=attn_dropout)
        attn = GPT(cfg).transformer.h[0].attn
        attn.resid_dropout.eval()  # the residual's own dropout aside: what is left is the weights' dropout
        rope = (GPT(cfg).rope_cos[:16], GPT(cfg).rope_sin[:16])
        train = [attn(x, rope, None, None, 0) for _ in range(2)]
        return *train, attn.eval()(x, rope, None, None, 0)

    a, b, evaluated = attention_twice(0.0)  # the fused, deterministic path even in training
    assert torch.equal(a, b) and torch.allclose(a, evaluated, atol=1e-6)
    a, b, evaluated = attention_twice(0.5)
    assert not torch.allclose(a, b) and not torch.allclose(a, evaluated)
