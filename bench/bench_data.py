"""Data-path speed: tokenizer throughput, BPE training time and batch loading.

    python -m bench.bench_data [--runs=5] [--input=PATH] [--gpt2_ranks=FILE] [--vocab_size=4096]

On tinyshakespeare (1.1 MB) by default, read from ../shared. Each figure is the median of
``runs`` timed runs after one warm-up, all in this one process, so the ratios are side by side:
our Tokenizer.encode against a bare tiktoken ``encode_ordinary`` on the whole text shows what
our wrapper costs (it should be ~1.0x). GPT-2's ranks come from a local file, never the network.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from data.loader import BatchLoader
from data.tokenfile import token_dtype
from data.tokenizer import CharTokenizer, TiktokenTokenizer, get_gpt2_encoding, train_bpe
from runtime.errors import UsageError
from runtime.options import opt, parse, run_main
from bench.timing import cpu_description, median_seconds

SHARED = Path(os.environ.get("QUILLGPT_SHARED") or Path(__file__).resolve().parents[2] / "shared")


@dataclass
class BenchOptions:
    runs: int = opt(5, "timed runs per measurement (the median is reported)")
    input: str = opt(str(SHARED / "data" / "tinyshakespeare.txt"), "the text to tokenize")
    gpt2_ranks: str = opt(str(SHARED / "data" / "gpt2.tiktoken"), "GPT-2 ranks in tiktoken format")
    vocab_size: int = opt(4096, "vocabulary size for the BPE training measurement")


def main(argv: list[str] | None = None) -> None:
    o = parse(BenchOptions, argv, prog="python -m bench.bench_data", description=__doc__.split("\n\n")[0],
              config_files=False)
    path = Path(o.input)
    if not path.is_file():
        raise UsageError(f"benchmark text not found: {path}; pass --input=PATH (e.g. ../shared/data/tinyshakespeare.txt)")
    text = path.read_text(encoding="utf-8")
    print(cpu_description())
    mb = len(text.encode("utf-8")) / 1e6
    train = text[: int(len(text) * 0.9)]

    enc = get_gpt2_encoding(o.gpt2_ranks)
    gpt2 = TiktokenTokenizer("gpt2", enc)
    char = CharTokenizer(text)
    bpe_seconds = median_seconds(lambda: train_bpe([train], o.vocab_size), o.runs)
    bpe = train_bpe([train], o.vocab_size)

    rows = []  # (what, seconds, tokens)
    for name, fn in [("tiktoken gpt2 encode_ordinary (bare)", lambda: enc.encode_ordinary(text)),
                     ("quillgpt Tokenizer.encode, gpt2", lambda: gpt2.encode(text)),
                     (f"quillgpt Tokenizer.encode, bpe{o.vocab_size}", lambda: bpe.encode(text)),
                     ("quillgpt Tokenizer.encode, char", lambda: char.encode(text))]:
        rows.append((name, median_seconds(fn, o.runs), len(fn())))

    print(f"text: {path} ({mb:.2f} MB), median of {o.runs} runs, {os.cpu_count()} CPU cores")
    print(f"{'tokenizer':44s} {'MB/s':>8s} {'tokens':>10s} {'vs bare':>8s}")
    base = rows[0][1]
    for name, sec, n in rows:
        print(f"{name:44s} {mb / sec:8.2f} {n:10,d} {base / sec:7.2f}x")

    print(f"\nBPE training, vocab {o.vocab_size}, on the first 90% ({len(train.encode('utf-8')) / 1e6:.2f} MB): "
          f"{bpe_seconds:.3f} s")

    # batch loading from a real token file: what the training loop pays per step
    with tempfile.TemporaryDirectory() as tmp:
        ids = bpe.encode(text)
        token_path = Path(tmp) / "train.bin"
        np.asarray(ids, dtype=token_dtype(bpe.vocab_size)).tofile(token_path)
        for mode in ("random", "sequential"):
            loader = BatchLoader(token_path, 256, 32, mode=mode, dtype=token_dtype(bpe.vocab_size))
            sec = median_seconds(lambda: [loader.next_batch() for _ in range(100)], o.runs) / 100
            print(f"BatchLoader {mode:10s} batch 32 x block 256: {sec * 1e6:7.1f} us/batch "
                  f"({32 * 256 / sec / 1e6:.1f} M tokens/s)")


if __name__ == "__main__":
    run_main(main)
