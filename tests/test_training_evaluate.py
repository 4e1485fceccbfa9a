"""Bits per byte of an eval against independent counts: byte lengths decoded id by id, nats from a
full forward with torch's own cross entropy."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from conftest import random_model
from data.tokenizer import CharTokenizer, TiktokenTokenizer, get_gpt2_encoding
from model import GPTConfig
from training.distributed import Dist
from training.evaluate import combine_ranks, estimate_loss

ASCII = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 4
MULTIBYTE = "Grüße aus Köln! 東京は晴れ 😀 naïve café, señor. Ωμέγα — “quotes” … " * 3


class Windows:
    """A fixed sequence of (x, y) batches cut from ``ids``: what a seeded eval loader hands out."""

    def __init__(self, ids: list[int], batch_size: int, block_size: int, n_batches: int):
        t = torch.tensor(ids)
        starts = [(7 * k) % (len(ids) - block_size - 1) for k in range(batch_size * n_batches)]
        rows = torch.stack([t[s:s + block_size + 1] for s in starts])
        self.batches = [(r[:, :-1], r[:, 1:]) for r in rows.split(batch_size)]
        self.k = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batches[self.k]
        self.k += 1
        return batch


def evaluate(model, tok, ids, n_batches=3, batch_size=4, block_size=16):
    make = lambda: Windows(ids, batch_size, block_size, n_batches)  # noqa: E731
    mine = estimate_loss(model, {"val": make}, n_batches, contextlib.nullcontext(),
                         torch.tensor(tok.token_bytes()))
    return mine, combine_ranks(Dist(), mine), make().batches


def test_char_ascii_bpb_is_loss_over_ln2():
    tok = CharTokenizer(ASCII)
    model = random_model(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32))
    mine, out, _ = evaluate(model, tok, tok.encode(ASCII))
    assert tok.token_bytes() == [1] * tok.vocab_size
    assert out["val"] == mine["val"][0] and out["val"] > 1.0  # a random model: far from zero loss
    assert math.isclose(out["val_bpb"], out["val"] / math.log(2), rel_tol=1e-6)


def test_gpt2_multibyte_bpb_against_a_hand_count(gpt2_ranks):
    tok = TiktokenTokenizer("gpt2", get_gpt2_encoding(str(gpt2_ranks)))
    ids = tok.encode(MULTIBYTE)
    ids = ids[:40] + [tok.eot] + ids[40:] + [tok.eot] + ids  # <|endoftext|> targets: no bytes, no nats
    model = random_model(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16),
                         std=0.05)
    mine, out, batches = evaluate(model, tok, ids)
    nats, n_bytes, means = 0.0, 0, []
    with torch.no_grad():
        for x, y in batches:
            logits, _ = model(x)
            ce = F.cross_entropy(logits.view(-1, logits.size(-1)).double(), y.reshape(-1), reduction="none")
            means.append(ce.mean().item())
            for target, c in zip(y.reshape(-1).tolist(), ce.tolist()):
                if target == tok.eot:
                    continue
                n_bytes += len(tok.enc.decode_single_token_bytes(target))
                nats += c
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    assert (targets == tok.eot).any() and n_bytes > targets.numel() - (targets == tok.eot).sum()  # multi-byte ids
    assert mine["val"][2] == n_bytes
    assert math.isclose(mine["val"][1], nats, rel_tol=1e-5)
    assert math.isclose(out["val_bpb"], nats / (math.log(2) * n_bytes), rel_tol=1e-5)
    assert math.isclose(out["val"], sum(means) / len(means), rel_tol=1e-5)  # the loss is still every target's mean
