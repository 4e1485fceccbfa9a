"""training/precision.py: the CPU bf16 probe decides by measured time and leaves the run untouched."""

from __future__ import annotations

import itertools

import pytest
import torch

import training.precision as precision
from model import GPT, GPTConfig


def tiny() -> GPT:
    return GPT(GPTConfig.modern(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))


def test_cpu_bf16_probe_leaves_the_rng_stream_and_the_model_alone() -> None:
    """dtype=auto on CPU times a throwaway copy; the training RNG must not notice (exact resume)."""
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    precision.cpu_bf16_pays(model, batch_size=4, block_size=16)
    assert torch.equal(torch.rand(4), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


class FakeClock:
    """perf_counter for the probe: a trial (two readings) takes ``fp32`` seconds until the probe has
    made its bf16 autocast context (``bf16_seen``), then ``bf16`` seconds."""

    def __init__(self, fp32: float, bf16: float) -> None:
        self.fp32, self.bf16 = fp32, bf16
        self.now = 0.0
        self.calls = itertools.count()
        self.bf16_seen = False

    def perf_counter(self) -> float:
        if next(self.calls) % 2 == 1:  # the end of a trial: advance by that trial's cost
            self.now += self.bf16 if self.bf16_seen else self.fp32
        return self.now


@pytest.mark.parametrize("fp32, bf16, pays", [(1.0, 0.5, True), (1.0, 0.96, False), (1.0, 2.0, False)])
def test_bf16_is_chosen_only_when_measured_at_least_5_percent_faster(monkeypatch: pytest.MonkeyPatch,
                                                                    fp32: float, bf16: float, pays: bool) -> None:
    clock = FakeClock(fp32, bf16)
    real_autocast = torch.autocast

    def spy_autocast(*args, **kwargs):
        clock.bf16_seen = True  # the probe builds its bf16 context once, after the fp32 trials
        return real_autocast(*args, **kwargs)

    monkeypatch.setattr(precision.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(precision.torch, "autocast", spy_autocast)
    monkeypatch.setattr(precision.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert precision.cpu_bf16_pays(tiny(), batch_size=2, block_size=8, trials=3) is pays
    assert clock.bf16_seen


def test_a_cpu_without_bf16_kernels_never_chooses_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)

    def no_timing():
        raise AssertionError("no probe should run without bf16 kernels")

    monkeypatch.setattr(precision.time, "perf_counter", no_timing)
    assert precision.cpu_bf16_pays(tiny(), batch_size=2, block_size=8) is False
