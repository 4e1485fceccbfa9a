"""Samplers against hand-computed distributions, seeded draws and empirical frequencies."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.sampling import (apply_repetition_penalty, check_sampling_args, filtered_probs, sample_next,
                            sampled_distribution)
from runtime.errors import ConfigError


def logits_of(probs: list[float]) -> torch.Tensor:
    """(1, V) logits whose softmax is ``probs``."""
    return torch.tensor([probs], dtype=torch.float64).log()


def support(dist: torch.Tensor) -> list[int]:
    return torch.nonzero(dist[0] > 0).flatten().tolist()


def test_temperature_scales_the_softmax() -> None:
    logits = torch.tensor([[1.0, 2.0, -0.5, 0.0]])
    for t in (0.5, 1.0, 2.5):
        ref = torch.tensor([math.exp(x / t) for x in logits[0].tolist()])
        torch.testing.assert_close(sampled_distribution(logits, temperature=t)[0], ref / ref.sum())


def test_temperature_zero_is_argmax_and_never_divides() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0], [5.0, 5.0 - 1e-3, 0.0], [float("-inf"), 0.0, 1.0]])
    assert sample_next(logits, temperature=0.0).tolist() == [1, 0, 2]
    dist = sampled_distribution(logits, temperature=0.0)
    assert torch.equal(dist, torch.eye(3)[[1, 0, 2]])
    assert torch.isfinite(dist).all()


def test_top_k_keeps_exactly_k_even_with_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0, 2.0]])
    for k in (1, 2, 3):
        kept = support(sampled_distribution(logits, top_k=k))
        assert len(kept) == k and set(kept) <= {1, 2, 3}
    assert support(sampled_distribution(logits, top_k=4)) == [1, 2, 3, 5]
    # the survivors keep their relative probabilities
    dist = sampled_distribution(logits, top_k=4)[0]
    e = [math.exp(3.0)] * 3 + [math.exp(2.0)]
    torch.testing.assert_close(dist[[1, 2, 3, 5]], torch.tensor(e) / sum(e))
    for k in (0, None, 6, 100):  # off, or no smaller than the vocabulary
        assert len(support(sampled_distribution(logits, top_k=k))) == 6


@pytest.mark.parametrize("p, kept", [(0.5, [0]), (0.51, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2])])
def test_top_p_keeps_smallest_set_reaching_p(p: float, kept: list[int]) -> None:
    dist = sampled_distribution(logits_of([0.5, 0.3, 0.2]), top_p=p)
    assert support(dist) == kept
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[kept]
    torch.testing.assert_close(dist[0, kept], ref / ref.sum())


def test_top_p_order_does_not_matter_and_top_token_survives() -> None:
    dist = sampled_distribution(logits_of([0.2, 0.5, 0.3]), top_p=0.8)
    assert support(dist) == [1, 2]
    dist = sampled_distribution(logits_of([0.05, 0.9, 0.05]), top_p=1e-6)
    assert support(dist) == [1]


@pytest.mark.parametrize("min_p, kept", [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.35, [0, 1]), (0.7, [0]), (1.0, [0])])
def test_min_p_threshold_is_relative_to_the_top_token(min_p: float, kept: list[int]) -> None:
    # threshold = min_p * 0.5: 0.1 keeps 0.15; 0.175 drops it; 0.35 drops 0.3
    dist = sampled_distribution(logits_of([0.5, 0.3, 0.15, 0.05]), min_p=min_p)
    assert support(dist) == kept


def test_filters_compose_in_order() -> None:
    # temperature 1, top_k=3 -> [0.5, 0.3, 0.15]/0.95; top_p=0.8 -> needs 0.5/0.95 + 0.3/0.95 = 0.842 -> 2 tokens
    dist = sampled_distribution(logits_of([0.5, 0.3, 0.15, 0.05]), top_k=3, top_p=0.8)
    assert support(dist) == [0, 1]
    torch.testing.assert_close(dist[0, :2], torch.tensor([0.625, 0.375], dtype=torch.float64))


def test_repetition_penalty_values() -> None:
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0]])
    seen = torch.tensor([[True, True, False, False, True]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0, 0.0]]  # positive divided, negative multiplied, unseen untouched
    out = apply_repetition_penalty(logits, seen, 0.5)  # < 1 encourages repetition
    assert out.tolist() == [[4.0, -1.0, 2.0, -2.0, 0.0]]


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 1e-8, 1e-3])
def test_a_tiny_temperature_is_greedy_and_never_nan(temperature: float) -> None:
    """logits / 1e-40 overflow to inf and softmax(inf - inf) is NaN; the max-shift keeps every
    positive temperature exact, and a tiny one picks the most likely token."""
    logits = torch.tensor([[3.0, 9.5, -2.0, 9.0], [0.1, -0.2, 0.3, 0.29]])
    probs = filtered_probs(logits, temperature, top_k=3, top_p=0.9, min_p=0.01)
    assert torch.isfinite(probs).all()
    if temperature <= 1e-8:
        assert sample_next(logits, temperature).tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(filtered_probs(logits, 0.7), torch.softmax(logits / 0.7, dim=-1))


def test_a_tiny_repetition_penalty_stays_finite() -> None:
    logits = torch.tensor([[5.0, -1.0, 2.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[True, True, False]]), 1e-40)
    assert torch.isfinite(out).all() and out.argmax().item() == 0
    assert torch.isfinite(filtered_probs(out, 1.0)).all()


def test_seeded_draws_are_reproducible() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))

    def draws(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.stack([sample_next(logits, generator=g) for _ in range(20)]).flatten().tolist()

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.7, top_k=5), dict(top_p=0.9), dict(min_p=0.1, temperature=1.3)])
def test_empirical_frequencies_match_the_distribution(kwargs: dict) -> None:
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(3)) * 1.5
    dist = sampled_distribution(logits, **kwargs)[0].double()
    n = 40_000
    draws = sample_next(logits.expand(n, -1), generator=torch.Generator().manual_seed(4), **kwargs)
    counts = torch.bincount(draws, minlength=12).double()
    assert torch.all(counts[dist == 0] == 0)  # filtered tokens are never drawn
    live = dist > 0
    expected = n * dist[live]
    chi2 = ((counts[live] - expected) ** 2 / expected).sum().item()
    dof = int(live.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * max(dof, 1)) + 10  # far beyond p = 1e-6 for these dofs


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), r">= 0"),
    (dict(temperature=float("nan")), r">= 0"),
    (dict(top_k=-1), r">= 0"),
    (dict(top_p=0.0), r"\(0, 1\]"),
    (dict(top_p=1.5), r"\(0, 1\]"),
    (dict(min_p=-0.5), r"\[0, 1\]"),
    (dict(min_p=2.0), r"\[0, 1\]"),
])
def test_invalid_sampling_values_raise_with_the_range(kwargs: dict, match: str) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=match) as e:
        check_sampling_args(**{"temperature": 1.0, "top_k": None, "top_p": None, "min_p": None,
                               "repetition_penalty": None, **kwargs})
    assert str(e.value).startswith(f"{name} must be"), str(e.value)  # names the option, one line
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)
    with pytest.raises(ConfigError, match=r"repetition_penalty must be > 0"):
        check_sampling_args(1.0, None, None, None, repetition_penalty=0.0)


def test_valid_sampling_values_pass_the_check() -> None:
    for args in [(0.0, None, None, None, None), (0.8, 0, 1.0, 0.0, 1.0), (2.0, 5, 0.5, 1.0, 0.1)]:
        check_sampling_args(*args)  # no exception


@settings(max_examples=60, deadline=None)
@given(probs=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=12),
       p=st.floats(0.05, 1.0), k=st.integers(0, 14))
def test_filtered_distribution_properties(probs: list[float], p: float, k: int) -> None:
    total = sum(probs)
    logits = logits_of([x / total for x in probs])
    base = sampled_distribution(logits)[0]
    # top-k: min(k, V) survivors (0 = off), all at least as likely as any dropped token
    dist = sampled_distribution(logits, top_k=k)[0]
    assert dist.sum().item() == pytest.approx(1.0)
    n_kept = int((dist > 0).sum())
    assert n_kept == (min(k, len(probs)) if k else len(probs))
    if n_kept < len(probs):
        assert base[dist > 0].min() >= base[dist == 0].max()
    # top-p: the kept set reaches p, and dropping its least likely member would not
    dist = sampled_distribution(logits, top_p=p)[0]
    kept = base[dist > 0]
    assert kept.sum().item() >= p - 1e-6
    assert kept.sum().item() - kept.min().item() < p + 1e-6
    if (dist == 0).any():
        assert kept.min() >= base[dist == 0].max()
