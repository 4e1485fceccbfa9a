"""Training throughput at nanoGPT's README CPU recipe shape, beside the CPU's measured matmul peak.

    python -m bench.bench_train                       # ours only (+ nanoGPT if NANOGPT_DIR is set)
    NANOGPT_DIR=/path/to/nanoGPT python -m bench.bench_train --steps=50 --repeats=5

Shape: classic GPT-2 block, 4 layers / 4 heads / 128 wide, block 64, batch 12, vocab 65, no bias,
no dropout, fp32, AdamW, grad clip 1.0 (nanoGPT's `config/train_shakespeare_char.py` with the
README's CPU overrides). Both train steps run in this process on the same random batches,
interleaved, median of ``repeats`` timings of ``steps`` steps each: ours is the very
``training.trainer.Trainer.step()`` that train.py runs (its batch loader included, which nanoGPT's
contender is spared: it gets prepared batches); nanoGPT's is its train.py loop body with its model.py. Achieved FLOP/s uses the PaLM count (6N + 12LHQT),
the same for both, against the fp32 peak of a 2048x2048 matmul measured in the same run.
nanoGPT is never vendored: point NANOGPT_DIR at a checkout (default ../nanoGPT).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from runtime.options import opt, parse, run_main
from bench.timing import cpu_description, matmul_peak


@dataclass
class BenchOptions:
    steps: int = opt(40, "train steps per timing")
    repeats: int = opt(5, "timings per contestant (median reported)")
    warmup: int = opt(5, "untimed steps first")
    threads: int = opt(0, "torch threads; 0 = torch's default")
    nanogpt_dir: str | None = opt(None, "a nanoGPT checkout (default $NANOGPT_DIR, else ../nanoGPT)")
    full_loop: bool = opt(True, "also time train.train() end to end (loader, logging) on a synthetic corpus")


SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65)
BATCH = 12


def batches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, SHAPE["vocab_size"], (100_000,), generator=g)
    out = []
    for _ in range(count):
        ix = torch.randint(len(data) - SHAPE["block_size"] - 1, (BATCH,), generator=g)
        x = torch.stack([data[i:i + SHAPE["block_size"]] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + SHAPE["block_size"]] for i in ix])
        out.append((x, y))
    return out


def ours(work: Path) -> tuple[str, callable, float]:
    """The very ``Trainer.step()`` that ``python train.py`` runs (loader, schedule, clip, step, zero_grad)."""
    from training.config import TrainConfig
    from training.setup import set_up

    corpus = work / "corpus.txt"  # 65 distinct characters, like tinyshakespeare's vocabulary
    g = torch.Generator().manual_seed(0)
    alphabet = [chr(c) for c in range(40, 40 + SHAPE["vocab_size"])]
    corpus.write_text("".join(alphabet[i] for i in torch.randint(0, len(alphabet), (200_000,), generator=g)),
                      encoding="utf-8")
    cfg = TrainConfig(model="classic", bias=False, activation="gelu", dropout=0.0, optimizer="adamw",
                      learning_rate=1e-3, beta2=0.99, grad_clip=1.0, warmup_iters=100, max_iters=2000,
                      batch_size=BATCH, dtype="float32", dataset="bench", input=str(corpus),
                      data_dir=str(work / "data"), out_dir=str(work / "out"), seed=1337,
                      threads=torch.get_num_threads(),  # fixed, as nanoGPT's: no governor trials in the timing
                      **{k: v for k, v in SHAPE.items() if k != "vocab_size"})
    trainer = set_up(cfg, log_to_console=False)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # draws its own batch from its loader, as in training
        trainer.step()

    return "quillgpt", step, trainer.raw_model.flops_per_token(SHAPE["block_size"])


def nanogpt(folder: Path) -> tuple[str, callable, float]:
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import contextlib
    import io

    torch.manual_seed(1337)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter counts
        model = mod.GPT(mod.GPTConfig(**SHAPE, dropout=0.0, bias=False))
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    state = {"it": 0}

    def get_lr(it: int) -> float:  # nanoGPT's schedule, as in its train.py
        import math

        warmup, decay, lr, min_lr = 100, 2000, 1e-3, 1e-4
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (decay - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:  # nanoGPT train.py's loop body
        lr = get_lr(state["it"])
        for g in optimizer.param_groups:
            g["lr"] = lr
        with nullcontext():
            _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state["it"] += 1

    # PaLM count on nanoGPT's model (its estimate_mfu uses the same 6N + 12LHQT form)
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    fpt = 6 * n + 12 * SHAPE["n_layer"] * SHAPE["n_embd"] * SHAPE["block_size"]
    return "nanoGPT", step, fpt


def time_steps(step, data, steps: int) -> float:
    t = time.perf_counter()
    for x, y in data[:steps]:
        step(x, y)
    return (time.perf_counter() - t) / steps


def full_loop(steps: int) -> float:
    """tokens/s of train.train() itself (BatchLoader, logging, metrics.jsonl) on a synthetic corpus."""
    import random

    import train

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        rnd = random.Random(0)
        words = ["thou", "art", "more", "lovely", "and", "temperate", "rough", "winds", "do", "shake", "the"]
        text.write_text(" ".join(rnd.choice(words) for _ in range(60_000)), encoding="utf-8")
        cfg = train.load_config([f"--input={text}", "--dataset=bench", f"--data_dir={tmp}/data",
                                 f"--out_dir={tmp}/out", str(ROOT / "configs" / "shakespeare_char_cpu.toml"),
                                 f"--max_iters={steps + 10}", "--log_interval=10", f"--eval_interval={10**6}",
                                 "--eval_iters=1", "--sample_tokens=0", "--init_from=scratch",
                                 f"--threads={torch.get_num_threads()}"])
        res = train.train(cfg, log_to_console=False)
    return res["tokens_per_sec"]


def main(argv: list[str] | None = None) -> int:
    o = parse(BenchOptions, argv, prog="python -m bench.bench_train", description=__doc__.split("\n\n")[0],
              config_files=False)
    if o.threads:
        torch.set_num_threads(o.threads)
    folder = Path(o.nanogpt_dir or os.environ.get("NANOGPT_DIR") or "../nanoGPT")
    work = Path(tempfile.mkdtemp(prefix="quillgpt-bench-train-"))
    contestants = [ours(work)]
    if (folder / "model.py").is_file():
        contestants.append(nanogpt(folder))
    else:
        print(f"nanoGPT: skipped ({folder}/model.py not found; set NANOGPT_DIR to a karpathy/nanoGPT checkout)")
    peak = matmul_peak()
    data = batches(0, o.steps + o.warmup)
    for _, step, _ in contestants:
        time_steps(step, data, o.warmup)
    per_step: dict[str, list[float]] = {name: [] for name, _, _ in contestants}
    for _ in range(o.repeats):  # interleaved, so machine noise hits both alike
        for name, step, _ in contestants:
            per_step[name].append(time_steps(step, data[o.warmup:], o.steps))
    tokens = BATCH * SHAPE["block_size"]
    print(cpu_description())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak (2048^2): "
          f"{peak / 1e9:.1f} GFLOP/s")
    print(f"shape: classic 4/4/128, block 64, batch 12, fp32, AdamW; {o.repeats} x {o.steps} steps, median")
    results = {}
    for name, _, fpt in contestants:
        s = statistics.median(per_step[name])
        results[name] = s
        print(f"  {name:9s} {s * 1000:7.2f} ms/step  {tokens / s:9,.0f} tok/s  "
              f"{fpt * tokens / s / 1e9:6.2f} GFLOP/s = {fpt * tokens / s / peak * 100:5.1f}% of peak  "
              f"(runs: {', '.join(f'{t * 1000:.1f}' for t in per_step[name])} ms)")
    if "nanoGPT" in results:
        print(f"  speed ratio quillgpt / nanoGPT: {results['nanoGPT'] / results['quillgpt']:.3f}x (goal >= 1.0)")
    if o.full_loop:
        print(f"  train.train() end to end (loader + logging): {full_loop(o.steps * 2):,.0f} tok/s")
    return 0


if __name__ == "__main__":
    run_main(main)
