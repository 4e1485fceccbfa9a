"""One text's attention, ready to draw: the tokens, the maps, the sampler's choices; and writing it.

``attention_view`` runs ``GPT.attention_maps`` over the last tokens of a text (prompt plus
generated) and gathers what both renderers need; ``write_picture`` picks the renderer from the
file's extension (.png: viz/attention_png.py, .html: viz/attention_html.py) and writes the file
atomically. ``path_problem`` says, before anything is generated, why a path cannot be written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from runtime.atomic import atomic_write_bytes
from runtime.errors import UsageError
from viz.tokens import token_labels, token_text

FORMATS = (".png", ".html")
MAX_TOKENS = 256  # the maps cover at most the text's last 256 tokens (L x H x T x T floats in memory)
HTML_MAX_WEIGHTS = 1_500_000  # a page stores L x H x T(T+1)/2 weights: at most this many (~5 MB of JSON)


@dataclass
class AttentionView:
    """Everything a picture shows for one text (after cropping to the attended window)."""

    maps: np.ndarray  # (L, H, T, T) fp32 attention weights
    labels: list[str]  # one visible label per token (viz/tokens.py)
    texts: list[str]  # each token's own text
    ids: list[int]
    first_generated: int  # tokens before this index were given (the prompt), the rest were sampled
    candidates: list[dict[str, Any] | None] = field(default_factory=list)  # per token: the sampler's top-k, or None
    settings: dict[str, Any] = field(default_factory=dict)  # temperature, top_k, top_p, min_p
    title: str = ""
    cut: int = 0  # tokens of the text before the window, not shown


def window_tokens(n_layer: int, n_head: int, block_size: int, fmt: str) -> int:
    """How many of the text's last tokens a picture's maps cover: the model's context, at most
    MAX_TOKENS, and for a page few enough that its weights stay within HTML_MAX_WEIGHTS (the PNG
    then shows only the last of them: viz/attention_png.py)."""
    T = min(block_size, MAX_TOKENS)
    while fmt == ".html" and T > 8 and n_layer * n_head * T * (T + 1) // 2 > HTML_MAX_WEIGHTS:
        T -= 1
    return T


def candidate_entry(tok: Any, step: dict[str, Any]) -> dict[str, Any]:
    """A recorded sampler step (viz/record.py) with labels for its token ids."""
    return {**step, "labels": token_labels(tok, step["ids"]), "chosen_label": token_labels(tok, [step["chosen"]])[0]}


def attention_view(model: Any, tok: Any, ids: Sequence[int], n_prompt: int, steps: Sequence[dict[str, Any]] = (),
                   settings: dict[str, Any] | None = None, title: str = "", max_tokens: int | None = None,
                   ) -> AttentionView:
    """The view of ``ids`` (prompt of ``n_prompt`` tokens, then generated ones, whose sampler steps are
    ``steps``), cropped to its last ``max_tokens`` (default: the model's context)."""
    ids = [int(t) for t in ids]
    keep = min(len(ids), max_tokens or model.config.block_size, model.config.block_size)
    cut = len(ids) - keep
    window = ids[cut:]
    device = next(model.parameters()).device
    maps = model.attention_maps(torch.tensor([window], dtype=torch.long, device=device))[:, 0]  # (L, H, T, T)
    per_token: list[dict[str, Any] | None] = [None] * len(ids)
    for i, step in enumerate(steps):
        if n_prompt + i < len(ids):
            per_token[n_prompt + i] = candidate_entry(tok, step)
    return AttentionView(maps=maps.cpu().numpy(), labels=token_labels(tok, window),
                         texts=[token_text(tok, t) for t in window], ids=window,
                         first_generated=max(0, n_prompt - cut), candidates=per_token[cut:],
                         settings=dict(settings or {}), title=title, cut=cut)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot take a picture (wrong extension, missing or read-only folder), or None."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        return f"--attention={path}: the file name must end in .png (heatmap grid) or .html (interactive page)"
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        return f"--attention={path}: no such folder {folder}; create it or pick another path"
    if p.is_dir():
        return f"--attention={path} is a folder; give a file name ending in .png or .html"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--attention={path}: cannot write in {folder} (permission denied); pick another path"
    return None


def render(view: AttentionView, fmt: str) -> bytes:
    """The picture's bytes: ``fmt`` is ".png" or ".html"."""
    if fmt == ".png":
        from viz.attention_png import attention_grid_png

        return attention_grid_png(view.maps, view.labels, view.title)
    from viz.attention_html import attention_page

    return attention_page(view).encode("utf-8")


def write_picture(path: str | os.PathLike, view: AttentionView) -> None:
    """Write ``view`` to ``path`` atomically, as the extension says (.png or .html)."""
    atomic_write_bytes(path, render(view, Path(path).suffix.lower()))


def draw_sample(path: str, model: Any, tok: Any, ids: Sequence[int], n_prompt: int,
                steps: Sequence[dict[str, Any]] = (), settings: dict[str, Any] | None = None,
                title: str = "") -> AttentionView:
    """Draw a generated text's attention (and its sampler steps) to ``path`` (.png or .html), cropped to
    what that format shows well; the view drawn. A path that cannot be written is a UsageError."""
    cfg = model.config
    view = attention_view(model, tok, ids, n_prompt, steps, settings, title=title,
                          max_tokens=window_tokens(cfg.n_layer, cfg.n_head, cfg.block_size, Path(path).suffix.lower()))
    try:
        write_picture(path, view)
    except OSError as e:
        raise UsageError(f"--attention={path}: cannot write the file ({e.strerror or e}); pick another path") from None
    return view
