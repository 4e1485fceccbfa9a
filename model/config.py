"""GPTConfig: every architectural switch of the network, validated on construction.

Two presets name the two families the code supports:

- ``classic``: GPT-2's architecture, so its weights load as they are: learned absolute
  positions, pre-LayerNorm, tanh-GELU MLP, biases, tied input/output embeddings.
- ``modern``: switches that reach a given loss in less training time: rotary
  positions, RMSNorm, no biases, QK-norm, ReLU² MLP, untied head, zero-initialised output
  projections, an optional logit soft-cap and grouped-query attention (``n_kv_head``).

Each switch is a field, so any mix is one config away; there is one network, not two forks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runtime.errors import ConfigError

POS_EMB = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu2")


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length: the most tokens one forward pass attends over
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # grouped-query attention: key/value heads; None = n_head
    dropout: float = 0.0  # on the embeddings and on each residual branch's output
    attn_dropout: float | None = None  # on the attention weights; None = dropout (0 keeps the fused kernel)
    bias: bool = True  # biases in Linear layers and LayerNorm, as in GPT-2
    pos_emb: str = "learned"  # "learned" (GPT-2 wpe) or "rope" (rotary, applied to q and k)
    rope_theta: float = 10000.0
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMS-normalise queries and keys per head before attention
    activation: str = "gelu_tanh"  # "gelu_tanh" (GPT-2's), "gelu" (exact erf) or "relu2"
    mlp_ratio: int = 4
    tie_embeddings: bool = True  # lm_head shares wte's weight
    logit_softcap: float | None = None  # logits = c * tanh(logits / c); None = off
    zero_init: bool = False  # zero-init residual output projections and the untied head
    embed_norm: bool = False  # weightless RMSNorm on the embeddings before the first block (as NanoChat)

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if not isinstance(self.n_kv_head, int) or self.n_kv_head <= 0:
            raise ConfigError(f"n_kv_head must be a positive integer, got {self.n_kv_head!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head != 0:
            raise ConfigError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.pos_emb == "rope" and self.head_dim % 2 != 0:
            raise ConfigError(f"pos_emb='rope' needs an even head size, got n_embd/n_head = {self.head_dim}")
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name, allowed in (("pos_emb", POS_EMB), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ConfigError(f"logit_softcap must be positive or None, got {self.logit_softcap}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def classic(cls, **overrides: Any) -> "GPTConfig":
        """GPT-2's architecture (OpenAI's weights load into it)."""
        return cls(**overrides)

    @classmethod
    def modern(cls, **overrides: Any) -> "GPTConfig":
        """Rotary, RMSNorm, QK-norm, ReLU², untied zero-init head, no biases."""
        base = dict(pos_emb="rope", norm="rmsnorm", bias=False, qk_norm=True, activation="relu2",
                    tie_embeddings=False, zero_init=True, logit_softcap=15.0)
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """``GPTConfig.preset("classic" | "modern", **overrides)``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
        return getattr(cls, name)(**overrides)

    def num_params(self) -> int:
        """Unique parameters of the GPT this config builds (a tied head counts once), without building it.

        The same count as ``GPT(config).num_params()``; it lets a caller refuse a config that
        cannot fit in memory before a single byte is allocated.
        """
        C, L, V, r = self.n_embd, self.n_layer, self.vocab_size, self.mlp_ratio
        kv = self.n_kv_head * self.head_dim
        norm = C * (2 if self.bias and self.norm == "layernorm" else 1)
        bias = 1 if self.bias else 0
        attn = C * (C + 2 * kv) + C * C + bias * (C + 2 * kv + C)  # c_attn, c_proj
        mlp = 2 * r * C * C + bias * (r * C + C)  # c_fc, c_proj
        n = V * C + L * (2 * norm + attn + mlp) + norm  # wte, blocks, ln_f
        if self.pos_emb == "learned":
            n += self.block_size * C  # wpe
        if not self.tie_embeddings:
            n += V * C  # lm_head
        return n

    def model_bytes(self) -> int:
        """Bytes of the float32 model: parameters plus its derived buffers (position ids, rotary tables)."""
        buffers = 8 * self.block_size + (4 * self.block_size * self.head_dim if self.pos_emb == "rope" else 0)
        return 4 * self.num_params() + buffers

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown GPTConfig fields {unknown}; the checkpoint was written by a newer quillgpt?")
        return cls(**d)


PRESETS = ("classic", "modern")

VOCAB_MULTIPLE = 64
VOCAB_PAD_FROM = 1024


def padded_vocab_size(n: int) -> int:
    """The head's size for a tokenizer of ``n`` ids: a multiple of 64 (GPT-2's 50257 -> 50304).

    GPU matmul kernels run fastest on multiples of 64, so the head and embedding get a few
    never-seen rows (sampling masks them). Vocabularies under 1024 stay exact: a character
    vocabulary of 65 would double its head for no measurable gain.
    """
    if n < VOCAB_PAD_FROM:
        return n
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
