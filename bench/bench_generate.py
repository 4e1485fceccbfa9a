"""Generation speed: quillgpt (cached and uncached) vs transformers (and nanoGPT, if present).

    python -m bench.bench_generate [--runs=3] [--new_tokens=255] [--batches=1 --batches=8]

Shape: 6 layers, 6 heads, 384 wide, block 256, vocab 65 (10.7M parameters), fp32 on CPU,
classic preset, random weights, a 1-token prompt continued by ``new_tokens`` tokens. Every
contender decodes greedily (ours: temperature=0; transformers: do_sample=False with
min_new_tokens=max_new_tokens so it cannot stop early; nanoGPT: top_k=1, the same argmax
up to ties), so all do the same work per token. After one warm-up call each, every run
times all contenders in turn (interleaved, so drifting machine load hits them alike); each
figure is the median of ``runs``, all in this one process, so ratios are side by side.

On a box shared with other jobs, pass ``--threads=1``: spinning OpenMP workers that compete
for the same cores slow every contender down several-fold and make the numbers noise.

Compiled contenders (ours with ``compile=True``; transformers with a static cache and
``torch.compile``, given the same inductor options as ours) are timed after a first call that
compiles; that first call's time is printed as the compile cost, and is not in the medians
(inductor keeps compiled kernels on disk, so a second process compiles faster).
transformers only auto-compiles on accelerators, so it is forced on CPU through its
``CompileConfig._compile_all_devices`` flag.

nanoGPT is timed only when ``NANOGPT_DIR`` points at a checkout holding its ``model.py``.
The FLOP/s line counts 2 * params FLOPs per generated token (the matmul work of a forward
pass, attention ignored) against the median of a 2048 x 2048 fp32 matmul.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


from model import GPT, GPTConfig
from runtime.options import opt, parse, run_main
from bench.timing import cpu_description, interleaved_medians, matmul_peak

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)


@dataclass
class BenchOptions:
    runs: int = opt(3, "timed runs per contender and batch size (the median is reported)")
    new_tokens: int = opt(255, "tokens generated after the 1-token prompt")
    batches: list[int] = opt([1, 8], "batch sizes to time (repeat the option for several)")
    threads: int = opt(0, "torch intra-op threads; 0 = leave torch's default")
    transformers: bool = opt(True, "also time transformers' GPT2LMHeadModel.generate")
    uncached: bool = opt(True, "also time our use_cache=False path (full forward per token)")
    compiled: bool = opt(True, "also time our compile=True path and transformers' compiled static-cache generate")


def load_nanogpt(directory: str) -> type | None:
    """nanoGPT's (GPT, GPTConfig) classes from ``directory/model.py``, or None."""
    path = Path(directory) / "model.py"
    if not path.is_file():
        print(f"NANOGPT_DIR={directory} has no model.py; skipping nanoGPT")
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_contenders(o: BenchOptions, ours: GPT) -> dict[str, Callable[[torch.Tensor], object]]:
    """Each contender as a function of the prompt ids: ours (cache / compiled / no cache), transformers, nanoGPT."""
    contenders: dict[str, Callable[[torch.Tensor], object]] = {
        "ours (cache)": lambda idx: ours.generate(idx, o.new_tokens, temperature=0.0),
    }
    if o.compiled:
        contenders["ours (compiled)"] = lambda idx: ours.generate(idx, o.new_tokens, temperature=0.0, compile=True)
    if o.uncached:
        contenders["ours (no cache)"] = lambda idx: ours.generate(idx, o.new_tokens, temperature=0.0, use_cache=False)
    if o.transformers:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=256, vocab_size=65,
                                           bos_token_id=None, eos_token_id=None)).eval()

        def hf_generate(idx: torch.Tensor, **extra: object) -> object:
            with torch.inference_mode():
                return hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                   max_new_tokens=o.new_tokens, min_new_tokens=o.new_tokens, pad_token_id=0, **extra)

        contenders["transformers"] = hf_generate
        if o.compiled:
            from transformers import CompileConfig

            from model.generate import INDUCTOR_OPTIONS

            compile_config = CompileConfig(fullgraph=True, dynamic=False, mode=None, options=INDUCTOR_OPTIONS)
            compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
            contenders["transformers (compiled)"] = functools.partial(
                hf_generate, cache_implementation="static", compile_config=compile_config)
    if os.environ.get("NANOGPT_DIR"):
        nano = load_nanogpt(os.environ["NANOGPT_DIR"])
        if nano is not None:
            ngpt = nano.GPT(nano.GPTConfig(**SHAPE, dropout=0.0, bias=True)).eval()

            def nano_generate(idx: torch.Tensor) -> object:
                with torch.no_grad():
                    return ngpt.generate(idx, o.new_tokens, top_k=1)

            contenders["nanoGPT"] = nano_generate
    return contenders


def main(argv: list[str] | None = None) -> None:
    o = parse(BenchOptions, argv, prog="python -m bench.bench_generate", description=__doc__.split("\n\n")[0],
              config_files=False)
    if o.threads:
        torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    ours = GPT(GPTConfig.classic(**SHAPE)).eval()
    n_params = ours.num_params()
    contenders = build_contenders(o, ours)
    print(cpu_description(), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {n_params / 1e6:.2f}M params, "
          f"{o.new_tokens} new tokens from a 1-token prompt, greedy, median of {o.runs} runs", flush=True)
    rates: dict[tuple[str, int], float] = {}
    for batch in o.batches:
        idx = torch.zeros(batch, 1, dtype=torch.long)
        calls = {name: functools.partial(fn, idx) for name, fn in contenders.items()}
        for name, call in calls.items():  # warm-up; for compiled contenders this is the compile
            t0 = time.perf_counter()
            call()
            print(f"  b{batch} {name}: first call {time.perf_counter() - t0:.1f} s", flush=True)
        for name, seconds in interleaved_medians(calls, o.runs, warmup=False).items():
            rates[name, batch] = batch * o.new_tokens / seconds
            print(f"  b{batch} {name}: {rates[name, batch]:.1f} tok/s", flush=True)

    peak = matmul_peak()
    header = f"{'contender':<25}" + "".join(f"{'b' + str(b) + ' tok/s':>14}" for b in o.batches)
    print(header)
    print("-" * len(header))
    for name in contenders:
        print(f"{name:<25}" + "".join(f"{rates[name, b]:>14.1f}" for b in o.batches))
    pairs = [("ours (cache)", "transformers"), ("ours (compiled)", "transformers"),
             ("ours (compiled)", "transformers (compiled)"), ("ours (cache)", "nanoGPT"), ("ours (compiled)", "nanoGPT")]
    for a, b_name in pairs:
        if a in contenders and b_name in contenders:
            print(f"ratio {a} / {b_name}: " + ", ".join(f"b{b} {rates[a, b] / rates[b_name, b]:.2f}x"
                                                      for b in o.batches))
    print(f"matmul peak (2048^2 fp32): {peak / 1e9:.1f} GFLOP/s")
    # Each decode step streams every weight once for the whole batch: at batch 1 that memory
    # traffic, not arithmetic, bounds the speed (these weights outgrow a 32 MB L3 cache).
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    for name in ("ours (cache)", "ours (compiled)"):
        for b in o.batches if name in contenders else ():
            achieved = 2 * n_params * rates[name, b]
            print(f"{name} at b{b}: {achieved / 1e9:.2f} GFLOP/s = {100 * achieved / peak:.1f}% of matmul peak; "
                  f"weights read at {weight_bytes * rates[name, b] / b / 1e9:.1f} GB/s ({weight_bytes / 1e6:.0f} MB "
                  f"per step)")


if __name__ == "__main__":
    run_main(main)
