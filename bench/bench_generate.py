"""Generation speed: quillgpt (cached and uncached) vs transformers (and nanoGPT, if present).

    python bench/bench_generate.py [--runs=3] [--new_tokens=255] [--batches=1 --batches=8]

Shape: 6 layers, 6 heads, 384 wide, block 256, vocab 65 (10.7M parameters), fp32 on CPU,
classic preset, random weights, a 1-token prompt continued by ``new_tokens`` tokens. Every
contender decodes greedily (ours: temperature=0; transformers: do_sample=False with
min_new_tokens=max_new_tokens so it cannot stop early; nanoGPT: top_k=1, the same argmax
up to ties), so all do the same work per token. Each timing is the median of ``runs``
after one warm-up, all in this one process, so ratios are measured side by side.

On a box shared with other jobs, pass ``--threads=1``: spinning OpenMP workers that compete
for the same cores slow every contender down several-fold and make the numbers noise.

nanoGPT is timed only when ``NANOGPT_DIR`` points at a checkout holding its ``model.py``.
The FLOP/s line counts 2 * params FLOPs per generated token (the matmul work of a forward
pass, attention ignored) against the median of a 2048 x 2048 fp32 matmul.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

from model import GPT, GPTConfig  # noqa: E402
from options import opt, parse, run_main  # noqa: E402
from timing import matmul_peak, median_seconds  # noqa: E402

SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65)


@dataclass
class BenchOptions:
    runs: int = opt(3, "timed runs per contender and batch size (the median is reported)")
    new_tokens: int = opt(255, "tokens generated after the 1-token prompt")
    batches: list[int] = opt([1, 8], "batch sizes to time (repeat the option for several)")
    threads: int = opt(0, "torch intra-op threads; 0 = leave torch's default")
    transformers: bool = opt(True, "also time transformers' GPT2LMHeadModel.generate")
    uncached: bool = opt(True, "also time our use_cache=False path (full forward per token)")


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


def main(argv: list[str] | None = None) -> None:
    o = parse(BenchOptions, argv, prog="bench_generate.py", description=__doc__.split("\n\n")[0], config_files=False)
    if o.threads:
        torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    ours = GPT(GPTConfig.classic(**SHAPE)).eval()
    n_params = ours.num_params()
    contenders: dict[str, Callable[[torch.Tensor], object]] = {
        "ours (cache)": lambda idx: ours.generate(idx, o.new_tokens, temperature=0.0),
    }
    if o.uncached:
        contenders["ours (no cache)"] = lambda idx: ours.generate(idx, o.new_tokens, temperature=0.0, use_cache=False)
    if o.transformers:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=256, vocab_size=65,
                                           bos_token_id=None, eos_token_id=None)).eval()

        def hf_generate(idx: torch.Tensor) -> object:
            with torch.inference_mode():
                return hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                                   max_new_tokens=o.new_tokens, min_new_tokens=o.new_tokens, pad_token_id=0)

        contenders["transformers"] = hf_generate
    if os.environ.get("NANOGPT_DIR"):
        nano = load_nanogpt(os.environ["NANOGPT_DIR"])
        if nano is not None:
            ngpt = nano.GPT(nano.GPTConfig(**SHAPE, dropout=0.0, bias=True)).eval()

            def nano_generate(idx: torch.Tensor) -> object:
                with torch.no_grad():
                    return ngpt.generate(idx, o.new_tokens, top_k=1)

            contenders["nanoGPT"] = nano_generate

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {n_params / 1e6:.2f}M params, "
          f"{o.new_tokens} new tokens from a 1-token prompt, greedy, median of {o.runs} runs", flush=True)
    rates: dict[tuple[str, int], float] = {}
    for batch in o.batches:
        idx = torch.zeros(batch, 1, dtype=torch.long)
        for name, fn in contenders.items():
            seconds = median_seconds(lambda: fn(idx), o.runs)
            rates[name, batch] = batch * o.new_tokens / seconds
            print(f"  b{batch} {name}: {rates[name, batch]:.1f} tok/s", flush=True)

    peak = matmul_peak()
    header = f"{'contender':<18}" + "".join(f"{'b' + str(b) + ' tok/s':>14}" for b in o.batches)
    print(header)
    print("-" * len(header))
    for name in contenders:
        print(f"{name:<18}" + "".join(f"{rates[name, b]:>14.1f}" for b in o.batches))
    if "transformers" in contenders:
        for b in o.batches:
            print(f"ratio ours (cache) / transformers at b{b}: {rates['ours (cache)', b] / rates['transformers', b]:.2f}x")
    if "nanoGPT" in contenders:
        for b in o.batches:
            print(f"ratio ours (cache) / nanoGPT at b{b}: {rates['ours (cache)', b] / rates['nanoGPT', b]:.2f}x")
    print(f"matmul peak (2048^2 fp32): {peak / 1e9:.1f} GFLOP/s")
    for b in o.batches:
        achieved = 2 * n_params * rates["ours (cache)", b]
        print(f"ours (cache) at b{b}: {achieved / 1e9:.2f} GFLOP/s = {100 * achieved / peak:.1f}% of matmul peak")
    # Each decode step streams every weight once for the whole batch: at batch 1 that memory
    # traffic, not arithmetic, bounds the speed (these weights outgrow a 32 MB L3 cache).
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    for b in o.batches:
        steps_per_s = rates["ours (cache)", b] / b
        print(f"ours (cache) at b{b}: weights read at {weight_bytes * steps_per_s / 1e9:.1f} GB/s "
              f"({weight_bytes / 1e6:.0f} MB per step)")


if __name__ == "__main__":
    run_main(main)
