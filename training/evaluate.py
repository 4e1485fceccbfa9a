"""What an eval measures: the loss on fixed train/val batches, and a short sample of text."""

from __future__ import annotations

from typing import Any

import torch


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
