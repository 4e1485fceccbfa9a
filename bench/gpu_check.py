"""The one GPU command: run every CUDA branch of quillgpt for real on the GPU at hand, print a verdict.

    python -m bench.gpu_check                  # one CUDA GPU (all of them for the distributed rows)
    python -m bench.gpu_check --speedrun       # also time to val <= 1.47 against nanoGPT ($NANOGPT_DIR)
    python -m bench.gpu_check --device=cpu     # the rows with a CPU equivalent, at tiny sizes (CI runs this)

Rows (each a real run; a row that cannot run on this device says "needs CUDA"):
  train adamw     configs/shakespeare_char.toml for a few hundred steps: bf16 autocast, torch.compile,
                  fused AdamW; the loss must go down; tokens/s and MFU on this GPU's peak
                  (training/dashboard.py's table; a GPU missing from it is named, not guessed)
  train muon      the same with --optimizer=muon
  fp16 scaler     --dtype=float16 with a GradScaler whose huge initial scale overflows the first
                  step: that step is skipped, the scale is lowered, training goes on with finite losses
  sdpa kernels    forward + backward under torch.nn.attention.sdpa_kernel restricted to the flash
                  kernel, then to the memory-efficient one: runs without error
  kv cache        logits decoded token by token through the KV cache = one full forward (bf16 tolerance)
  cuda graph      compiled decoding (sample.py --compile's path, a CUDA graph) gives eager's greedy
                  tokens; tokens/s at batch 1 and 8
  hf generate     transformers' GPT2LMHeadModel.generate (static cache, compiled) on the same weights
                  (a classic model): the same greedy tokens, and its tokens/s beside ours (CPU: eager)
  ddp resume      torchrun --nproc_per_node=<all GPUs> (NCCL; gloo on CPU): a run stopped at a
                  checkpoint and resumed logs the uninterrupted run's losses exactly
  fsdp resume     the same with --fsdp (one GPU allowed)
  memory bound    training/memory.py's training_bytes against torch.cuda.max_memory_allocated():
                  a lower bound within 2x
  speedrun        (--speedrun) time to target: seconds from each run's start to its first eval with
                  val <= 1.47 on tinyshakespeare, ours and nanoGPT's train.py ($NANOGPT_DIR, its
                  shakespeare_char config on cuda) on this GPU, side by side; the ratio. A run that
                  never reaches the target fails the row

The last line is ``gpu_check: N passed, M failed``; the exit code is 1 when a row failed, 2 without CUDA
(unless --device=cpu).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.timing import cpu_description
from runtime.options import opt, parse, run_main

REPO = Path(__file__).resolve().parents[1]
NEEDS_CUDA = "needs CUDA"


def default_input() -> str | None:
    """The shared tinyshakespeare file, if there is one ($QUILLGPT_SHARED, else ../shared beside the repository)."""
    shared = os.environ.get("QUILLGPT_SHARED")
    for base in ([Path(shared)] if shared else []) + [REPO.parent / "shared"]:
        path = base / "data" / "tinyshakespeare.txt"
        if path.is_file():
            return str(path)
    return None


@dataclass
class CheckOptions:
    device: str = opt("cuda", "cuda (the check proper) or cpu (the rows with a CPU equivalent, tiny sizes)",
                      choices=("cuda", "cpu"))
    input: str | None = opt(default_input(), "tinyshakespeare.txt; none = the dataset download")
    iters: int = opt(300, "training steps of the train rows on CUDA")
    speedrun: bool = opt(False, "also time ours and nanoGPT's train.py to val <= 1.47 ($NANOGPT_DIR)")
    nanogpt_dir: str | None = opt(os.environ.get("NANOGPT_DIR"), "a nanoGPT checkout with data/shakespeare_char "
                                  "prepared (default: $NANOGPT_DIR)")
    work_dir: str | None = opt(None, "where run folders go; default a temp dir")


@dataclass
class Row:
    check: str
    result: str  # "pass", "FAIL" or NEEDS_CUDA
    figure: str
    reference: str


class Skip(Exception):
    """A row that has no equivalent on this device."""


class Context:
    """What every row needs: the options, the device, a work folder, the data argv."""

    def __init__(self, opts: CheckOptions, work: Path) -> None:
        self.opts, self.work = opts, work
        self.cuda = opts.device == "cuda"

    def data_argv(self) -> list[str]:
        argv = [f"--data_dir={self.work / 'data'}", "--dataset=tinyshakespeare"]
        return argv + ([f"--input={self.opts.input}"] if self.opts.input else [])

    def train_argv(self, name: str, **overrides: object) -> list[str]:
        """train.py's argv: nanoGPT's GPU recipe on CUDA, a tiny model on CPU; run folder work/name."""
        if self.cuda:
            base = [str(REPO / "configs/shakespeare_char.toml"), "--device=cuda", "--compile=true",
                    f"--max_iters={self.opts.iters}", f"--eval_interval={self.opts.iters}", "--eval_iters=20",
                    "--log_interval=25"]
        else:
            base = [str(REPO / "configs/shakespeare_char_cpu.toml"), "--device=cpu", "--compile=false",
                    "--dtype=float32", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
                    "--batch_size=8", "--max_iters=30", "--eval_interval=30", "--eval_iters=2",
                    "--log_interval=5", "--warmup_iters=5", "--threads=1"]
        base += [f"--out_dir={self.work / name}", "--sample_tokens=0", "--attention_png=false", "--overwrite",
                 "--seed=1337"] + self.data_argv()
        return base + [f"--{k}={v}" for k, v in overrides.items()]


def logged_losses(out_dir: Path) -> dict[int, float]:
    """iteration -> logged train loss, from the run folder's metrics.jsonl."""
    from training.dashboard import read_metrics

    return {r["iter"]: r["loss"] for r in read_metrics(out_dir) if r.get("event") == "log"}


def peak_note(device: str) -> tuple[float | None, str]:
    """The device's peak FLOP/s and how it is named in the table: a GPU missing from the table is named."""
    from training.dashboard import device_peak_flops

    if not device.startswith("cuda"):
        return None, "no peak for a CPU (MFU needs --peak_flops)"
    peak = device_peak_flops(device, None)
    name = torch.cuda.get_device_name(0)
    return peak, (f"{name} peak {peak / 1e12:.0f} TFLOP/s" if peak else f"{name} is not in the peak table: no MFU")


# ---------------------------------------------------------------------------------------------- rows


def check_train(ctx: Context, optimizer: str) -> Row:
    import train

    name = f"train-{optimizer}"
    cfg = train.load_config(ctx.train_argv(name, optimizer=optimizer))
    res = train.train(cfg, log_to_console=False)
    losses = logged_losses(ctx.work / name)
    its = sorted(losses)
    first, last = losses[its[0]], losses[its[-1]]
    from training.dashboard import read_metrics

    mfus = [r["mfu"] for r in read_metrics(ctx.work / name) if r.get("event") == "log" and r.get("mfu")]
    _, note = peak_note(cfg.device if ctx.cuda else "cpu")
    mfu = f", MFU {100 * mfus[-1]:.1f}%" if mfus else ""
    ok = last < first and math.isfinite(last)
    what = "bf16 + compile + fused AdamW" if optimizer == "adamw" else "bf16 + compile + Muon"
    if not ctx.cuda:
        what = "fp32 eager, tiny model"
    return Row(f"train {optimizer}", "pass" if ok else "FAIL",
               f"loss {first:.3f} -> {last:.3f} in {res['iters']} steps; {res['tokens_per_sec'] or 0:,.0f} tok/s{mfu}",
               f"{what}; {note}")


def check_fp16_scaler(ctx: Context) -> Row:
    import train
    from training.setup import set_up

    cfg = train.load_config(ctx.train_argv("fp16", dtype="float16", optimizer="adamw", max_iters=12,
                                           eval_interval=1000))
    init = 2.0**40  # far above what fp16 gradients hold: the first step's gradients overflow
    with set_up(cfg, log_to_console=False) as run:
        if not run.scaler.is_enabled():
            return Row("fp16 scaler", "FAIL", "no GradScaler under --dtype=float16", "")
        # one skip takes the scale from 2^40 to 2^12, so the steps after it train
        run.scaler = torch.amp.GradScaler(run.resolved.device_type, init_scale=init, backoff_factor=2.0**-28)
        before = {k: v.detach().clone() for k, v in run.raw_model.state_dict().items()}
        run.step()
        after_first = run.scaler.get_scale()
        unchanged = all(torch.equal(before[k], v) for k, v in run.raw_model.state_dict().items())
        losses = []
        for _ in range(cfg.max_iters - 1):
            run.step()
            losses.append(run.last_loss.item())
        scale = run.scaler.get_scale()
    ok = unchanged and after_first < init and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    return Row("fp16 scaler", "pass" if ok else "FAIL",
               f"step 1 skipped: {unchanged}; scale 2^40 -> 2^{math.log2(after_first):.0f} -> 2^{math.log2(scale):.0f};"
               f" loss {losses[0]:.3f} -> {losses[-1]:.3f}", "GradScaler, forced overflow at step 1")


def _small_model(ctx: Context, kind: str = "modern", **over: object) -> torch.nn.Module:
    """A small GPT with seeded random weights on the check's device."""
    from model.config import GPTConfig
    from model.gpt import GPT

    kw = dict(n_layer=2, n_head=4, n_embd=64, block_size=128, vocab_size=65)
    kw.update(over)
    torch.manual_seed(0)
    device = "cuda" if ctx.cuda else "cpu"
    return GPT(GPTConfig.preset(kind, **kw)).to(device)


def check_sdpa(ctx: Context) -> Row:
    if not ctx.cuda:
        raise Skip
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _small_model(ctx)
    x = torch.randint(0, 65, (4, 128), device="cuda")
    done = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        with sdpa_kernel(backend), torch.autocast("cuda", torch.bfloat16):
            _, loss = model(x, x)
            loss.backward()
        model.zero_grad(set_to_none=True)
        done.append(backend.name.lower())
    return Row("sdpa kernels", "pass", " and ".join(done) + ": forward + backward ran", "sdpa_kernel restriction")


def check_kv_cache(ctx: Context) -> Row:
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    model = _small_model(ctx).to(dtype).eval()
    device = next(model.parameters()).device
    idx = torch.randint(0, 65, (2, 48), device=device)
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(2, 48)
        steps = [model(idx[:, :16], kv_cache=cache)[0]]
        for t in range(16, 48):
            steps.append(model(idx[:, t:t + 1], kv_cache=cache)[0])
        inc = torch.cat(steps, dim=1)
    diff = (inc.float() - full.float()).abs().max().item()
    tol = 5e-2 * full.float().abs().max().item() if ctx.cuda else 1e-4
    return Row("kv cache", "pass" if diff <= tol else "FAIL", f"max abs diff {diff:.2e} (tol {tol:.1e})",
               f"full recompute, {str(dtype).split('.')[-1]}")


def _tokens_per_s(fn: Callable[[], torch.Tensor], new: int, batch: int) -> float:
    fn()  # warm-up: compilation and graph capture
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * new / (time.perf_counter() - t0)


def check_cuda_graph(ctx: Context) -> Row:
    if not ctx.cuda:
        raise Skip
    from model.generate import generate

    model = _small_model(ctx, n_layer=6, n_head=6, n_embd=384, block_size=256)
    model.eval()
    new, figs, same = 128, [], True
    for batch in (1, 8):
        idx = torch.randint(0, 65, (batch, 8), device="cuda")
        with torch.no_grad():
            eager = generate(model, idx, new, temperature=0.0)
            graph = generate(model, idx, new, temperature=0.0, compile=True)
            same &= torch.equal(eager, graph)
            rate = _tokens_per_s(lambda: generate(model, idx, new, temperature=0.0, compile=True), new, batch)
        figs.append(f"b{batch} {rate:,.0f} tok/s")
    return Row("cuda graph", "pass" if same else "FAIL", f"greedy = eager: {same}; " + ", ".join(figs),
               "eager decoding")


def to_gpt2(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' GPT2LMHeadModel holding a classic model's weights, through export.py's own mapping."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.hf_export import gpt2_export

    config, tensors = gpt2_export(model, model.config.vocab_size, None)
    config = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "dtype")}
    hf = GPT2LMHeadModel(GPT2Config(**config))
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto GPT2LMHeadModel: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf.to(next(model.parameters()).device).eval()


def check_hf_generate(ctx: Context) -> Row:
    from model.generate import generate

    model = _small_model(ctx, "classic", n_layer=6 if ctx.cuda else 2, n_head=6 if ctx.cuda else 2,
                         n_embd=384 if ctx.cuda else 32, block_size=256 if ctx.cuda else 64).eval()
    hf = to_gpt2(model)
    new, figs, same = (128 if ctx.cuda else 16), [], True
    for batch in ((1, 8) if ctx.cuda else (2,)):
        idx = torch.randint(0, 65, (batch, 8), device=idx_device(model))
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if ctx.cuda:  # transformers' fast path: a static cache, with which generate compiles the forward
            kw.update(cache_implementation="static")
        with torch.no_grad():
            ours = generate(model, idx, new, temperature=0.0)
            theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), **kw)
            same &= torch.equal(ours, theirs)
            if ctx.cuda:
                rate = _tokens_per_s(lambda: hf.generate(idx, attention_mask=torch.ones_like(idx), **kw), new, batch)
                figs.append(f"b{batch} {rate:,.0f} tok/s")
    ref = "GPT2LMHeadModel.generate, static cache, compiled" if ctx.cuda else "GPT2LMHeadModel.generate, eager"
    return Row("hf generate", "pass" if same else "FAIL", "; ".join([f"greedy tokens equal ours: {same}"] + figs),
               ref)


def idx_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _torchrun(ctx: Context, argv: list[str]) -> None:
    nproc = torch.cuda.device_count() if ctx.cuda else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train.py")] + argv
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")


def check_resume(ctx: Context, fsdp: bool) -> Row:
    label = "fsdp resume" if fsdp else "ddp resume"
    extra = {"fsdp": "true", "optimizer": "adamw"} if fsdp else {}
    if ctx.cuda:
        extra["compile"] = "false"  # the resume is the point; compilation is the train rows'
        total, half = 100, 50
    else:
        total, half = 20, 10
    name = label.replace(" ", "-")
    whole = ctx.train_argv(f"{name}-whole", max_iters=total, eval_interval=half, log_interval=2, **extra)
    _torchrun(ctx, whole)
    part = ctx.train_argv(f"{name}-part", max_iters=half, eval_interval=half, log_interval=2, **extra)
    _torchrun(ctx, part)
    resumed = [a for a in ctx.train_argv(f"{name}-part", max_iters=total, eval_interval=half, log_interval=2,
                                         **extra) if a != "--overwrite"] + ["--init_from=resume"]
    _torchrun(ctx, resumed)
    a, b = logged_losses(ctx.work / f"{name}-whole"), logged_losses(ctx.work / f"{name}-part")
    after = [i for i in a if i > half]
    same = bool(after) and all(i in b and a[i] == b[i] for i in after)
    nproc = torch.cuda.device_count() if ctx.cuda else 1
    backend = "NCCL" if ctx.cuda else "gloo"
    return Row(label, "pass" if same else "FAIL",
               f"{len(after)} resumed losses identical: {same} ({nproc} x {backend})",
               f"uninterrupted run of {total} steps")


def check_memory(ctx: Context) -> Row:
    if not ctx.cuda:
        raise Skip
    import train
    from training.memory import training_bytes

    cfg = train.load_config(ctx.train_argv("memory", max_iters=5, eval_interval=1000, compile="false"))
    torch.cuda.reset_peak_memory_stats()
    from training.setup import set_up

    with set_up(cfg, log_to_console=False) as run:
        for _ in range(cfg.max_iters):
            run.step()
        torch.cuda.synchronize()
        used = torch.cuda.max_memory_allocated()
        compute_bytes = run.resolved.dtype.itemsize
        est = training_bytes(run.raw_model.config, cfg, compute_bytes)
    ok = est <= used <= 2 * est
    return Row("memory bound", "pass" if ok else "FAIL", f"estimate {est / 2**20:,.0f} MiB, used {used / 2**20:,.0f} MiB",
               "lower bound within 2x of max_memory_allocated")


def check_speedrun(ctx: Context) -> Row:
    if not ctx.cuda:
        raise Skip
    if not ctx.opts.nanogpt_dir:
        raise RuntimeError("--speedrun needs NANOGPT_DIR (a nanoGPT checkout with data/shakespeare_char prepared)")
    import train
    from bench.speedrun import fmt, run_nanogpt, time_to_target

    argv = ctx.train_argv("speedrun", max_iters=5000, eval_interval=250, target_loss=1.47, optimizer="adamw")
    train.train(train.load_config(argv), log_to_console=False)
    ours = time_to_target(ctx.work / "speedrun", 1.47)
    theirs_run = run_nanogpt(Path(ctx.opts.nanogpt_dir), 1.47, device="cuda", recipe=[])
    theirs = theirs_run["ttt"]
    ok = ours is not None and theirs is not None
    return Row("speedrun", "pass" if ok else "FAIL",
               f"to val <= 1.47: ours {fmt(ours)} s, nanoGPT {fmt(theirs)} s"
               + (f", ratio {ours / theirs:.2f}" if ok else ""),
               "nanoGPT train.py, same GPU")


def rows_to_run(opts: CheckOptions) -> list[tuple[str, Callable[[Context], Row]]]:
    rows: list[tuple[str, Callable[[Context], Row]]] = [
        ("train adamw", lambda c: check_train(c, "adamw")),
        ("train muon", lambda c: check_train(c, "muon")),
        ("fp16 scaler", check_fp16_scaler),
        ("sdpa kernels", check_sdpa),
        ("kv cache", check_kv_cache),
        ("cuda graph", check_cuda_graph),
        ("hf generate", check_hf_generate),
        ("ddp resume", lambda c: check_resume(c, fsdp=False)),
        ("fsdp resume", lambda c: check_resume(c, fsdp=True)),
        ("memory bound", check_memory),
    ]
    if opts.speedrun:
        rows.append(("speedrun", check_speedrun))
    return rows


def run_row(ctx: Context, label: str, fn: Callable[[Context], Row]) -> Row:
    t0 = time.perf_counter()
    try:
        row = fn(ctx)
    except Skip:
        return Row(label, NEEDS_CUDA, "-", "-")
    except Exception as e:  # a row's failure is its verdict; the next rows still run
        row = Row(label, "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160], "-")
    row.figure += f" [{time.perf_counter() - t0:.1f} s]"
    return row


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows + [Row("check", "result", "figure", "reference")])
              for f in ("check", "result", "figure", "reference")]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(["check", "result", "figure", "reference"]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line([r.check, r.result, r.figure, r.reference]), flush=True)


def main(argv: list[str] | None = None) -> int:
    opts = parse(CheckOptions, argv, prog="python -m bench.gpu_check", description=__doc__)
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to this torch build; run on a GPU, or --device=cpu for the CPU rows",
              file=sys.stderr)
        return 2
    work = Path(opts.work_dir or tempfile.mkdtemp(prefix="quillgpt-gpu-check-"))
    ctx = Context(opts, work)
    if ctx.cuda:
        print(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}; torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}")
    else:
        print(f"device: cpu (rows without a CPU equivalent say '{NEEDS_CUDA}'); torch {torch.__version__}")
    print(f"CPU: {cpu_description()}", flush=True)
    rows = [run_row(ctx, label, fn) for label, fn in rows_to_run(opts)]
    print_table(rows)
    passed = sum(r.result == "pass" for r in rows)
    failed = sum(r.result == "FAIL" for r in rows)
    print(f"gpu_check: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
