"""What an eval measures and records: the loss and bits per byte on fixed train/val batches, a short
sample of text, the attention over a fixed val text; metrics.jsonl (and its dashboards), loss.png, attention.png."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from data.loader import read_tokens
from model.checkpoint import ATTENTION_FILE, writing
from training import dashboard
from training.distributed import Dist, mean_across_ranks
from viz.picture import attention_view, write_picture

ATTENTION_PROMPT_TOKENS = 48  # the val split's first tokens: a fixed text whose attention is drawn at each eval


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, loaders: dict[str, Any], eval_iters: int, autocast: Any,
                  token_bytes: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """Per split: (mean loss over ``eval_iters`` batches, summed nats, summed UTF-8 bytes of the targets).

    The loaders are fresh and seeded, so every eval sees the same batches and nothing touches the
    training RNG or data stream. ``token_bytes`` (V,) is each id's byte length on the model's device
    (``Tokenizer.token_bytes``). Special tokens (<|endoftext|>) have 0 bytes and are left out of both
    sums, as nanochat's evaluate_bpb leaves them out: they are no text, so no bytes to predict.
    """
    was_training = model.training
    model.eval()
    out = {}
    for split, make_loader in loaders.items():
        loader = make_loader()
        losses = torch.zeros(eval_iters)
        nats = []  # each batch's sum, on the device (fp32: MPS has no float64); added up in fp64 at the end
        n_bytes = torch.zeros((), dtype=torch.int64, device=token_bytes.device)
        for k in range(eval_iters):
            x, y = loader.next_batch()
            with autocast:
                logits, loss = model(x, y)
            losses[k] = loss.item()
            y = y.reshape(-1)
            per_token = F.cross_entropy(logits.view(-1, logits.size(-1)), y, ignore_index=-1, reduction="none")
            counted = token_bytes[y.clamp(min=0)] * (y >= 0)  # -1 (ignored) counts no bytes
            nats.append(torch.where(counted > 0, per_token, 0.0).sum())  # a mask, not an index: no device sync
            n_bytes += counted.sum()
        out[split] = (losses.mean().item(), torch.stack(nats).cpu().double().sum().item(), float(n_bytes.item()))
    model.train(was_training)
    return out


def combine_ranks(dist: Dist, mine: dict[str, tuple[float, float, float]]) -> dict[str, float | None]:
    """{"train": loss, "val": loss, "train_bpb": .., "val_bpb": ..}, the same on every rank.

    Losses are the ranks' mean; bits per byte is summed nats / (ln 2 x summed bytes) over all ranks'
    batches, and the ratio of the ranks' means is that ratio of sums. None: the targets held no bytes.
    """
    flat = mean_across_ranks(dist, [v for sums in mine.values() for v in sums])
    out: dict[str, float | None] = {}
    for i, split in enumerate(mine):
        loss, nats, n_bytes = flat[3 * i:3 * i + 3]
        out[split] = loss
        out[f"{split}_bpb"] = nats / (math.log(2) * n_bytes) if n_bytes > 0 else None
    return out


def bpb_text(bpb: float | None) -> str:
    """", val bpb 1.2345" for an eval line; nothing when there were no bytes to measure."""
    return f", val bpb {bpb:.4f}" if bpb is not None else ""


def sample_text(model: Any, tokenizer: Any, n_tokens: int, device: str, seed: int) -> str:
    """A short sample from a fixed prompt and seed (its own generator: training RNG untouched).

    Under FSDP every rank calls it with the same arguments: each forward gathers the shards, so the
    ranks must make the same forwards, and with no stop ids their number is fixed by ``n_tokens``.
    """
    prompt = [tokenizer.eot] if tokenizer.eot is not None else (tokenizer.encode("\n") or [0])
    was_training = model.training
    model.eval()
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    out = model.generate(idx, n_tokens, temperature=0.8, top_k=200, seed=seed,
                         vocab_limit=tokenizer.vocab_size)  # never the padded ids of a padded head
    model.train(was_training)
    return tokenizer.decode(out[0, len(prompt):].tolist())


def attention_at(model: Any, tokenizer: Any, data_folder: Path, out_dir: Path, it: int) -> Any:
    """Every layer's and head's weights over the val split's first tokens, the same text at every eval,
    so attention.png (and the dashboards' "attention" image) shows the heads specialising as training goes on."""
    n = min(ATTENTION_PROMPT_TOKENS, model.config.block_size)
    ids = read_tokens(data_folder / "val.bin")[:n].tolist()
    if len(ids) < 2:
        return None
    return attention_view(model, tokenizer, ids, len(ids),
                          title=f"{out_dir}: attention at iteration {it} (val split, first {len(ids)} tokens)")


def record_eval(metrics: dashboard.MetricsLog, out_dir: Path, it: int, losses: dict[str, float | None], text: str,
                view: Any) -> None:
    """An eval's losses, sample and attention picture go to metrics.jsonl (and so to the --report_to
    dashboards), loss.png and attention.png (rank 0)."""
    now = time.time()
    with writing(out_dir):
        metrics.write("eval", now, iter=it, train_loss=losses["train"], val_loss=losses["val"],
                      val_bpb=losses["val_bpb"])
        if text:
            metrics.write("sample", now, iter=it, text=text)
        dashboard.plot_losses(out_dir)
        if view is not None:
            write_picture(out_dir / ATTENTION_FILE, view)
    if view is not None:
        metrics.image("attention", out_dir / ATTENTION_FILE, it)
