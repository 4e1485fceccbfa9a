"""CPU speedrun: wall time to tinyshakespeare char val loss <= 1.886, fast preset vs nanoGPT's recipe.

    python -m bench.speedrun                       # classic replica vs configs/speedrun_cpu.toml, 3 seeds
    NANOGPT_DIR=../nanoGPT python -m bench.speedrun   # also nanoGPT itself, run beside us
    python -m bench.speedrun --levers               # the lever table: one run per row, 1 seed

Nothing is fixed for one CPU: every run uses dtype=auto and --threads=0, so the start-up probe
picks the compute dtype and Muon's, and each table shows them with the CPU model and its flags
(avx2, avx512f, avx512_bf16, amx): results differ by CPU class, so every table says which it was.

Protocol (the same for every contender):
- data: tinyshakespeare, characters, nanoGPT's split (first 90% train); read from --input.
- each run stops at its iteration budget or at the first in-loop eval with val loss <= target;
  time-to-target is the wall time (evals included) at that eval, from metrics.jsonl.
- afterwards the final weights are scored on the SAME 200 val batches (batch 12, block 64,
  seed 0) for everyone: that is the "final val" column, and a run only counts as reaching
  the target if this score is <= target too.
- medians over seeds; ratios printed side by side from this one run; nanoGPT's runs are
  interleaved with the seeds' runs (first ``--nanogpt_seeds`` rounds), so load drifts hit all.

The long race (``--target`` at or below 1.6, e.g. ``--target=1.47``, nanoGPT's A100 result):
- ours is configs/speedrun_cpu_long.toml, each seed run as the whole ``python train.py`` command in a
  subprocess with a fresh data folder, so its wall time includes start-up, data preparation and evals;
- nanoGPT's own GPU recipe (config/train_shakespeare_char.py, unchanged but for the CPU device, no
  compile, and cheaper evals so it can report progress) runs for the same wall budget (``--budget``)
  and is stopped there: it cannot reach 1.47 on a CPU, so the table shows what it reached;
- also printed: the val loss of our last in-run eval within nanoGPT's 3-minute A100 budget.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LONG_RACE_BELOW = 1.6  # targets this low are out of the short recipe's reach: race nanoGPT's GPU recipe instead

from runtime.errors import UsageError
from runtime.options import opt, parse, run_main
from bench.timing import cpu_description, matmul_peak


# Each kept lever adds its change to the rows above it, starting from the classic replica;
# a dropped lever is measured on top of everything kept so far and then left out.
LEVERS: list[tuple[str, dict, bool]] = [
    ("classic replica (nanoGPT CPU recipe)", {}, True),
    ("+ modern switches (rotary, RMSNorm, QK-norm, ReLU², untied zero-init head, soft-cap 15)",
     dict(model="modern", activation="relu2"), True),
    ("+ Muon for hidden matrices (lr 0.02), AdamW lr 3e-3 elsewhere, no weight decay",
     dict(optimizer="muon", muon_lr=0.02, learning_rate=3e-3, weight_decay=0.0, min_lr=3e-4), True),
    ("+ batch 32, 200 iterations (warmup 20, cosine to 3e-4); evals at start and end only",
     dict(batch_size=32, max_iters=200, lr_decay_iters=200, warmup_iters=20, eval_interval=200), True),
    ("+ AdamW lr 3e-2 (cosine to 3e-3) for embeddings and head; 150 iterations",
     dict(learning_rate=3e-2, min_lr=3e-3, max_iters=150, lr_decay_iters=150, eval_interval=150), True),
    ("warmup-stable-decay (cooldown 50%) instead of cosine (dropped)", dict(lr_schedule="wsd", cooldown_frac=0.5),
     False),
    ("Muon lr 0.04 (dropped)", dict(muon_lr=0.04), False),
    ("Muon with weight decay 0.1 (dropped)", dict(weight_decay=0.1), False),
]


@dataclass
class SpeedrunOptions:
    input: str = opt("../shared/data/tinyshakespeare.txt", "tinyshakespeare.txt (the char-rnn file; never "
                     "downloaded here); a relative path is tried from here, then from the repository root")
    seeds: list[int] = opt([1337, 1338, 1339], "seeds; repeat --seeds for several (medians are reported)")
    target: float = opt(1.886, "target val loss: 1.886 (nanoGPT's CPU recipe result) races the classic replica; "
                        f"<= {LONG_RACE_BELOW} (e.g. 1.47, nanoGPT's A100 result) runs the long race")
    budget: float = opt(600.0, "long race: the wall budget (s) of every contender, and ours' goal")
    a100_budget: float = opt(180.0, "long race: nanoGPT's A100 time (s); our val at that point is printed")
    final_eval_batches: int = opt(200, "val batches (of 12 x 64 tokens) for the final score, same for all")
    baseline: str = opt("configs/shakespeare_char_cpu.toml", "the classic replica preset")
    fast: str | None = opt(None, "the fast preset; default configs/speedrun_cpu.toml, or "
                           "configs/speedrun_cpu_long.toml for the long race")
    nanogpt_dir: str | None = opt(os.environ.get("NANOGPT_DIR"), "a nanoGPT checkout with data/shakespeare_char "
                                  "prepared, to run side by side (default: $NANOGPT_DIR)")
    nanogpt_seeds: int = opt(1, "how many of the seeds to run nanoGPT with (it has no --seed; runs repeat seed 1337)")
    levers: bool = opt(False, "print the lever table instead (one seed per row)")
    threads: int = opt(0, "train.py --threads for our runs; 0 = auto (the thread governor)")
    work_dir: str | None = opt(None, "where run folders go; default a temp dir")


@torch.no_grad()
def final_val_loss(out_dir: Path, data_dir: Path, batches: int, block: int = 64) -> float:
    """Score a run's latest weights on fixed val batches: batch 12, ``block`` tokens (at most the
    model's), seed 0. The short race uses block 64 for everyone; the long race the model's own."""
    from data.loader import BatchLoader
    from model.checkpoint import load_model

    model, _ = load_model(out_dir)
    model.eval()
    block = min(block, model.config.block_size)
    loader = BatchLoader(data_dir / "val.bin", block_size=block, batch_size=12, seed=0)
    total = 0.0
    for _ in range(batches):
        x, y = loader.next_batch()
        total += model(x, y)[1].item()
    return total / batches


def time_to_target(out_dir: Path, target: float) -> float | None:
    """Seconds (from the run's start) of the first eval with val loss <= target, from metrics.jsonl."""
    from training.dashboard import read_metrics

    for rec in read_metrics(out_dir):
        if rec.get("event") == "eval" and rec["val_loss"] <= target:
            return rec["time"]
    return None


def run_ours(preset: str, overrides: dict, seed: int, opts: SpeedrunOptions, work: Path, name: str) -> dict:
    """One in-process training run of ours; returns its timings and scores."""
    import train
    from model.checkpoint import read_config
    from training.dashboard import read_metrics

    out_dir = work / f"{name}-{seed}"
    argv = [str(REPO / preset), f"--out_dir={out_dir}", f"--seed={seed}", f"--input={opts.input}",
            f"--data_dir={work / 'data'}", "--dataset=tinyshakespeare", "--sample_tokens=0", "--attention_png=false",
            "--log_interval=50", f"--threads={opts.threads}", "--overwrite"]  # a rerun in one --work_dir replaces its runs
    argv += [f"--{k}={v}" for k, v in overrides.items()]
    cfg = train.load_config(argv)
    res = train.train(cfg, log_to_console=False)
    data_dir = work / "data" / "tinyshakespeare" / "char"
    final = final_val_loss(out_dir, data_dir, opts.final_eval_batches)
    ttt = time_to_target(out_dir, opts.target)
    logs = [r["tokens_per_sec"] for r in read_metrics(out_dir) if r.get("event") == "log"]
    tok_s = statistics.median(logs) if logs else res["tokens_per_sec"]  # training steps only, like nanoGPT's
    resolved = read_config(out_dir)["resolved"]
    return dict(time=res["time"], iters=res["iters"], tok_s=tok_s, final=final,
                ttt=ttt if ttt is not None and final <= opts.target else None,
                flops_per_tok=_flops_per_token(out_dir), dtype=resolved["dtype"],
                muon_dtype=resolved["muon_dtype"] if cfg.optimizer == "muon" else "-")


def _flops_per_token(out_dir: Path) -> float:
    from model.checkpoint import load_model

    model, _ = load_model(out_dir)
    return model.flops_per_token(model.config.block_size)


NANOGPT_CPU_RECIPE = ["--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                      "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000",
                      "--dropout=0.0"]


def stream_nanogpt(nanogpt_dir: Path, args: list[str], budget: float | None = None) -> tuple[list, list, float]:
    """Run nanoGPT's train.py with ``args`` in a subprocess, stopped after ``budget`` seconds if given.
    Returns its eval lines as (seconds, val loss), its iteration lines as (iteration, ms), and the wall time."""
    cmd = [sys.executable, "train.py", *args, f"--out_dir={tempfile.mkdtemp(prefix='nanogpt-out-')}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=nanogpt_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    evals, iters = [], []
    try:
        for line in proc.stdout:
            if budget is not None and time.perf_counter() - t0 > budget:
                break
            if m := re.match(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", line):
                evals.append((time.perf_counter() - t0, float(m.group(1))))
            if m := re.match(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", line):
                iters.append((int(m.group(1)), float(m.group(2))))
    finally:
        proc.kill()
        proc.wait()
    return evals, iters, time.perf_counter() - t0


def run_nanogpt(nanogpt_dir: Path, target: float, device: str = "cpu", recipe: list[str] | None = None) -> dict:
    """nanoGPT's train.py on its shakespeare_char config on `device`, to its end; time to `target` from its evals.

    `recipe` overrides its config (default: its README's CPU recipe; [] runs the config as it is, its GPU run)."""
    recipe = NANOGPT_CPU_RECIPE if recipe is None else recipe
    evals, iters, wall = stream_nanogpt(nanogpt_dir, ["config/train_shakespeare_char.py", f"--device={device}", *recipe])
    ttt = next((t for t, val in evals if val <= target), None)
    med_ms = statistics.median([ms for _, ms in iters[10:]]) if len(iters) > 10 else float("nan")
    return dict(time=wall, final=evals[-1][1] if evals else None, ttt=ttt,
                tok_s=12 * 64 / (med_ms / 1000) if recipe is NANOGPT_CPU_RECIPE else None)


def run_ours_command(preset: str, seed: int, opts: SpeedrunOptions, work: Path) -> dict:
    """The whole ``python train.py <preset>`` command, timed from outside: start-up, data preparation
    (a fresh data folder per seed) and evals included. It stops at the target or its last iteration."""
    from model.checkpoint import read_config
    from training.dashboard import read_metrics

    out_dir = work / f"long-{seed}"
    cmd = [sys.executable, "train.py", str(REPO / preset), f"--out_dir={out_dir}", f"--seed={seed}",
           f"--input={opts.input}", f"--data_dir={work / f'data-{seed}'}", f"--threads={opts.threads}",
           f"--target_loss={opts.target}", "--overwrite"]
    # a fresh compile cache per seed: a user's first run compiles cold, and so does each seed here
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{seed}")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"train.py failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    evals = [r for r in read_metrics(out_dir) if r.get("event") == "eval"]
    logs = [r["tokens_per_sec"] for r in read_metrics(out_dir) if r.get("event") == "log"]
    in_budget = [r for r in evals if r["time"] <= opts.a100_budget]
    data_dir = work / f"data-{seed}" / "tinyshakespeare" / "char"
    # scored with the context it trained for: a shorter one would cost it loss it does not have
    final = final_val_loss(out_dir, data_dir, opts.final_eval_batches, block=read_config(out_dir)["model"]["block_size"])
    reached = evals[-1]["val_loss"] <= opts.target and final <= opts.target
    resolved = read_config(out_dir)["resolved"]
    return dict(time=wall, ttt=wall if reached else None, final=final, iters=evals[-1]["iter"],
                at_a100=(in_budget[-1]["val_loss"], in_budget[-1]["time"]) if in_budget else None,
                tok_s=statistics.median(logs) if logs else None, dtype=resolved["dtype"],
                muon_dtype=resolved.get("muon_dtype", "-"))


def run_nanogpt_budget(nanogpt_dir: Path, budget: float, eval_interval: int = 25, eval_iters: int = 5) -> dict:
    """nanoGPT's own GPU recipe (config/train_shakespeare_char.py) on this CPU for ``budget`` seconds of
    wall time, then stopped. Only the device, compile and eval cost change: its 200-batch evals every
    250 iterations would never report within the budget on a CPU; 5 batches of 64 x 256 hold more
    tokens than our 20 of 24 x 128, and evals do not change training."""
    evals, iters, _ = stream_nanogpt(nanogpt_dir, [
        "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", f"--eval_interval={eval_interval}",
        f"--eval_iters={eval_iters}", "--log_interval=1"], budget)
    med_ms = statistics.median([ms for _, ms in iters[3:]]) if len(iters) > 3 else float("nan")
    return dict(time=budget, final=evals[-1][1] if evals else None, final_at=evals[-1][0] if evals else None,
                iters=iters[-1][0] if iters else 0, tok_s=64 * 256 / (med_ms / 1000))


def long_race(opts: SpeedrunOptions, work: Path, peaks: tuple[float, float]) -> None:
    """Ours to ``--target`` against nanoGPT's GPU recipe in the same wall budget, seeds interleaved."""
    preset = opts.fast or "configs/speedrun_cpu_long.toml"
    ours, theirs = [], []
    for i, seed in enumerate(opts.seeds):
        r = run_ours_command(preset, seed, opts, work)
        ours.append(r)
        a100 = f"{r['at_a100'][0]:.4f} at {r['at_a100'][1]:.0f} s" if r["at_a100"] else "-"
        print(f"  seed {seed} ours: {r['time']:.1f} s wall, {r['iters']} iters, final val {r['final']:.4f}, "
              f"target {'reached' if r['ttt'] else 'NOT reached'}; val within {opts.a100_budget:.0f} s: {a100}; "
              f"{r['dtype']} (Muon {r['muon_dtype']})", flush=True)
        if opts.nanogpt_dir and i < opts.nanogpt_seeds:
            n = run_nanogpt_budget(Path(opts.nanogpt_dir), opts.budget)
            theirs.append(n)
            print(f"  nanoGPT's GPU recipe: {n['iters']} iters in {opts.budget:.0f} s, last val "
                  f"{fmt(n['final'], '.4f')} (its 5-batch estimate, at {fmt(n['final_at'], '.0f')} s)", flush=True)
    table_header(peaks, opts.target)
    reached = [r for r in ours if r["ttt"] is not None]
    a100s = [r["at_a100"][0] for r in ours if r["at_a100"]]
    print(f"| contender | seeds reaching {opts.target} | time to target (median) | final val (median) | "
          f"val within {opts.a100_budget:.0f} s | iterations | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| ours ({preset}) | {len(reached)} of {len(ours)} | {fmt(med([r['ttt'] for r in reached]))} s | "
          f"{fmt(med([r['final'] for r in ours]), '.4f')} | {fmt(med(a100s), '.4f')} | "
          f"{fmt(med([r['iters'] for r in ours]), '.0f')} | {fmt(med([r['tok_s'] for r in ours]), '.0f')} |")
    if theirs:
        print(f"| nanoGPT config/train_shakespeare_char.py, {opts.budget:.0f} s | 0 of {len(theirs)} | - | "
              f"{fmt(med([n['final'] for n in theirs]), '.4f')} (its estimate) | - | "
              f"{fmt(med([n['iters'] for n in theirs]), '.0f')} | {fmt(med([n['tok_s'] for n in theirs]), '.0f')} |")
    goal = med([r["ttt"] for r in reached]) if len(reached) * 3 >= 2 * len(ours) else None
    print(f"\nours: {len(reached)} of {len(ours)} seeds reach val <= {opts.target}; median time to target "
          f"{fmt(goal)} s (goal <= {opts.budget:.0f} s for at least 2 of 3 seeds)")


def med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def input_path(given: str) -> Path:
    """--input as given, else relative to the repository root (the default names ../shared beside it)."""
    path = Path(given)
    if not path.is_file() and not path.is_absolute():
        path = REPO / given
    if not path.is_file():
        raise UsageError(f"--input {given} not found: pass the tinyshakespeare file (the char-rnn input.txt)")
    return path.resolve()


def table_header(peaks: tuple[float, float], target: float) -> None:
    """Printed above every table: which CPU class the figures belong to."""
    print(f"\n{cpu_description()}")
    print(f"matmul peak fp32 {peaks[0] / 1e9:.0f} GFLOP/s, bf16 {peaks[1] / 1e9:.0f} GFLOP/s; target val loss {target}")


def levers_table(opts: SpeedrunOptions, work: Path, peaks: tuple[float, float]) -> None:
    table_header(peaks, opts.target)
    print("| lever | time to target (s) | final val | iters | tokens/s | dtype / Muon's |")
    print("|---|---|---|---|---|---|")
    acc: dict = {"target_loss": opts.target}
    for i, (label, change, keep) in enumerate(LEVERS):
        r = run_ours(opts.baseline, {**acc, **change}, opts.seeds[0], opts, work, f"lever{i}")
        if keep:
            acc.update(change)
        ttt = fmt(r["ttt"]) if r["ttt"] is not None else f"not reached ({r['time']:.1f} s run)"
        print(f"| {label} | {ttt} | {r['final']:.4f} | {r['iters']} | {fmt(r['tok_s'], '.0f')} | "
              f"{r['dtype']} / {r['muon_dtype']} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    opts = parse(SpeedrunOptions, argv, prog="python -m bench.speedrun", description=__doc__.split("\n")[0])
    opts.input = str(input_path(opts.input))
    work = Path(opts.work_dir or tempfile.mkdtemp(prefix="quillgpt-speedrun-"))
    print(cpu_description(), flush=True)
    peaks = matmul_peak(torch.float32, runs=9), matmul_peak(torch.bfloat16, runs=9)
    if opts.levers:
        levers_table(opts, work, peaks)
        return 0
    if opts.target <= LONG_RACE_BELOW:
        long_race(opts, work, peaks)
        print(f"seeds: {opts.seeds}; run folders in {work}")
        return 0
    opts.fast = opts.fast or "configs/speedrun_cpu.toml"
    rows: dict[str, list[dict]] = {"classic replica": [], "fast preset": [], "nanoGPT": []}
    for i, seed in enumerate(opts.seeds):
        rows["classic replica"].append(run_ours(opts.baseline, {"target_loss": opts.target}, seed, opts, work,
                                                "classic"))
        rows["fast preset"].append(run_ours(opts.fast, {"target_loss": opts.target}, seed, opts, work, "fast"))
        for name in ("classic replica", "fast preset"):
            r = rows[name][-1]
            print(f"  seed {seed} {name}: {r['time']:.1f} s, {r['iters']} iters, final val {r['final']:.4f}, "
                  f"time to target {fmt(r['ttt'])} s, {r['dtype']} (Muon {r['muon_dtype']})", flush=True)
        if opts.nanogpt_dir and i < opts.nanogpt_seeds:
            r = run_nanogpt(Path(opts.nanogpt_dir), opts.target)
            rows["nanoGPT"].append(r)
            print(f"  nanoGPT: {r['time']:.1f} s, its final val (20 batches) {fmt(r['final'], '.4f')}", flush=True)
    summary_table(opts, rows, peaks)
    print(f"seeds: {opts.seeds}; run folders in {work}")
    return 0


def summary_table(opts: SpeedrunOptions, rows: dict[str, list[dict]], peaks: tuple[float, float]) -> None:
    table_header(peaks, opts.target)
    print(f"{'contender':<16} {'wall s':>7} {'to target s':>12} {'final val':>10} {'tokens/s':>9} {'GFLOP/s':>8}"
          f" {'% of peak':>11} {'dtype':>9}")
    summary = {}
    for name, rs in rows.items():
        if not rs:
            continue
        wall, ttt, final, tok_s = (med([r[k] for r in rs]) for k in ("time", "ttt", "final", "tok_s"))
        fpt = rs[0].get("flops_per_tok")
        gflops = tok_s * fpt / 1e9 if fpt and tok_s else None
        summary[name] = dict(wall=wall, ttt=ttt, final=final, tok_s=tok_s)
        bf16 = rs[0].get("dtype") == "bfloat16"  # achieved FLOP/s against the peak of the dtype it ran in
        pct = f"{100 * gflops * 1e9 / (peaks[1] if bf16 else peaks[0]):.1f} {'bf16' if bf16 else 'fp32'}" \
            if gflops else "-"
        print(f"{name:<16} {fmt(wall):>7} {fmt(ttt):>12} {fmt(final, '.4f'):>10} {fmt(tok_s, '.0f'):>9} "
              f"{fmt(gflops):>8} {pct:>11} {rs[0].get('dtype', 'float32'):>9}")
    base, fast = summary["classic replica"], summary["fast preset"]
    base_time = base["ttt"] if base["ttt"] is not None else base["wall"]
    print(f"\nfast preset time to target / classic replica {'time to target' if base['ttt'] else 'full run'}: "
          f"{fmt(fast['ttt'] / base_time if fast['ttt'] else None, '.3f')}  (goal <= 0.333)")
    if "nanoGPT" in summary:
        n = summary["nanoGPT"]
        print(f"fast preset time to target / nanoGPT wall time: {fmt(fast['ttt'] / n['wall'] if fast['ttt'] else None, '.3f')}"
              f"  (goal <= 0.333); / nanoGPT time to target: "
              f"{fmt(fast['ttt'] / n['ttt'] if fast['ttt'] and n['ttt'] else None, '.3f')}")
        print(f"classic replica tokens/s / nanoGPT tokens/s: {base['tok_s'] / n['tok_s']:.3f}  (goal >= 1.0)")
        print(f"classic replica final val {base['final']:.4f} vs nanoGPT's {fmt(n['final'], '.4f')} (20-batch "
              f"estimate); reference 1.8857 +- 0.03")


if __name__ == "__main__":
    run_main(main)
