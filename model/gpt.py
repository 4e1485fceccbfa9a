"""The GPT network, top to bottom: norms, rotary, attention, MLP, block, GPT.

Names follow GPT-2 (wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
mlp.c_proj, ln_f, lm_head) so a reader of OpenAI's or nanoGPT's code feels at home and
Hugging Face GPT-2 weights map over one to one. Shapes are noted on the line:
B batch, T new tokens, S tokens attended over (cache + new), C n_embd, nh heads,
nkv key/value heads, hs head size, V vocab.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_attention_weights
from .config import GPTConfig
from .generate import generate, generate_stream
from .kv_cache import KVCache


class Norm(nn.Module):
    """LayerNorm (with optional bias, as nanoGPT) or RMSNorm, picked by config.norm."""

    def __init__(self, dim: int, config: GPTConfig) -> None:
        super().__init__()
        self.rms = config.norm == "rmsnorm"
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if config.bias and not self.rms else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, each (length, hs/2), in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (length, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (first-half, second-half) pair of x (B, n, T, hs) by its position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, n, T, hs/2) each; fp32 so bf16 runs rotate exactly
    y = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return y.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qk_norm, self.eps = config.qk_norm, config.norm_eps
        self.gqa = self.n_kv_head != self.n_head
        kv_dim = self.n_kv_head * self.head_dim
        # one matmul for queries, keys and values; with GQA, keys/values are narrower
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        # dropout on the attention weights sends CPU SDPA to its unfused path, which costs more than the rest
        # of the dropout together; attn_dropout=0 keeps the fused kernel while the residuals still drop
        self.attn_dropout = config.attn_dropout

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, nh, T, hs), keys and values (B, nkv, T, hs) of x (B, T, C): projected, QK-normed, rotated."""
        B, T, _ = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        # one view + one transpose for all heads, then split: 3 ops instead of 7 on the decode path
        qkv = self.c_attn(x).view(B, T, nh + 2 * nkv, hs).transpose(1, 2)  # (B, nh + 2 nkv, T, hs)
        q, k, v = qkv.split([nh, nkv, nkv], dim=1)  # (B, nh, T, hs), (B, nkv, T, hs), (B, nkv, T, hs)
        if self.qk_norm:  # bounds the attention logits, which lets a higher learning rate stay stable
            q = F.rms_norm(q, (hs,), eps=self.eps)
            k = F.rms_norm(k, (hs,), eps=self.eps)
        if rope is not None:
            q = apply_rotary(q, *rope)
            k = apply_rotary(k, *rope)
        # attention runs in v's dtype (autocast's, or the weights'); CUDA's autocast runs rms_norm in fp32,
        # which would leave q and k fp32 beside a bf16 v, and the KV cache twice as large
        return q.to(v.dtype), k.to(v.dtype), v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None,
                kv_cache: KVCache | None, layer: int, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v, input_pos)  # (B, nkv, S, hs)
        # no mask means plain causal attention (or one new token, which may see everything)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=(mask is None and T > 1),
            dropout_p=self.attn_dropout if self.training else 0.0, enable_gqa=self.gqa,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble all head outputs side by side (no copy if T == 1)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.dropout > 0 else y  # skipping a no-op module saves a call per layer

    def weights(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """The (B, nh, T, T) causal attention weights this layer gives x (B, T, C), spelled out (fp32)."""
        q, k, _ = self.qkv(x, rope)
        return causal_attention_weights(q, k)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = config.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_fc(x)  # (B, T, 4C)
        if self.activation == "relu2":
            x = F.relu(x).square()
        else:
            x = F.gelu(x, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        x = self.c_proj(x)  # (B, T, C)
        return self.dropout(x) if self.dropout.p > 0 else x


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = Norm(config.n_embd, config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = Norm(config.n_embd, config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, mask: torch.Tensor | None,
                kv_cache: KVCache | None, layer: int, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, kv_cache, layer, input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        modules: dict[str, nn.Module] = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=Norm(config.n_embd, config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # https://paperswithcode.com/method/weight-tying
        # position ids and rotary tables are derived, not learned: non-persistent buffers, never saved
        self.register_buffer("pos_ids", torch.arange(config.block_size), persistent=False)
        if config.pos_emb == "rope":
            cos, sin = rotary_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layer)."""
        cfg = self.config
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, Norm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # each block adds two residual branches
                if cfg.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.zero_init and not cfg.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)  # start from uniform predictions (modded-nanogpt)
        if cfg.tie_embeddings:  # keep the tie even if someone re-created a tensor
            self.transformer.wte.weight = self.lm_head.weight

    def embed(self, idx: torch.Tensor, positions: torch.Tensor,
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Token (+ learned position) embeddings x (B, T, C) of ``idx`` at ``positions`` (T,), and the
        rotary tables for those positions (None for learned positions)."""
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(positions)  # (T, C) broadcast over B
        rope = None
        if self.config.pos_emb == "rope":
            rope = (self.rope_cos[positions], self.rope_sin[positions])  # (T, hs/2) each
        if self.config.embed_norm:
            x = F.rms_norm(x, (x.size(-1),), eps=self.config.norm_eps)
        if self.config.dropout > 0:
            x = self.transformer.drop(x)
        return x, rope

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                last_only: bool = False, input_pos: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) (or (B, 1, V) with ``last_only``) and, given targets, the mean cross-entropy.

        With a ``kv_cache``, ``idx`` holds only the new tokens and one rule places them: they
        sit at ``kv_cache.pos`` onwards, or at ``input_pos`` (T,) when that is given (the fixed-
        shape path of a compiled decode step: every slot is attended under a mask, so one graph
        serves every position). The forward writes their keys and values there and never moves
        the cache: the caller calls ``kv_cache.advance(T)`` afterwards. Targets of -1 are ignored.
        """
        B, T = idx.size()
        static = input_pos is not None
        if static and kv_cache is None:
            raise ValueError("input_pos needs a kv_cache to write into")
        start = kv_cache.pos if kv_cache is not None and not static else 0
        if start + T > self.config.block_size:
            raise ValueError(f"cannot attend over {start + T} tokens: block_size is {self.config.block_size}")
        positions = input_pos if static else self.pos_ids.narrow(0, start, T)  # (T,)
        x, rope = self.embed(idx, positions)
        # SDPA's is_causal aligns its mask top-left, which is only right when queries and keys
        # start together; otherwise spell the mask out (None = plain causal, or one token
        # attending to everything before it).
        mask = None
        if static:  # slot j is visible to the token at position p iff j <= p
            mask = torch.arange(kv_cache.max_len, device=idx.device) <= input_pos.view(T, 1)  # (T, max_len)
        elif start > 0 and T > 1:  # a chunk after a cache: query i sits at absolute position start + i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)  # (T, S)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, mask, kv_cache, layer, input_pos)
        x = self.transformer.ln_f(x)
        if targets is None and last_only:
            x = x.narrow(1, T - 1, 1)  # (B, 1, C): generation only needs the next token's logits
        logits = self.lm_head(x).float()  # (B, T, V); fp32 for a stable softmax/loss under autocast
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Every layer's and head's attention weights for ``idx`` (B, T): (n_layer, B, n_head, T, T), fp32.

        A plain forward (eval mode, no cache, no dropout) runs layer by layer; at each layer the
        weights are spelled out from that layer's own queries and keys (model/attention.py), so
        ``weights @ V`` is what the layer's SDPA call computed. Row i of a map is how token i
        spreads its attention over tokens 0..i; entries above the diagonal are 0.
        """
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"cannot attend over {T} tokens: block_size is {self.config.block_size}")
        was_training = self.training
        self.eval()
        try:
            x, rope = self.embed(idx, self.pos_ids.narrow(0, 0, T))
            maps = []
            for layer, block in enumerate(self.transformer.h):
                maps.append(block.attn.weights(block.ln_1(x), rope))  # (B, nh, T, T)
                x = block(x, rope, None, None, layer)
        finally:
            self.train(was_training)
        return torch.stack(maps)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls, name_or_folder: str | os.PathLike, **overrides: Any) -> "GPT":
        """A quillgpt run folder, a local Hugging Face GPT-2 folder or a hub name (gpt2 ... gpt2-xl),
        float32 on the CPU; ``overrides`` replace config fields (``dropout=0.1``).

        The formats live in model/checkpoint.py, which imports this module: imported here, on use.
        """
        from .checkpoint import from_pretrained

        return from_pretrained(os.fspath(name_or_folder), **overrides)

    def save_pretrained(self, folder: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``folder`` in the run-folder format, atomically;
        ``GPT.from_pretrained(folder)`` reads it back. ``extra``: more config.json keys (a tokenizer spec)."""
        from .checkpoint import save_model

        save_model(self, folder, extra)

    # ------------------------------------------------------------------ bookkeeping

    def num_params(self, non_embedding: bool = False) -> int:
        """Unique parameters (a tied head counts once). ``non_embedding`` drops position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L nh hs T.

        N counts matmul weights only (the lm_head is a matmul whether tied or not; embedding
        lookups are not). The attention term counts the full T x T score matrix, as PaLM does.
        """
        cfg = self.config
        T = seq_len or cfg.block_size
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * n_matmul + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len or cfg.block_size, cfg.head_dim)

    # ------------------------------------------------------------------ generation

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, **kwargs: Any) -> torch.Tensor:
        """Continue ``idx`` (B, T) by ``max_new_tokens``; returns (B, T + new). See model/generate.py."""
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, **kwargs)

    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> Iterator[torch.Tensor]:
        """Yield each step's new tokens, shape (B,), as they are sampled. See model/generate.py."""
        return generate_stream(self, idx, max_new_tokens, **kwargs)
