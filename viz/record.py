"""What the sampler chose, step by step: the top candidates and the distribution it drew from.

``NextTokenRecorder`` is an ``on_step`` hook for ``model.generate.generate_stream``. It keeps,
for one row, the k most likely tokens with two probabilities each: in the distribution actually
sampled from (temperature, top-k, top-p and min-p applied, renormalised:
``model.sampling.sampled_distribution``, the sampler's own rule) and in the model's plain
softmax (temperature 1, nothing cut); and the token drawn. Side by side, the two columns show
what the sampling settings did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from model.sampling import sampled_distribution


@dataclass
class NextTokenRecorder:
    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    k: int = 5
    row: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, logits: torch.Tensor, chosen: torch.Tensor) -> None:
        """Record one step: ``logits`` (B, V) as the sampler saw them, ``chosen`` (B,) the tokens drawn."""
        row = logits[self.row:self.row + 1].float()  # (1, V)
        probs = sampled_distribution(row, self.temperature, self.top_k, self.top_p, self.min_p)[0]  # (V,)
        raw = torch.softmax(row[0], dim=-1)  # (V,): the model's own distribution, temperature 1, no filter
        # Temperature keeps the order of tokens and every filter keeps a most-likely prefix of it,
        # so the model's top k are the sampled distribution's top k; those the filters cut show p = 0.
        top_raw, top_ids = torch.topk(raw, min(self.k, raw.numel()))
        token = int(chosen[self.row])
        rank = int((raw > raw[token]).sum()) + 1  # 1 = the most likely token was drawn
        self.steps.append({
            "ids": top_ids.tolist(), "p": probs[top_ids].tolist(), "p_model": top_raw.tolist(),
            "chosen": token, "chosen_p": float(probs[token]), "chosen_p_model": float(raw[token]), "chosen_rank": rank,
        })

    def settings(self) -> dict[str, Any]:
        """The sampling settings, as shown on the page."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p}
