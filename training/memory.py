"""How much memory a training run needs at the least: checked before anything big is allocated.

A run too big for the device (``--batch_size=1000000000``, say) would otherwise spend a long time
allocating and then die with a MemoryError traceback. ``training_bytes`` adds up what a step
certainly holds; ``check_training_fits`` refuses, in one line, a run that cannot fit, before the
model, optimizer or a batch exists.

The count is a lower bound, so big but legitimate runs are never refused:
    weights + gradients (4 + 4 bytes per parameter, fp32 master weights)
    optimizer state: AdamW 8 bytes per parameter, Muon 4 (momentum) for the matrices it owns
    activations kept for backward, per token and layer: the block's inputs and outputs, q/k/v,
        the MLP's hidden layer before and after its activation, at the compute precision
    logits (fp32) and their gradient, per token; the batch's input and target ids (int64)
    the sample written at each eval: its token buffer and KV cache
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.memory import ensure_fits

if TYPE_CHECKING:
    from model.config import GPTConfig
    from training.config import TrainConfig


def hidden_matrix_params(mcfg: "GPTConfig") -> int:
    """Parameters of the blocks' 2-D matrices (what Muon updates; AdamW takes the rest)."""
    C, kv = mcfg.n_embd, mcfg.n_kv_head * mcfg.head_dim
    return mcfg.n_layer * (C * (C + 2 * kv) + C * C + 2 * mcfg.mlp_ratio * C * C)


def training_bytes(mcfg: "GPTConfig", cfg: "TrainConfig", compute_bytes: int, shards: int = 1) -> int:
    """A lower bound on the memory of one process training ``mcfg`` with ``cfg``'s batch (see module doc).

    ``compute_bytes``: 2 under bf16/fp16 autocast, 4 in float32. ``shards``: the processes FSDP
    splits weights, gradients and optimizer state across; each then holds its share of them, plus
    one block's full weights while that block is gathered for its forward and backward.
    """
    P = mcfg.num_params()
    muon = hidden_matrix_params(mcfg) if cfg.optimizer == "muon" else 0
    state = mcfg.model_bytes() + 4 * P + 4 * muon + 8 * (P - muon)
    if shards > 1:
        state = state // shards + 4 * hidden_matrix_params(mcfg) // mcfg.n_layer
    per_token_layer = (6 + 2 * mcfg.mlp_ratio) * mcfg.n_embd + 2 * mcfg.n_kv_head * mcfg.head_dim
    per_token = mcfg.n_layer * per_token_layer * compute_bytes + 2 * 4 * mcfg.vocab_size + 2 * 8
    train = cfg.batch_size * cfg.block_size * per_token
    evaluate = (cfg.eval_batch_size or cfg.batch_size) * cfg.block_size * (4 * mcfg.vocab_size + 2 * 8)
    kv_cache = 2 * mcfg.n_layer * mcfg.n_kv_head * mcfg.head_dim * mcfg.block_size * compute_bytes
    sample = 8 * (cfg.sample_tokens + 1) + kv_cache if cfg.sample_tokens else 0
    return state + max(train, evaluate) + sample


def check_training_fits(mcfg: "GPTConfig", cfg: "TrainConfig", device: str, compute_bytes: int,
                        shards: int = 1) -> None:
    """DeviceError, saying what to shrink, if ``training_bytes`` exceeds the memory ``device`` has."""
    what = (f"training this model ({mcfg.num_params() / 1e6:,.1f}M parameters) on batches of "
            f"{cfg.batch_size} x {cfg.block_size} tokens")
    ensure_fits(training_bytes(mcfg, cfg, compute_bytes, shards), device, what,
                "use a smaller --batch_size (and more --gradient_accumulation_steps for the same global batch), "
                "--block_size, --sample_tokens or model")
