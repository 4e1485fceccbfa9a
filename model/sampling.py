"""Samplers: one step of logits (B, V) -> next token ids (B,).

The order matches Hugging Face's generate: repetition penalty, temperature, top-k, top-p,
min-p, then a draw. Temperature 0 is greedy argmax (no division). Every filter works on
whole batches with tensor ops, so one decode step costs the same few kernels for any B.
"""

from __future__ import annotations

import math

import torch

from runtime.errors import ConfigError


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None,
                        repetition_penalty: float | None) -> None:
    """The one check of the sampling controls: ConfigError (a ValueError) naming the option and its range.

    generate_stream calls it once per generation (never per token); sample.py calls it on its options.
    """
    if temperature is None or not 0 <= temperature < math.inf:
        raise ConfigError(f"temperature must be >= 0 and finite (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 or None = off), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ConfigError(f"min_p must be in [0, 1], got {min_p}")
    if repetition_penalty is not None and not 0 < repetition_penalty < math.inf:
        raise ConfigError(f"repetition_penalty must be > 0 and finite (1 = off), got {repetition_penalty}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens already seen, divide positive logits by ``penalty``, multiply negative ones.

    ``seen`` is a (B, V) boolean mask of tokens present in each row's context.
    """
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    # a tiny penalty can overflow a positive logit to +inf, and inf - inf is NaN in the softmax: cap it
    penalised = penalised.clamp(max=torch.finfo(penalised.dtype).max)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (ties broken by index), set the rest to -inf."""
    values, indices = torch.topk(logits, k, dim=-1)  # (B, k)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def filter_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose cumulative probability reaches p."""
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)  # (B, V)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly more likely tokens
    # A set whose mass equals p up to rounding reaches p: softmax and cumsum are off by a few ulps,
    # and without the slack probs [0.5, 0.3, 0.2] with p = 0.8 would keep 3 tokens or 2 by luck.
    reached = mass_before >= p - 16 * torch.finfo(probs.dtype).eps
    sorted_probs = sorted_probs.masked_fill(reached, 0.0)  # mass_before of the top token is 0: it always survives
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def filter_min_p(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least ``min_p`` times the row's most likely token."""
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    return probs.masked_fill(probs < threshold, 0.0)


def filtered_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """(B, V) probabilities after temperature (> 0), top-k, top-p and min-p; rows are not renormalised.

    Any temperature > 0 is exact and safe: each row's largest logit is subtracted before dividing
    (softmax does not change), so the top logit becomes 0 and nothing can overflow to inf/NaN; a
    tiny temperature such as 1e-40 leaves the most likely token(s) alone, i.e. greedy.
    """
    if temperature != 1.0:
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k and top_k < logits.size(-1):
        logits = filter_top_k(logits, top_k)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if top_p is not None and top_p < 1.0:
        probs = filter_top_p(probs, top_p)
    if min_p:
        probs = filter_min_p(probs, min_p)
    return probs


def sampling_weights(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """What one draw needs, with no host sync (so it can run inside a compiled decode step):
    the (B,) argmax ids for temperature 0, else the (B, V) filtered probabilities."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return filtered_probs(logits, temperature, top_k, top_p, min_p)


def draw(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) token ids from ``sampling_weights``: greedy ids as they are, else one multinomial draw per row."""
    if weights.dim() == 1:
        return weights
    # multinomial takes unnormalised weights, so filtered rows need no renormalising pass
    return torch.multinomial(weights, num_samples=1, generator=generator).squeeze(-1)


def sampled_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, min_p: float | None = None) -> torch.Tensor:
    """(B, V) the distribution ``draw`` samples from, normalised: one-hot on the argmax when greedy."""
    weights = sampling_weights(logits, temperature, top_k, top_p, min_p)
    if weights.dim() == 1:
        return torch.zeros_like(logits).scatter_(-1, weights.unsqueeze(-1), 1.0)
    return weights / weights.sum(dim=-1, keepdim=True)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, min_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row from (B, V) logits; returns (B,) int64 (arguments checked by check_sampling_args)."""
    return draw(sampling_weights(logits, temperature, top_k, top_p, min_p), generator)
