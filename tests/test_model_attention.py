"""GPT.attention_maps and model/attention.py: the spelled-out weights are the ones the network uses.

References: each layer's own SDPA output (captured by hooks during a normal forward), a numpy
softmax(QKᵀ/√d) computed from the classic model's raw c_attn weights, and Hugging Face
transformers' GPT-2 (eager attention, output_attentions=True) for an imported GPT-2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import random_model
from model import GPT, GPTConfig
from model.attention import causal_attention_weights

TINY = dict(block_size=32, vocab_size=64, n_layer=3, n_head=4, n_embd=32)
CONFIGS = {
    "classic": lambda: GPTConfig.classic(**TINY),
    "modern": lambda: GPTConfig.modern(**TINY),
    "modern-gqa": lambda: GPTConfig.modern(**TINY, n_kv_head=2),
    "classic-gqa-1kv": lambda: GPTConfig.classic(**TINY, n_kv_head=1),
}


def sdpa_outputs(model: GPT, idx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each layer's attention input (B, T, C) and SDPA output re-assembled (B, T, C), from a normal forward."""
    inputs, outputs, handles = [], [], []
    for block in model.transformer.h:
        handles.append(block.attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach())))
        handles.append(block.attn.c_proj.register_forward_pre_hook(lambda m, a: outputs.append(a[0].detach())))
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def values(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """V (B, nkv, T, hs) straight from c_attn's last rows: values get neither rotary nor QK-norm."""
    B, T, C = x.shape
    nkv, hs = attn.n_kv_head, attn.head_dim
    v = torch.nn.functional.linear(x, attn.c_attn.weight, attn.c_attn.bias)[..., C + nkv * hs:]
    return v.view(B, T, nkv, hs).transpose(1, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_weights_times_values_reproduce_each_layers_sdpa_output(name: str) -> None:
    cfg = CONFIGS[name]()
    model = random_model(cfg, seed=1)
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    maps = model.attention_maps(idx)
    assert maps.shape == (cfg.n_layer, 2, cfg.n_head, 20, 20) and maps.dtype == torch.float32
    inputs, outputs = sdpa_outputs(model, idx)
    group = cfg.n_head // cfg.n_kv_head
    for layer, block in enumerate(model.transformer.h):
        v = values(block.attn, inputs[layer]).repeat_interleave(group, dim=1)  # query head h reads kv head h // group
        y = (maps[layer] @ v).transpose(1, 2).reshape(2, 20, cfg.n_embd)
        torch.testing.assert_close(y, outputs[layer], rtol=0, atol=1e-5)
    # the maps are sharp enough that a wrong pairing or a missing rotary would not pass by luck
    assert maps.amax() > 0.5


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rows_sum_to_one_and_the_future_gets_exactly_zero(name: str) -> None:
    cfg = CONFIGS[name]()
    model = random_model(cfg, seed=3)
    idx = torch.randint(0, cfg.vocab_size, (1, cfg.block_size), generator=torch.Generator().manual_seed(4))
    maps = model.attention_maps(idx)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), rtol=0, atol=1e-5)
    future = torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool).triu(diagonal=1)
    assert torch.all(maps[..., future] == 0.0)
    assert torch.all(maps[..., ~future] > 0.0)  # softmax never cuts a visible token to exactly 0 here
    assert torch.all(maps[..., 0, 0] == 1.0)  # the first token can only attend to itself


def numpy_layer0(model: GPT, ids: list[int]) -> np.ndarray:
    """Layer 0's (nh, T, T) weights of a classic model from its raw tensors, in float64 numpy."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    T, C, nh = len(ids), cfg.n_embd, cfg.n_head
    hs = C // nh
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:T]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / np.sqrt(var + cfg.norm_eps) * sd["transformer.h.0.ln_1.weight"] + sd["transformer.h.0.ln_1.bias"]
    qkv = h @ sd["transformer.h.0.attn.c_attn.weight"].T + sd["transformer.h.0.attn.c_attn.bias"]  # (T, 3C)
    out = np.zeros((nh, T, T))
    for head in range(nh):
        q = qkv[:, head * hs:(head + 1) * hs]
        k = qkv[:, C + head * hs:C + (head + 1) * hs]
        scores = q @ k.T / math.sqrt(hs)
        scores[np.triu_indices(T, 1)] = -np.inf
        e = np.exp(scores - scores.max(-1, keepdims=True))
        out[head] = e / e.sum(-1, keepdims=True)
    return out


def test_classic_layer0_equals_an_independent_numpy_softmax() -> None:
    model = random_model(GPTConfig.classic(**TINY), seed=5)
    ids = torch.randint(0, 64, (24,), generator=torch.Generator().manual_seed(6)).tolist()
    maps = model.attention_maps(torch.tensor([ids]))
    np.testing.assert_allclose(maps[0, 0].numpy(), numpy_layer0(model, ids), rtol=0, atol=1e-5)


def test_imported_gpt2_maps_equal_transformers_attentions(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from model.checkpoint import from_pretrained

    torch.manual_seed(7)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=100,
                                  bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.1)
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ours = from_pretrained(str(tmp_path))
    idx = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref = torch.stack(hf(idx, output_attentions=True).attentions)  # (L, B, nh, T, T)
    maps = ours.attention_maps(idx)
    assert maps.shape == ref.shape
    torch.testing.assert_close(maps, ref, rtol=0, atol=1e-5)


def test_attention_maps_leave_the_model_as_they_found_it() -> None:
    model = random_model(GPTConfig.modern(**TINY, dropout=0.2), seed=9).train()
    idx = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(10))
    a, b = model.attention_maps(idx), model.attention_maps(idx)
    assert torch.equal(a, b)  # eval mode inside: no dropout, so the same maps twice
    assert model.training and not a.requires_grad
    with pytest.raises(ValueError, match="block_size is 32"):
        model.attention_maps(torch.zeros(1, 33, dtype=torch.long))


def test_causal_attention_weights_pairs_query_heads_with_their_key_group() -> None:
    gen = torch.Generator().manual_seed(11)
    q, k = torch.randn(1, 4, 5, 8, generator=gen), torch.randn(1, 2, 5, 8, generator=gen)
    w = causal_attention_weights(q, k)
    for head in range(4):  # heads 0, 1 read key head 0; heads 2, 3 read key head 1 (SDPA's enable_gqa)
        alone = causal_attention_weights(q[:, head:head + 1], k[:, head // 2:head // 2 + 1])
        assert torch.equal(w[:, head:head + 1], alone)
