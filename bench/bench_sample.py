"""Whole-program speed of sample.py: time to first token and steady tokens/s, as a user sees them.

    python -m bench.bench_sample                        # the default train.py run folder, ./out
    python -m bench.bench_sample --out_dir=out --runs=5 --threads=1

Each figure comes from a real ``python sample.py ...`` subprocess:

- time to first token: process start (just before Popen) to the first byte on stdout, which
  sample.py writes together with the first generated token; includes Python start-up, importing
  torch, loading the checkpoint and the prompt's prefill;
- steady tokens/s: the decode rate sample.py reports on stderr (tokens after the first, divided
  by the time after the first), at batch 1 and at ``--num_samples 8`` (counting every row);
  with ``--compile`` it starts after the second token, whose step compiles, and the compile
  time is its own column.

Figures are medians over ``--runs`` processes. Without a run folder at --out_dir, a checkpoint
with train.py's default architecture and random weights is built in a temporary folder (said so
in the output): the speed is the same, the text is noise.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from runtime.options import opt, parse, run_main


@dataclass
class BenchOptions:
    out_dir: str = opt("out", "run folder to sample from; if absent, a random-weight checkpoint is built")
    runs: int = opt(3, "processes per figure; the median is reported (>= 1)")
    max_new_tokens: int = opt(500, "tokens per sample in each run")
    threads: int | None = opt(None, "OMP_NUM_THREADS for sample.py; none = torch's default")
    compile: bool = opt(True, "also time sample.py --compile (its first token includes compiling the decode step)")


def default_checkpoint(folder: Path) -> str:
    """Save a random-weight model with train.py's default architecture and a char tokenizer; returns a description."""
    import torch

    from data.tokenizer import CharTokenizer
    from model import GPT, GPTConfig, save_model

    try:  # follow train.py's defaults when it is importable
        from training.config import TrainConfig

        c = TrainConfig()
        arch = dict(preset=c.model, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size)
    except Exception:  # train.py missing or changed: its documented defaults at the time of writing
        arch = dict(preset="modern", n_layer=4, n_head=4, n_embd=128, block_size=64)
    shakespeare = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
    if shakespeare.is_file():
        chars = set(shakespeare.read_text(encoding="utf-8"))
    else:
        chars = set(map(chr, range(32, 127))) | {"\n"}
    tok = CharTokenizer(sorted(chars))
    preset = arch.pop("preset")
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(preset, vocab_size=tok.vocab_size, **arch))
    save_model(model, folder, {"tokenizer": tok.save(folder)})
    return (f"random weights, train.py's default architecture ({preset}, {arch['n_layer']} layers, "
            f"{arch['n_embd']} wide, context {arch['block_size']}, char vocab {tok.vocab_size})")


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(seconds from process start to the first stdout byte, decode tokens/s reported on stderr,
    seconds the --compile step took to compile, or nan)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "sample.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)
    ttft = time.perf_counter() - t0
    _, stderr = proc.communicate()
    if proc.returncode != 0 or not first:
        raise SystemExit(f"sample.py failed ({proc.returncode}):\n{stderr.decode(errors='replace')}")
    m = re.search(r"then ([\d.]+) tokens/s", stderr.decode())
    c = re.search(r"compiling the decode step took ([\d.]+) s", stderr.decode())
    return ttft, float(m.group(1)) if m else float("nan"), float(c.group(1)) if c else float("nan")


def main(argv: list[str] | None = None) -> int:
    o = parse(BenchOptions, argv, prog="python -m bench.bench_sample", description=__doc__, config_files=False)
    from bench.timing import cpu_description

    print(cpu_description())
    env = {**os.environ}
    if o.threads is not None:
        env["OMP_NUM_THREADS"] = str(o.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(o.out_dir)
        if (out / "model.safetensors").is_file() or (out / "best" / "model.safetensors").is_file():
            what = f"{out} (train.py run folder)"
        else:
            out = Path(tmp) / "run"
            what = default_checkpoint(out) + f"; no run folder at {o.out_dir}"
        base = ["--out_dir", str(out), "--max_new_tokens", str(o.max_new_tokens), "--seed", "1",
                "--stop_at_eot=false"]
        rows = []
        cases = [("batch 1", []), ("batch 8", ["--num_samples", "8"])]
        if o.compile:
            cases += [("batch 1, --compile", ["--compile"]), ("batch 8, --compile", ["--num_samples", "8", "--compile"])]
        for label, extra in cases:
            runs = [run_once(base + extra, env) for _ in range(max(1, o.runs))]
            rows.append((label, *(statistics.median(r[i] for r in runs) for i in range(3))))
    print(f"checkpoint: {what}")
    print(f"command:    OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', '(unset)')} python sample.py {' '.join(base)} "
          f"[--num_samples 8] [--compile]   (median of {o.runs} runs, {os.cpu_count()} CPUs)")
    print(f"{'':20} {'first token (s)':>16} {'steady tokens/s':>16} {'compiling (s)':>14}")
    for label, ttft, rate, compiling in rows:
        print(f"{label:20} {ttft:16.2f} {rate:16.1f} {'' if math.isnan(compiling) else f'{compiling:.2f}':>14}")
    return 0


if __name__ == "__main__":
    run_main(main)
