"""Are the start-up probe's dtype choices the fast ones on this CPU? Every combination, timed.

    python -m bench.bench_precision                      # train.py's default model and batch
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m bench.bench_precision   # as on an AVX2-only CPU
    python -m bench.bench_precision configs/speedrun_cpu.toml --steps=5

Builds one trainer per combination of compute dtype (fp32, bf16 autocast) and the dtype Muon
orthogonalises in (fp32, bf16), on a synthetic corpus, and times the very ``Trainer.step()``
that train.py runs, rounds interleaved, median of ``--repeats``. The probe's own choice (what
``dtype=auto`` picks here) is marked; the last line says whether it was the fastest.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.timing import cpu_description, interleaved_medians
from runtime.options import opt, parse, run_main

COMBOS = [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")]


@dataclass
class PrecisionOptions:
    steps: int = opt(5, "train steps per timing")
    repeats: int = opt(3, "timings per combination (median reported)")
    threads: int = opt(0, "torch threads, fixed for every combination; 0 = torch's default")


def synthetic_corpus(folder: Path) -> Path:
    """200,000 characters over 65 symbols: tinyshakespeare's vocabulary size, no download."""
    g = torch.Generator().manual_seed(0)
    text = folder / "corpus.txt"
    text.write_text("".join(chr(40 + int(i)) for i in torch.randint(0, 65, (200_000,), generator=g)),
                    encoding="utf-8")
    return text


def trainer(argv: list[str], work: Path, name: str, dtype: str, muon_dtype: str | None):
    """A Trainer for train.py's options ``argv`` at ``dtype``; ``muon_dtype`` None keeps the probe's."""
    import train
    from training.muon import Muon
    from training.setup import set_up

    cfg = train.load_config([*argv, "--dataset=bench", f"--input={synthetic_corpus(work)}", "--optimizer=muon",
                             f"--data_dir={work / 'data'}", f"--out_dir={work / name}", f"--dtype={dtype}",
                             f"--threads={torch.get_num_threads()}", "--device=cpu"])
    t = set_up(cfg, log_to_console=False)
    if muon_dtype is not None:
        for o in t.optimizers:
            for group in o.param_groups if isinstance(o, Muon) else []:
                group["ortho_dtype"] = muon_dtype
    return t


def main(argv: list[str] | None = None) -> int:
    import sys

    from training.muon import Muon
    from training.resolved import cpu_line

    args = list(sys.argv[1:] if argv is None else argv)
    presets = [a for a in args if a.endswith(".toml")]
    o = parse(PrecisionOptions, [a for a in args if a not in presets], prog="python -m bench.bench_precision",
              description=__doc__.split("\n\n")[0], config_files=False)
    if o.threads:
        torch.set_num_threads(o.threads)
    work = Path(tempfile.mkdtemp(prefix="quillgpt-bench-precision-"))
    auto = trainer(presets, work, "auto", "auto", None)
    choice = (str(auto.resolved.dtype).removeprefix("torch."), auto.resolved.muon_dtype)
    trainers = {combo: trainer(presets, work, f"{combo[0]}-{combo[1]}", *combo) for combo in COMBOS}
    steps = {combo: (lambda t=t: [t.step() for _ in range(o.steps)]) for combo, t in trainers.items()}
    t0 = time.perf_counter()
    seconds = interleaved_medians(steps, o.repeats)
    print(cpu_description())
    print(cpu_line(auto.resolved, any(isinstance(o, Muon) for o in auto.optimizers)))
    print(f"{' '.join(presets) or 'train.py defaults'}, Muon; {o.steps} steps x {o.repeats} rounds, median "
          f"({time.perf_counter() - t0:.0f} s)")
    print("| compute dtype | Muon's dtype | ms/step | x the probe's choice |")
    print("|---|---|---|---|")
    mine = seconds[choice]
    for combo, s in seconds.items():
        mark = " (the probe's choice)" if combo == choice else ""
        print(f"| {combo[0]}{mark} | {combo[1]} | {1000 * s / o.steps:.1f} | {s / mine:.2f} |")
    fastest = min(seconds, key=seconds.get)
    print(f"probe's choice {choice}: {'the fastest' if fastest == choice else f'not the fastest ({fastest} was)'}")
    return 0


if __name__ == "__main__":
    run_main(main)
