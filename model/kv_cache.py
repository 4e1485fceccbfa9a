"""KVCache: preallocated keys and values for every layer, so decoding never reallocates.

Shape per layer: (B, n_kv_head, max_len, head_dim). The buffers are allocated on the first
write, in the dtype the attention computes in (v's: bf16 under autocast, else the weights'
dtype); keys arriving in another dtype (fp32 from a QK-norm that autocast keeps in fp32)
are cast to it. ``pos`` counts filled positions: a forward pass with T new tokens writes
slots [pos, pos + T) in every layer and attends over [0, pos + T); its caller then calls
``advance(T)``. The forward never moves ``pos`` (one rule, as in gpt-fast).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int) -> None:
        self.shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.max_len = max_len
        self.k: torch.Tensor | None = None  # (n_layer, B, nkv, max_len, hs)
        self.v: torch.Tensor | None = None
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per-layer (B, nkv, max_len, hs) views
        self.pos = 0  # a Python int: reading it never syncs the device

    def _allocate(self, like: torch.Tensor) -> None:
        self.k = torch.zeros(self.shape, device=like.device, dtype=like.dtype)
        self.v = torch.zeros(self.shape, device=like.device, dtype=like.dtype)
        # views made once, not per step (select, not unbind: unbind's views refuse in-place writes under autograd)
        self.layers = [(self.k[i], self.v[i]) for i in range(self.shape[0])]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               input_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's (B, nkv, T, hs) keys/values for ``layer``; return all keys/values so far.

        With ``input_pos`` (T,) the keys/values go to those slots and the whole buffer comes
        back, filled or not: fixed shapes for a compiled step, whose attention mask hides
        the slots past each position.
        """
        if self.k is None or self.k.dtype != v.dtype or self.k.device != v.device:
            self._allocate(v)
        k = k.to(v.dtype)
        k_all, v_all = self.layers[layer]
        if input_pos is not None:
            k_all.index_copy_(2, input_pos, k)
            v_all.index_copy_(2, input_pos, v)
            return k_all, v_all  # (B, nkv, max_len, hs)
        T = k.size(2)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        # narrow + copy_ are two plain calls; tensor[..., a:b] = x parses an index tuple every step
        k_all.narrow(2, self.pos, T).copy_(k)
        v_all.narrow(2, self.pos, T).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)  # (B, nkv, pos+T, hs) views

    def advance(self, T: int) -> None:
        self.pos += T

    def reset(self) -> None:
        self.pos = 0
