"""The attention grid as a PNG: one heatmap per layer (rows) and head (columns).

Cell (l, h) shows layer l, head h: row i is the query token i, column j the key token j, and
the colour how much of token i's attention goes to token j. Future tokens (j > i) are masked
and drawn blank. The colour scale is shared by every cell (0 to 1, square-root stretched so
that weak but real attention stays visible). Long texts are cropped to their last tokens.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

MAX_TOKENS = 64  # beyond this the labels cannot be read; the grid shows the last MAX_TOKENS tokens
MAX_FIGURE_INCHES = 36.0  # the longer side of the grid; large grids get smaller cells (and a higher dpi)
MAX_LABEL = 10  # characters of a token label; longer BPE tokens are cut with …


def crop(maps: np.ndarray, labels: Sequence[str], max_tokens: int) -> tuple[np.ndarray, list[str], int]:
    """The last ``max_tokens`` rows and columns of (L, H, T, T) maps; also returns how many tokens were cut."""
    T = maps.shape[-1]
    cut = max(0, T - max_tokens)
    return maps[..., cut:, cut:], list(labels)[cut:], cut


def _layout(n_layer: int, n_head: int, T: int) -> tuple[float, float, int]:
    """(cell size in inches, label font size in points, dpi): ~6-pt labels, a capped figure, >= 7-pixel text."""
    cell = min(0.6 + 0.09 * T, MAX_FIGURE_INCHES / max(n_layer, n_head, 1))
    font = float(np.clip(72 * cell / max(T, 1) * 0.9, 2.5, 8.0))
    dpi = int(np.clip(7 * 72 / font, 100, 150))
    return cell, font, dpi


def short(label: str, n: int = MAX_LABEL) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


def attention_grid_png(maps: np.ndarray, labels: Sequence[str], title: str = "",
                       max_tokens: int = MAX_TOKENS) -> bytes:
    """PNG bytes of the layer x head grid of ``maps`` (L, H, T, T) for one text whose tokens are ``labels``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe on a headless box
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    maps, labels, cut = crop(np.asarray(maps, dtype=np.float32), labels, max_tokens)
    labels = [short(t) for t in labels]
    L, H, T, _ = maps.shape
    cell, font, dpi = _layout(L, H, T)
    # explicit margins in inches (tight_layout would draw the whole figure once more to measure it)
    lab = font / 72 * 0.62 * max((len(t) for t in labels), default=1) + 0.1  # room for the token labels
    gap, left, bottom, top, right = 0.15, 0.6 + lab, 0.4 + lab, 0.65, 1.0
    width, height = left + H * cell + (H - 1) * gap + right, top + L * cell + (L - 1) * gap + bottom
    fig = plt.figure(figsize=(width, height), dpi=dpi)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)  # masked: drawn blank
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # sqrt stretch: weak but real attention stays visible
    image = None
    for layer in range(L):
        for head in range(H):
            x0 = left + head * (cell + gap)
            y0 = height - top - (layer + 1) * cell - layer * gap
            ax = fig.add_axes((x0 / width, y0 / height, cell / width, cell / height))
            image = ax.imshow(np.ma.masked_array(maps[layer, head], future), cmap="viridis", norm=norm,
                              interpolation="nearest", aspect="auto")
            # token labels on the outer edge only: every cell shares the same tokens (and ticks are slow to draw)
            first_col, last_row = head == 0, layer == L - 1
            ax.set_xticks(range(T) if last_row else [], labels if last_row else [], rotation=90, fontsize=font)
            ax.set_yticks(range(T) if first_col else [], labels if first_col else [], fontsize=font)
            ax.tick_params(length=0, pad=1)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if first_col:
                ax.set_ylabel(f"layer {layer}: query token", fontsize=8)
            if last_row:
                ax.set_xlabel("key token (attended to)", fontsize=8)
    heading = title + (f" (last {T} tokens; {cut} earlier not shown)" if cut else "")
    if heading:
        fig.suptitle(heading, fontsize=10, y=1 - 0.12 / height, va="top")
    bar = fig.add_axes(((width - right + 0.25) / width, 0.3, 0.12 / width, 0.4))
    fig.colorbar(image, cax=bar).set_label("attention weight", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
