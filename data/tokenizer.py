"""Tokenizers behind one small interface: characters, our own byte-level BPE, and GPT-2's BPE.

    char  one token per character; the vocabulary is every character of the corpus (nanoGPT's
          shakespeare_char). Tiny vocab, long sequences, no unknown bytes allowed.
    bpe   byte-level BPE trained on the corpus with rustbpe and run by tiktoken, plus one
          <|endoftext|> special token. Any text encodes; the vocab size is ours to choose.
    gpt2  OpenAI's GPT-2 encoding (50,257 tokens) through tiktoken, needed to fine-tune or
          sample from the GPT-2 weights.

A tokenizer saves itself into a prepared data folder and returns a small JSON spec;
``load_tokenizer(spec, folder)`` rebuilds it, so a run folder never needs pickles.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import tiktoken

from data.options import TOKENIZERS
from runtime.atomic import atomic_open, atomic_write_json
from runtime.errors import DataError

EOT_TEXT = "<|endoftext|>"
GPT2_EOT = 50256
GPT2_RANKS_ENV = "QUILLGPT_GPT2_RANKS"
KINDS = TOKENIZERS  # data/options.py names them, for the option system


def _as_list(ids: Any) -> list[int]:
    """Accept a list, a 1-D numpy array or a 1-D torch tensor (without importing torch)."""
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


class Tokenizer:
    """The interface train.py, sample.py and data/prepare.py rely on."""

    kind: str
    vocab_size: int
    eot: int | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Any) -> str:
        raise NotImplementedError

    def decode_bytes(self, ids: Any) -> bytes:
        """Raw bytes of the tokens; a streaming printer decodes them incrementally so a
        multi-byte character split across two tokens is not printed as garbage."""
        raise NotImplementedError

    def save(self, folder: Path) -> dict:
        """Write the tokenizer's file (if any) into ``folder``; return the JSON spec for meta.json."""
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per character, ids in sorted character order."""

    kind = "char"
    eot = None
    file = "tokenizer.json"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise DataError("a char vocabulary needs at least one character and single characters only")
        self.vocab_size = len(self.chars)
        self._stoi = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            bad = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in bad[:20]) + (" ..." if len(bad) > 20 else "")
            raise DataError(f"{len(bad)} character(s) not in the char vocabulary: {shown}; "
                             "remove them or use --tokenizer=bpe/gpt2") from None

    def decode(self, ids: Any) -> str:
        chars = self.chars
        return "".join(chars[i] for i in _as_list(ids))

    def decode_bytes(self, ids: Any) -> bytes:
        return self.decode(ids).encode("utf-8")

    def save(self, folder: Path) -> dict:
        atomic_write_json(Path(folder) / self.file, {"chars": self.chars})
        return {"kind": self.kind, "file": self.file}


class TiktokenTokenizer(Tokenizer):
    """A tiktoken Encoding; ordinary text never produces special tokens (a corpus that
    contains the string "<|endoftext|>" is encoded as those characters, not as EOT)."""

    def __init__(self, kind: str, enc: tiktoken.Encoding, ranks: dict[bytes, int] | None = None,
                 pattern: str | None = None):
        self.kind = kind
        self.enc = enc
        self.ranks, self.pattern = ranks, pattern  # kept for save(); only bpe has them
        self.vocab_size = enc.n_vocab
        self.eot = enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Any) -> str:
        return self.enc.decode(_as_list(ids))

    def decode_bytes(self, ids: Any) -> bytes:
        return self.enc.decode_bytes(_as_list(ids))

    def save(self, folder: Path) -> dict:
        if self.kind == "gpt2":
            return {"kind": "gpt2"}  # the encoding is public; nothing to store
        file = "tokenizer.tiktoken"
        save_ranks(Path(folder) / file, self.ranks)
        return {"kind": "bpe", "file": file, "pattern": self.pattern, "vocab_size": self.vocab_size}


# ---------------------------------------------------------------------------- tiktoken rank files


def save_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    """tiktoken's own format: base64(token) space rank, one per line, in rank order."""
    with atomic_open(path, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken rank file. We parse it ourselves rather than call
    tiktoken.load.load_tiktoken_bpe, which caches by *path* in a temp folder and would
    hand back stale ranks after a folder is rebuilt with a different tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer ranks file not found: {path} (re-run data/prepare.py or give the right path)")
    ranks: dict[bytes, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise DataError(f"{path}:{lineno}: not a tiktoken rank line (want 'base64 rank')") from None
    return ranks


# ---------------------------------------------------------------------------- GPT-2


def get_gpt2_encoding(ranks_file: str | None = None) -> tiktoken.Encoding:
    """GPT-2's encoding: from a local rank file (argument, else $QUILLGPT_GPT2_RANKS), else tiktoken.

    A local file is tried first and, when given, tiktoken's downloader is never called:
    offline it would hang on the network or fail deep inside requests.
    """
    ranks_file = ranks_file or os.environ.get(GPT2_RANKS_ENV)
    if ranks_file:
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer regex

        ranks = load_ranks(ranks_file)
        if len(ranks) != GPT2_EOT:
            raise DataError(f"{ranks_file}: {len(ranks)} ranks, but GPT-2 has {GPT2_EOT}; give GPT-2's gpt2.tiktoken")
        return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                 special_tokens={EOT_TEXT: GPT2_EOT})
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come in many types (requests, urllib3, OSError)
        raise DataError(f"cannot load the GPT-2 encoding ({type(e).__name__}); offline, pass --gpt2_ranks=FILE "
                         f"or set {GPT2_RANKS_ENV} to a gpt2.tiktoken rank file") from None


# ---------------------------------------------------------------------------- BPE training


def _bounded(texts: Iterable[str], max_chars: int | None) -> Iterator[str]:
    total = 0
    for t in texts:
        if max_chars is not None and total + len(t) > max_chars:
            if max_chars - total > 0:
                yield t[: max_chars - total]
            return
        total += len(t)
        yield t


def train_bpe(text_iter: Iterable[str], vocab_size: int, max_chars: int | None = None) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` ids in total: 256 bytes, merges, and <|endoftext|>.

    rustbpe learns the merges (GPT-4-style split pattern, parallel counting in Rust);
    tiktoken then encodes and decodes with them, the split used by nanochat.
    """
    import rustbpe  # only needed for training

    if vocab_size < 257:
        raise DataError(f"--vocab_size={vocab_size} is too small for byte-level BPE; use at least 257 (256 bytes + EOT)")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(_bounded(text_iter, max_chars), vocab_size - 1)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if len(ranks) != vocab_size - 1:
        # rustbpe stops early when the text has no pair left to merge
        raise DataError(f"the training text only supports {len(ranks) + 1} BPE tokens, fewer than "
                         f"--vocab_size={vocab_size}; use a smaller --vocab_size or more text")
    return _bpe_from_ranks(ranks, trainer.get_pattern())


def _bpe_from_ranks(ranks: dict[bytes, int], pattern: str) -> TiktokenTokenizer:
    enc = tiktoken.Encoding(name="quillgpt-bpe", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={EOT_TEXT: len(ranks)})
    return TiktokenTokenizer("bpe", enc, ranks, pattern)


# ---------------------------------------------------------------------------- loading


def load_tokenizer(spec: dict, folder: str | Path, gpt2_ranks: str | None = None) -> Tokenizer:
    """Rebuild the tokenizer that ``Tokenizer.save`` described; files are relative to ``folder``."""
    kind = spec.get("kind")
    folder = Path(folder)
    if kind == "char":
        path = folder / spec["file"]
        if not path.is_file():
            raise DataError(f"char vocabulary not found: {path} (re-run data/prepare.py)")
        with open(path, encoding="utf-8") as f:
            return CharTokenizer(json.load(f)["chars"])
    if kind == "bpe":
        return _bpe_from_ranks(load_ranks(folder / spec["file"]), spec["pattern"])
    if kind == "gpt2":
        return TiktokenTokenizer("gpt2", get_gpt2_encoding(gpt2_ranks))
    raise DataError(f"unknown tokenizer kind {kind!r} in {folder}; known: {', '.join(KINDS)}")
