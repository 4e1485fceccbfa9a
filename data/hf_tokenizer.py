"""Our tokenizers as Hugging Face ``tokenizer.json`` + ``tokenizer_config.json``.

``AutoTokenizer.from_pretrained(folder)`` then encodes exactly as ours: the text "<|endoftext|>" is
spelled out (``split_special_tokens``), never read as EOT, and no BOS is added.

- bpe / gpt2: a byte-level BPE. tiktoken merges the adjacent pair whose concatenation has the lowest
  rank; the equivalent ordered merge list holds every split of a token into two tokens, at that
  token's rank, and ``ignore_merges`` takes a whole pre-token that is itself a token at once.
- char: one WordLevel entry per code point; an unknown character is an error, as in ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_write_bytes
from runtime.errors import DataError

EOT_TEXT = "<|endoftext|>"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE files are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 take U+0100, U+0101, ... in byte order.
    """
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of an HF BPE that merges as tiktoken does with ``ranks``."""
    b2u = byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(b2u[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {text(t): r for t, r in ranks.items()}, [(text(a), text(b)) for *_, a, b in merges]


def tiktoken_parts(tok: Any) -> tuple[dict[bytes, int], str]:
    """(ranks, pattern) of a bpe or gpt2 tokenizer, read through tiktoken's public API where it has one."""
    if tok.ranks is not None:
        return tok.ranks, tok.pattern
    enc = tok.enc
    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    return ranks, enc._pat_str  # tiktoken exposes no public accessor for the split pattern


def hf_tokenizer(tok: Any) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes and decodes as ``tok`` (char, bpe or gpt2)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if tok.kind == "char":
        out = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(tok.chars)}, unk_token=None))
        # [\s\S] is one code point, newline included, as Python's str iteration splits
        out.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated", invert=False)
        out.decoder = decoders.Fuse()  # characters join with no separator
        return out
    if tok.kind not in ("bpe", "gpt2"):
        raise DataError(f"tokenizer kind {tok.kind!r} has no Hugging Face form; export supports char, bpe, gpt2")
    ranks, pattern = tiktoken_parts(tok)
    vocab, merges = bpe_vocab_merges(ranks)
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False))
    out.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([AddedToken(EOT_TEXT, special=True, normalized=False)])
    if out.token_to_id(EOT_TEXT) != tok.eot:
        raise DataError(f"the tokenizer's EOT id {tok.eot} is not just past its {len(ranks)} ranks; cannot export it")
    return out


def write_hf_tokenizer(tok: Any, folder: str | Path, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``tok`` into ``folder``."""
    folder = Path(folder)
    atomic_write_bytes(folder / TOKENIZER_JSON, hf_tokenizer(tok).to_str().encode("utf-8"))
    # PreTrainedTokenizerFast loads tokenizer.json as it is; without a class, a gpt2 config would pick
    # GPT2Tokenizer, which rebuilds its own pipeline and encodes differently
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model_max_length,
                           "clean_up_tokenization_spaces": False, "split_special_tokens": True}
    if getattr(tok, "eot", None) is not None:
        cfg.update(bos_token=EOT_TEXT, eos_token=EOT_TEXT, pad_token=EOT_TEXT)
    atomic_write_bytes(folder / TOKENIZER_CONFIG, (json.dumps(cfg, indent=2) + "\n").encode("utf-8"))


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` behind our Tokenizer interface (what sample.py needs).

    Decoding goes through each id's bytes, so a character cut between two tokens is one U+FFFD, as in
    ours; a byte-level vocabulary's strings map back to bytes through the inverse GPT-2 byte table.
    """

    kind = "hf"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HF

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            self.hf = HF.from_str(text)
            decoder = (json.loads(text).get("decoder") or {}).get("type")
        except Exception as e:  # OSError, bad JSON, or tokenizers' own plain Exception
            raise DataError(f"{path} is not a readable Hugging Face tokenizer.json ({type(e).__name__}: "
                            f"{str(e)[:100]})") from None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        self.eot = self.hf.token_to_id(EOT_TEXT)
        special = {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}
        inverse = {c: b for b, c in byte_to_unicode().items()}
        self._bytes: list[bytes] = []
        for i in range(self.vocab_size):
            s = self.hf.id_to_token(i) or ""
            if decoder == "ByteLevel" and s not in special:
                self._bytes.append(bytes(inverse[c] for c in s))
            else:
                self._bytes.append(s.encode("utf-8"))
        self._special = special

    def encode(self, text: str) -> list[int]:
        try:
            return self.hf.encode(text, add_special_tokens=False).ids
        except Exception as e:  # a WordLevel vocabulary without an unknown token refuses new characters
            raise DataError(f"the folder's tokenizer cannot encode this text ({str(e)[:100]})") from None

    def decode_bytes(self, ids: Any) -> bytes:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return b"".join(self._bytes[i] for i in ids)

    def decode(self, ids: Any) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self) -> list[int]:
        return [0 if self.hf.id_to_token(i) in self._special else len(b) for i, b in enumerate(self._bytes)]
