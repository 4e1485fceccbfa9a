"""What an eval measures and records: the loss on fixed train/val batches, a short sample of text,
the attention over a fixed val text; metrics.jsonl, loss.png, attention.png and wandb."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from data.loader import read_tokens
from model.checkpoint import ATTENTION_FILE, writing
from training import dashboard
from viz.picture import attention_view, write_picture

ATTENTION_PROMPT_TOKENS = 48  # the val split's first tokens: a fixed text whose attention is drawn at each eval


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, loaders: dict[str, Any], eval_iters: int, autocast: Any) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches per split; the loaders are fresh and seeded, so every
    eval sees the same batches and nothing touches the training RNG or data stream."""
    was_training = model.training
    model.eval()
    out = {}
    for split, make_loader in loaders.items():
        loader = make_loader()
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = loader.next_batch()
            with autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train(was_training)
    return out


def sample_text(model: Any, tokenizer: Any, n_tokens: int, device: str, seed: int) -> str:
    """A short sample from a fixed prompt and seed (its own generator: training RNG untouched)."""
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
    so attention.png (and wandb's "attention" image) shows the heads specialising as training goes on."""
    n = min(ATTENTION_PROMPT_TOKENS, model.config.block_size)
    ids = read_tokens(data_folder / "val.bin")[:n].tolist()
    if len(ids) < 2:
        return None
    return attention_view(model, tokenizer, ids, len(ids),
                          title=f"{out_dir}: attention at iteration {it} (val split, first {len(ids)} tokens)")


def record_eval(metrics: dashboard.MetricsLog, wb: dashboard.WandbLogger | None, out_dir: Path, it: int,
                losses: dict[str, float], text: str, view: Any, tokens: int) -> None:
    """An eval's losses, sample and attention picture go to metrics.jsonl, loss.png, attention.png
    and wandb (rank 0)."""
    now = time.time()
    with writing(out_dir):
        metrics.write("eval", now, iter=it, train_loss=losses["train"], val_loss=losses["val"])
        if text:
            metrics.write("sample", now, iter=it, text=text)
        dashboard.plot_losses(out_dir)
        if view is not None:
            write_picture(out_dir / ATTENTION_FILE, view)
    if view is not None and wb is not None:
        wb.log_image("attention", out_dir / ATTENTION_FILE, it)
    if wb is not None:
        wb.log({"train/loss_eval": losses["train"], "val/loss": losses["val"], "tokens": tokens}, step=it)
        if text:
            wb.log_sample(text, it)
