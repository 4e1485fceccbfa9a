"""Attention weights spelled out: softmax(Q Kᵀ / sqrt(hs) + causal mask), the matrix SDPA never shows.

The network's forward uses ``F.scaled_dot_product_attention``, which fuses this computation
and never materialises the (T, T) weights. To look at them, ``GPT.attention_maps`` feeds each
layer's queries and keys (from the same projection, QK-norm and rotary code as the forward,
``CausalSelfAttention.qkv``) through ``causal_attention_weights``; ``weights @ V`` is then
what SDPA computed.
"""

from __future__ import annotations

import math

import torch


def causal_attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, T) weights, in fp32, of queries (B, nh, T, hs) over keys (B, nkv, T, hs).

    Row i holds how much token i reads from each token j <= i: every row sums to 1 and every
    entry above the diagonal is exactly 0 (its logit is -inf before the softmax). With grouped-
    query attention (nkv < nh), query head h reads key head h // (nh // nkv), as SDPA's enable_gqa.
    """
    nh, nkv, T, hs = q.size(1), k.size(1), q.size(2), q.size(3)
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, T, hs): each key head serves a group of query heads
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)  # (T, T): j > i
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
