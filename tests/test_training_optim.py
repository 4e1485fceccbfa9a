"""training/optim.py: the learning-rate schedule and which parameter goes to which optimizer group."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model import GPT, GPTConfig
from training.config import TrainConfig
from training.muon import Muon
from training.optim import configure_optimizers, lr_multiplier, set_lr

BASE = TrainConfig(max_iters=100, warmup_iters=10, learning_rate=1.0, min_lr=0.1)


def schedule(cfg: TrainConfig, until: int | None = None) -> list[float]:
    return [lr_multiplier(i, cfg) for i in range((until or cfg.max_iters) + 1)]


# ---------------------------------------------------------------------------- lr_multiplier


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_warmup_starts_above_zero_and_reaches_one_at_its_end(kind: str) -> None:
    m = schedule(dataclasses.replace(BASE, lr_schedule=kind))
    assert m[0] == pytest.approx(1 / 11) and m[0] > 0  # step 0 already learns
    assert all(a < b for a, b in zip(m[:10], m[1:11]))  # strictly rising through the warmup
    assert m[9] < 1.0 and m[10] == 1.0  # the peak exactly when warmup ends
    assert max(m) == 1.0


def test_cosine_decays_smoothly_to_min_lr_over_learning_rate() -> None:
    m = schedule(BASE, until=150)
    assert all(a >= b for a, b in zip(m[10:], m[11:]))  # never rises after the warmup
    assert m[55] == pytest.approx(0.55)  # halfway down the cosine: (1 + floor) / 2
    assert m[100] == pytest.approx(0.1) and all(x == pytest.approx(0.1) for x in m[100:])  # flat at the floor
    for i in (20, 40, 70, 90):  # the cosine itself, not merely something decreasing
        frac = (i - 10) / 90
        assert m[i] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def test_floor_defaults_to_a_tenth_and_follows_the_peak() -> None:
    cfg = TrainConfig(max_iters=50, warmup_iters=5, learning_rate=6e-4)  # min_lr none: learning_rate / 10
    assert lr_multiplier(50, cfg) == pytest.approx(0.1)
    cfg = TrainConfig(max_iters=50, warmup_iters=5, learning_rate=6e-4, min_lr=6e-5 / 2)
    assert lr_multiplier(50, cfg) == pytest.approx(0.05)
    cfg = TrainConfig(max_iters=100, warmup_iters=5, learning_rate=1.0, min_lr=0.2, lr_decay_iters=40)
    assert lr_multiplier(40, cfg) == pytest.approx(0.2) == lr_multiplier(99, cfg)  # ends at lr_decay_iters


def test_wsd_is_flat_then_a_linear_cooldown_to_the_floor() -> None:
    cfg = dataclasses.replace(BASE, lr_schedule="wsd", cooldown_frac=0.2)
    m = schedule(cfg)
    assert all(x == 1.0 for x in m[10:81])  # stable until the last 20% of the run
    assert m[90] == pytest.approx(0.55) and m[100] == pytest.approx(0.1)
    steps = [a - b for a, b in zip(m[80:100], m[81:101])]
    assert all(s == pytest.approx(0.9 / 20) for s in steps)  # linear: equal steps down


def test_decay_lr_false_is_constant() -> None:
    cfg = dataclasses.replace(BASE, decay_lr=False)
    assert set(schedule(cfg, until=200)) == {1.0}  # no warmup either: nanoGPT's constant lr
    assert lr_multiplier(0, dataclasses.replace(BASE, warmup_iters=0)) == 1.0


def test_set_lr_scales_each_groups_base_lr() -> None:
    cfg = TrainConfig(optimizer="muon", learning_rate=2e-3, muon_lr=0.02)
    opts = configure_optimizers(tiny("modern"), cfg, "cpu")
    set_lr(opts, 0.5)
    assert [g["lr"] for g in opts[0].param_groups] == [1e-3, 1e-3]
    assert [g["lr"] for g in opts[1].param_groups] == [0.01]


# ---------------------------------------------------------------------------- configure_optimizers


def tiny(preset: str) -> GPT:
    return GPT(GPTConfig.preset(preset, block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32))


def ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_adamw_decays_matrices_and_embeddings_but_not_biases_or_norms(preset: str) -> None:
    model = tiny(preset)
    cfg = TrainConfig(optimizer="adamw", weight_decay=0.1, learning_rate=3e-4, beta1=0.8, beta2=0.95)
    opts = configure_optimizers(model, cfg, "cpu")
    assert len(opts) == 1 and isinstance(opts[0], torch.optim.AdamW)
    decay, no_decay = opts[0].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())  # a tied head appears once
    no_decay_names = {n for n, p in named.items() if id(p) in ids(no_decay["params"])}
    assert no_decay_names == {n for n in named if n.endswith(".bias") or "ln_" in n}
    assert ids(decay["params"]) == {id(p) for n, p in named.items() if n not in no_decay_names}
    assert "transformer.wte.weight" not in no_decay_names  # embeddings decay, as nanoGPT's 2-D rule says
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)  # every parameter exactly once
    assert opts[0].defaults["betas"] == (0.8, 0.95) and decay["lr"] == 3e-4 and decay["base_lr"] == 3e-4
    assert opts[0].defaults["fused"] is True  # the fused kernel on CPU


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_muon_takes_exactly_the_blocks_matrices(preset: str) -> None:
    model = tiny(preset)
    cfg = TrainConfig(optimizer="muon", muon_lr=0.03, muon_momentum=0.9, weight_decay=0.1)
    adamw, muon = configure_optimizers(model, cfg, "cpu", muon_dtype="bfloat16")
    assert isinstance(muon, Muon) and muon.param_groups[0]["ortho_dtype"] == "bfloat16"
    assert configure_optimizers(model, cfg, "cpu")[1].param_groups[0]["ortho_dtype"] == "float32"  # the safe default
    named = dict(model.named_parameters())
    hidden = {n for n, p in named.items() if n.startswith("transformer.h.") and p.dim() == 2}
    assert hidden and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in hidden)
    (group,) = muon.param_groups
    assert ids(group["params"]) == {id(named[n]) for n in hidden}
    assert group["lr"] == 0.03 and group["base_lr"] == 0.03 and group["momentum"] == 0.9
    # embeddings, the head and position table stay with AdamW; norms and biases without decay
    rest = ids(adamw.param_groups[0]["params"]) | ids(adamw.param_groups[1]["params"])
    assert rest == {id(p) for n, p in named.items() if n not in hidden}
    assert id(named["transformer.wte.weight"]) in ids(adamw.param_groups[0]["params"])
    assert all(p.dim() < 2 for p in adamw.param_groups[1]["params"])


def test_frozen_parameters_are_left_out() -> None:
    model = tiny("classic")
    model.transformer.wpe.weight.requires_grad_(False)
    (adamw,) = configure_optimizers(model, TrainConfig(optimizer="adamw"), "cpu")
    assert id(model.transformer.wpe.weight) not in ids(p for g in adamw.param_groups for p in g["params"])
