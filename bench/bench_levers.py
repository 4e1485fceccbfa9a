"""What each speed lever of a preset buys per step on this CPU, side by side in one run.

    python -m bench.bench_levers                                   # configs/speedrun_cpu_long.toml
    python -m bench.bench_levers configs/speedrun_cpu.toml --steps=5 --repeats=5

Builds one trainer per variant of the preset (eager or torch.compile; dropout on the attention
weights as the residuals', or none) on a synthetic corpus, and times the very ``Trainer.step()``
that train.py runs, rounds interleaved, median of ``--repeats`` (compiling happens in the untimed
warm-up and is reported apart). Then Muon's Newton-Schulz over the preset's matrices: each matrix
alone, against every same-shape matrix as one stack (what ``training.muon.Muon`` does).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.bench_precision import synthetic_corpus
from bench.timing import cpu_description, interleaved_medians
from runtime.options import opt, parse, run_main

PRESET = "configs/speedrun_cpu_long.toml"
VARIANTS = {  # name: train.py options
    "eager, attention-weight dropout = dropout": ["--compile=false", "--attn_dropout=none"],
    "eager, attn_dropout 0": ["--compile=false", "--attn_dropout=0"],
    "compiled, attention-weight dropout = dropout": ["--compile=true", "--attn_dropout=none"],
    "compiled, attn_dropout 0": ["--compile=true", "--attn_dropout=0"],
}


@dataclass
class LeverOptions:
    steps: int = opt(5, "train steps per timing")
    repeats: int = opt(5, "timings per variant (median reported)")
    threads: int = opt(0, "torch threads, fixed for every variant; 0 = torch's default")


def trainer(argv: list[str], work: Path, name: str):
    """A Trainer for train.py's options ``argv`` on the synthetic corpus, at a fixed thread count."""
    import train
    from training.setup import set_up

    cfg = train.load_config([*argv, "--dataset=bench", f"--input={synthetic_corpus(work)}", "--device=cpu",
                             f"--data_dir={work / 'data'}", f"--out_dir={work / name}", "--overwrite",
                             f"--threads={torch.get_num_threads()}"])
    return set_up(cfg, log_to_console=False)


def muon_matrices(model: torch.nn.Module) -> list[torch.Tensor]:
    """Random stand-ins for the gradients Muon orthogonalises: every 2-D matrix of the blocks."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n]


def main(argv: list[str] | None = None) -> int:
    from training.muon import newton_schulz

    args = list(sys.argv[1:] if argv is None else argv)
    presets = [a for a in args if a.endswith(".toml")] or [PRESET]
    o = parse(LeverOptions, [a for a in args if not a.endswith(".toml")], prog="python -m bench.bench_levers",
              description=__doc__.split("\n\n")[0], config_files=False)
    if o.threads:
        torch.set_num_threads(o.threads)
    print(cpu_description())
    print(f"{' '.join(presets)}, {torch.get_num_threads()} threads, {o.steps} steps per timing, "
          f"median of {o.repeats}")
    work = Path(tempfile.mkdtemp(prefix="quillgpt-bench-levers-"))
    trainers = {name: trainer([*presets, *extra], work, f"v{i}") for i, (name, extra) in enumerate(VARIANTS.items())}
    compile_s = {}
    for name, t in trainers.items():  # the first steps compile (or warm up): timed apart
        t0 = time.perf_counter()
        t.step()
        t.step()
        compile_s[name] = time.perf_counter() - t0
    steps = {name: (lambda t=t: [t.step() for _ in range(o.steps)]) for name, t in trainers.items()}
    seconds = interleaved_medians(steps, o.repeats, warmup=False)
    base = seconds[next(iter(VARIANTS))]
    print("| variant | ms/step | speed-up | first two steps (s) |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s / o.steps * 1000:.1f} | {base / s:.2f}x | {compile_s[name]:.1f} |")
    mats = muon_matrices(next(iter(trainers.values())).raw_model)
    dtype = getattr(torch, next(iter(trainers.values())).resolved.muon_dtype)
    by_shape: dict[torch.Size, list[torch.Tensor]] = {}
    for m in mats:
        by_shape.setdefault(m.shape, []).append(m)
    ns = interleaved_medians({
        "alone": lambda: [newton_schulz(m, dtype) for m in mats],
        "stacked": lambda: [newton_schulz(torch.stack(ms), dtype) for ms in by_shape.values()],
    }, o.repeats * 2)
    print(f"\nMuon Newton-Schulz ({dtype}) over {len(mats)} matrices in {len(by_shape)} shapes: each alone "
          f"{ns['alone'] * 1000:.1f} ms, stacked by shape {ns['stacked'] * 1000:.1f} ms "
          f"({ns['alone'] / ns['stacked']:.2f}x)")
    return 0


if __name__ == "__main__":
    run_main(main)
