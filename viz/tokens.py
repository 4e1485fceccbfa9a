"""Token labels a reader can see: whitespace made visible, cut characters shown as bytes.

A char token is one character; a BPE token may be several characters, or part of one (a
multi-byte character split across tokens). Labels are for display only: spaces become
``·``, newlines ``↵``, tabs ``→``, other control characters ``\\xNN``, and bytes that are
not whole UTF-8 characters ``\\xNN``, so every token has a visible, distinct-looking label.
"""

from __future__ import annotations

from typing import Any, Sequence

VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def visible(text: str) -> str:
    """``text`` with whitespace and control characters drawn as visible symbols."""
    out = []
    for c in text:
        if c in VISIBLE:
            out.append(VISIBLE[c])
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def token_text(tok: Any, token: int) -> str:
    """The token's own text: its bytes as UTF-8, with bytes of a cut character as ``\\xNN``.

    ``<|endoftext|>`` is spelled out; an id past the tokenizer's vocabulary (a padded head) is ``<id>``.
    """
    if token == getattr(tok, "eot", None):
        return "<|endoftext|>"
    if not 0 <= token < tok.vocab_size:
        return f"<{token}>"
    return tok.decode_bytes([token]).decode("utf-8", errors="backslashreplace")


def token_labels(tok: Any, ids: Sequence[int]) -> list[str]:
    """One visible label per token id (see the module docstring)."""
    return [visible(token_text(tok, int(t))) or "∅" for t in ids]
