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
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import tiktoken

from data.options import TOKENIZERS
from runtime.atomic import atomic_write_bytes
from runtime.errors import DataError
from runtime.paths import member

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

    def token_bytes(self) -> list[int]:
        """Each id's length in UTF-8 bytes (0 for special tokens such as <|endoftext|>), index = id:
        what bits per byte divides by, so losses under different tokenizers compare."""
        raise NotImplementedError

    def save(self, folder: Path) -> dict:
        """Write the tokenizer's file (if any) into ``folder``; return the JSON spec for meta.json.

        The spec records the file's sha256, so a loader can tell a file that belongs to another
        corpus or run (same name, other vocabulary) from the one it was saved with.
        """
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

    def token_bytes(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def save(self, folder: Path) -> dict:
        data = (json.dumps({"chars": self.chars}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        return {"kind": self.kind, "file": self.file, "sha256": write_if_changed(Path(folder) / self.file, data)}


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

    def token_bytes(self) -> list[int]:
        special = {self.enc.encode_single_token(t) for t in self.enc.special_tokens_set}
        return [0 if i in special else len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]

    def save(self, folder: Path) -> dict:
        if self.kind == "gpt2":
            return {"kind": "gpt2"}  # the encoding is public; nothing to store
        file = "tokenizer.tiktoken"
        digest = write_if_changed(Path(folder) / file, ranks_bytes(self.ranks))
        return {"kind": "bpe", "file": file, "pattern": self.pattern, "vocab_size": self.vocab_size, "sha256": digest}


def write_if_changed(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically unless the file already holds exactly that; return its sha256.

    A resumed run re-saves its tokenizer: an unchanged file keeps its bytes and its mtime.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not (path.is_file() and not path.is_symlink() and file_sha256(path) == digest):
        atomic_write_bytes(path, data)
    return digest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------- tiktoken rank files


def ranks_bytes(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's own format: base64(token) space rank, one per line, in rank order."""
    lines = (f"{base64.b64encode(token).decode('ascii')} {rank}\n"
             for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return "".join(lines).encode("ascii")


def save_ranks(path: Path, ranks: dict[bytes, int]) -> None:
    """Write a tiktoken rank file atomically."""
    atomic_write_bytes(path, ranks_bytes(ranks))


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


def tokenizer_file(spec: dict, folder: str | Path) -> tuple[Path, str]:
    """(path, sha256) of the file a spec names, inside ``folder``.

    DataError for a name that leads out of the folder, a missing file, or a file whose sha256 is
    not the one the spec recorded (it belongs to another corpus or run).
    """
    path = member(folder, spec.get("file"))
    if path is None:
        raise DataError(f"the tokenizer spec in {folder} names {spec.get('file')!r}, which is not a file inside "
                        "that folder; the folder is corrupt or hostile: rebuild it")
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path} (re-run data/prepare.py, or restore the run folder)")
    digest = file_sha256(path)
    if isinstance(spec.get("sha256"), str) and digest != spec["sha256"]:
        raise DataError(f"{path} is not the tokenizer this folder was saved with (its sha256 differs): it belongs "
                        "to another corpus or run; restore the original file")
    return path, digest


def tokenizer_fingerprint(spec: dict, folder: str | Path) -> str:
    """What identifies a tokenizer: ``gpt2``, or its kind and the sha256 of its file (read from disk)."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise DataError(f"no usable tokenizer spec for {folder}: {spec!r}")
    if spec["kind"] == "gpt2":
        return "gpt2"
    return f"{spec['kind']}:{tokenizer_file(spec, folder)[1]}"


def load_tokenizer(spec: dict, folder: str | Path, gpt2_ranks: str | None = None) -> Tokenizer:
    """Rebuild the tokenizer that ``Tokenizer.save`` described; its file must be inside ``folder``.

    Everything read is checked (the folder is untrusted input): DataError for a malformed spec,
    a file that is not what the spec says (sha256) or a vocabulary that is not one.
    """
    if not isinstance(spec, dict):
        raise DataError(f"the tokenizer spec for {folder} is not a JSON object: {spec!r}")
    kind = spec.get("kind")
    folder = Path(folder)
    if kind == "gpt2":
        return TiktokenTokenizer("gpt2", get_gpt2_encoding(gpt2_ranks))
    if kind not in KINDS:
        raise DataError(f"unknown tokenizer kind {kind!r} in {folder}; known: {', '.join(KINDS)}")
    path, _ = tokenizer_file(spec, folder)
    if kind == "char":
        try:
            with open(path, encoding="utf-8") as f:
                chars = json.load(f).get("chars")
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"{path} is not a char vocabulary ({type(e).__name__}); rebuild it") from None
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise DataError(f"{path}: 'chars' is not a list of characters; rebuild it")
        return CharTokenizer(chars)
    pattern, ranks = spec.get("pattern"), load_ranks(path)
    if not isinstance(pattern, str):
        raise DataError(f"the bpe tokenizer spec for {folder} has no split pattern; rebuild it")
    if sorted(ranks.values()) != list(range(len(ranks))) or not all(bytes([b]) in ranks for b in range(256)):
        raise DataError(f"{path}: not a byte-level BPE (ranks 0..{len(ranks) - 1} each once, every byte a token); "
                        "rebuild it")
    try:
        tok = _bpe_from_ranks(ranks, pattern)
    except ValueError as e:
        raise DataError(f"{path}: not a usable BPE ({str(e)[:100]}); rebuild it") from None
    if spec.get("vocab_size", tok.vocab_size) != tok.vocab_size:
        raise DataError(f"{path} has {tok.vocab_size} tokens, the spec says {spec['vocab_size']}; rebuild it")
    return tok
