"""A run's set-up, phase by phase: each phase takes what it needs and returns what it made.

``set_up`` calls them in their one possible order and hands everything to a ``Trainer``:
- nothing is written (run folder or data) until every check that can be made without the data
  has passed: out_dir, device, the train state to resume, the memory the run needs;
- the data is prepared before the process group exists, so a long build cannot time it out;
- the model is sharded before the optimizers, which must hold the sharded parameters;
- the run folder is opened last, once every choice it records has been made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from data.loader import BatchLoader
from data.prepare import load_meta
from data.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import STATE_FILE, from_pretrained, load_tensors, model_config, writing
from runtime.cpu import OtherLoad, ThreadGovernor
from runtime.device import autocast, dtype_name, resolve_device, use_cuda_device
from runtime.errors import UsageError
from training import dashboard
from training.checkpoints import Checkpoints
from training.config import ARCH_FIELDS, TrainConfig, config_warnings, dropouts, scratch_config
from training.distributed import (Dist, ddp_kwargs, dist_from_env, init_process_group, prepare_data, shard_model,
                                  sharded_grad_scaler, teardown)
from training.health import Health
from training.memory import check_training_fits
from training.muon import Muon
from training.optim import configure_optimizers, keep_run_settings
from training.precision import Precision, choose_precision
from training.resolved import Resolved, cpu_line
from training.run_folder import check_out_dir, check_same_tokenizer, start_writing
from training.state import Counters, load_state, restore_counters, restore_optimizers, share_train_state
from training.trackers import open_trackers, requested
from training.trainer import Trainer

LOWER_BOUND_VOCAB = {"char": 1, "gpt2": 50257}  # before the data is prepared (bpe: --vocab_size)


def set_up(cfg: TrainConfig, log_to_console: bool = True) -> Trainer:
    """Every phase before the first step, in order; the Trainer that holds what they made.

    A failure (bad input, or a signal during start-up) lets go of what is open: the run folder's
    logs, the process group, the thread count.
    """
    t_start = time.time()
    with contextlib.ExitStack() as undo:
        threads_before = torch.get_num_threads()
        undo.callback(torch.set_num_threads, threads_before)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)  # process-wide, so put back by close()
        dist = dist_from_env()
        undo.callback(teardown, dist, barrier=False)
        check_out_dir(cfg, master=dist.master)
        device = place(cfg, dist)
        device_type = device.split(":")[0]
        use_compile = cfg.compile == "true" or (cfg.compile == "auto" and device_type == "cuda")
        if use_compile and device_type == "cpu":
            check_cpu_compiler()
        fsdp = cfg.fsdp and dist.ddp
        out_dir = Path(cfg.out_dir)
        console = dist.master and log_to_console
        say = print if console else (lambda text: None)
        resuming = cfg.init_from == "resume"
        # rank 0 alone reads the run folder (share_train_state sends the others their part): the ranks on
        # other machines need not see its filesystem
        state = load_state(out_dir) if resuming and dist.master else None
        shards = dist.world_size if fsdp else 1  # FSDP: each process holds its share of the state
        check_fits_before_data(cfg, state, device, out_dir, shards)
        data_folder, meta, tokenizer = prepare(cfg, dist)
        if state is not None:
            check_same_tokenizer(out_dir, state, meta["tokenizer"], data_folder)
        init_process_group(dist, device)
        if resuming:
            state = share_train_state(dist, state)
            if not dist.master:  # rank 0 made this check before the data was prepared
                check_fits_before_data(cfg, state, device, out_dir, shards)
        model = build_model(cfg, state, meta["vocab_size"], device, out_dir, shards)
        precision = choose_precision(cfg, state, model, device, dist)
        governor, threads = thread_policy(cfg, device_type, dist, use_compile)
        if fsdp:  # before the optimizers, which must hold the sharded parameters
            shard_model(model, precision.dtype)
        optimizers = configure_optimizers(model, cfg, device_type, precision.muon_dtype)
        scaler = grad_scaler(device_type, precision.dtype, fsdp)
        train_loader, eval_loaders = build_loaders(cfg, dist, data_folder, meta["vocab_size"], device)
        # init drew from cfg.seed on every rank (identical weights); dropout draws from seed + rank,
        # so each rank's masks differ, as they would across the rows of one big batch
        torch.manual_seed(cfg.seed + dist.rank)
        counters = Counters()
        if state is not None:  # everything the next step depends on: optimizers, scaler, data position, RNG
            restore_optimizers(state, model, optimizers, scaler, fsdp, out_dir)
            train_loader.load_state_dict(state["loader"])
            counters = restore_counters(state, dist, cfg.seed, out_dir)
            keep_run_settings(optimizers, cfg, precision.muon_dtype)
        resumed = state is not None
        del state  # the checkpoint's tensors: not held through compilation and training
        raw_model, model = model, wrap_model(model, dist, use_compile, fsdp, device_type, say)
        resolved = resolve(cfg, dist, device, use_compile, fsdp, precision, threads, raw_model, meta["vocab_size"])
        for line in banner(cfg, resolved, data_folder, any(isinstance(o, Muon) for o in optimizers)):
            say(line)
        folder = open_run_folder(cfg, dist, tokenizer, meta, resolved, counters, t_start, say)
        undo.callback(folder.close)
        progress = dashboard.Progress(counters.iter_num, cfg.max_iters, enabled=console)
        undo.callback(progress.close)
        model.train()
        if console:  # once every check has passed: an error stays one line
            for warning in config_warnings(cfg):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        checkpoints = Checkpoints(out_dir, dist, fsdp, raw_model, optimizers, scaler, train_loader, tokenizer,
                                  folder.extra, resolved.record(), dtype_name(precision.dtype),
                                  dataclasses.asdict(cfg), folder.wandb_id)
        trainer = Trainer(
            cfg=cfg, dist=dist, resolved=resolved, model=model, raw_model=raw_model, optimizers=optimizers,
            scaler=scaler, autocast=autocast(device, precision.dtype), train_loader=train_loader,
            eval_loaders=eval_loaders, data_folder=data_folder, tokenizer=tokenizer, governor=governor,
            checkpoints=checkpoints, progress=progress, metrics=folder.metrics,
            health=Health(device, scaler.is_enabled()), threads_before=threads_before, t_start=t_start,
            iter_num=counters.iter_num, best_val=counters.best_val, tokens_seen=counters.tokens_seen,
            saved_iter=counters.iter_num if resumed else None, last_loss=torch.zeros((), device=device),
            grad_norm=torch.zeros((), device=device))
        undo.pop_all()  # from here, Trainer.close() lets go of them
        return trainer


def place(cfg: TrainConfig, dist: Dist) -> str:
    """The device this process trains on (under torchrun, a CUDA rank's own GPU, made current)."""
    device = resolve_device(cfg.device, dist.local_rank, distributed=dist.ddp)
    if device.split(":")[0] == "cuda":
        use_cuda_device(device)
    return device


def check_fits_before_data(cfg: TrainConfig, state: dict[str, Any] | None, device: str, out_dir: Path,
                           shards: int) -> None:
    """The memory check that can be made before the data exists: a resume's model, or a new one's with a
    lower bound on its vocabulary (a pretrained model is checked once it is loaded)."""
    if state is not None:
        check_fits(model_config({"model": state["model_config"]}, out_dir / STATE_FILE), cfg, device, shards)
    elif cfg.init_from == "scratch":  # the vocabulary is known once the data is; a lower bound for now
        check_fits(scratch_config(cfg, LOWER_BOUND_VOCAB.get(cfg.tokenizer, cfg.vocab_size)), cfg, device, shards)


def check_fits(mcfg: GPTConfig, cfg: TrainConfig, device: str, shards: int = 1) -> None:
    """Refuse a model and batch this device cannot hold, before allocating them (training/memory.py)."""
    compute_bytes = 4 if cfg.dtype == "float32" else 2  # auto may pick bf16: count the smaller
    check_training_fits(mcfg, cfg, device, compute_bytes, shards)


def prepare(cfg: TrainConfig, dist: Dist) -> tuple[Path, dict[str, Any], Any]:
    """The prepared corpus (built by one process, the others wait for it), its meta and its tokenizer."""
    folder = prepare_data(cfg.prepare_options(), dist, say=lambda text: print(text, file=sys.stderr, flush=True))
    meta = load_meta(folder)
    return folder, meta, load_tokenizer(meta["tokenizer"], folder)


def build_model(cfg: TrainConfig, state: dict[str, Any] | None, data_vocab: int, device: str,
                out_dir: Path, shards: int = 1) -> GPT:
    """From out_dir's train state, from scratch, or from pretrained weights; each checked to fit first.

    Under FSDP (``shards`` > 1) the model stays on the CPU: fully_shard moves each block to the
    device as it shards it, so no process ever holds the whole model there.
    """
    if state is not None:
        saved = state["train_config"]
        changed = [k for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            raise UsageError(f"cannot resume {out_dir} with a different architecture: "
                             + ", ".join(f"--{k}={getattr(cfg, k)} (checkpoint: {saved[k]})" for k in changed)
                             + "; drop those options or start a new --out_dir")
        where = out_dir / STATE_FILE
        model = GPT(model_config({"model": state["model_config"]}, where, **dropouts(cfg)))
        load_tensors(model, state["model"], where)
    elif cfg.init_from == "scratch":
        mcfg = scratch_config(cfg, data_vocab)
        check_fits(mcfg, cfg, device, shards)
        torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        model = GPT(mcfg)
    else:
        model = from_pretrained(cfg.init_from, **dropouts(cfg))  # refuses a model too big to hold
        check_fits(model.config, cfg, device, shards)
    mcfg = model.config
    if cfg.block_size > mcfg.block_size:
        raise UsageError(f"--block_size={cfg.block_size} exceeds the model's context ({mcfg.block_size})")
    if data_vocab > mcfg.vocab_size:
        raise UsageError(f"the data's vocabulary ({data_vocab}, tokenizer {cfg.tokenizer}) is larger "
                         f"than the model's ({mcfg.vocab_size}); use the tokenizer the model was trained with")
    if shards == 1:
        model.to(device)
    return model


def thread_policy(cfg: TrainConfig, device_type: str, dist: Dist,
                  use_compile: bool) -> tuple[ThreadGovernor | None, dict[str, Any]]:
    """--threads=0 on a single-process eager CPU run: a governor adapts the count to the load.

    Not under DDP (ranks must stay in step) nor torch.compile (its kernels fix the count).
    Returns the governor (None: the count stays) and the policy as the run folder records it.
    """
    why = ("--threads" if cfg.threads > 0 else "not a CPU run" if device_type != "cpu" else
           "distributed" if dist.ddp else "compiled" if use_compile else None)
    if why is None and torch.get_num_threads() > 1:
        return (ThreadGovernor(torch.get_num_threads(), load=OtherLoad().cores),
                {"policy": "governor", "max": torch.get_num_threads()})
    return None, {"policy": "fixed", "threads": torch.get_num_threads(), "why": why or "one thread available"}


def grad_scaler(device_type: str, dtype: torch.dtype, fsdp: bool) -> torch.amp.GradScaler:
    """fp16 gradients underflow on any device: a GradScaler, enabled whenever the compute dtype is fp16
    (under FSDP the sharded one, which agrees across ranks on whether to skip a step)."""
    scaler_class = sharded_grad_scaler() if fsdp else torch.amp.GradScaler
    return scaler_class(device_type, enabled=dtype == torch.float16)


def build_loaders(cfg: TrainConfig, dist: Dist, folder: Path, vocab: int,
                  device: str) -> tuple[BatchLoader, dict[str, Callable[[], BatchLoader]]]:
    """The training stream (resumable), and a maker of a fresh fixed-seed loader per split for each eval.

    Every batch is checked against the data's vocabulary ``vocab``: a token file is untrusted input.
    """
    train = BatchLoader(folder / "train.bin", cfg.block_size, cfg.batch_size, mode=cfg.data_mode, seed=cfg.seed,
                        rank=dist.rank, world_size=dist.world_size, device=device, vocab_size=vocab)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    evals = {split: (lambda s=split: BatchLoader(folder / f"{s}.bin", cfg.block_size, eval_bs, seed=cfg.seed + 1,
                                                 device=device, vocab_size=vocab))
             for split in ("train", "val")}
    evals["val"]()  # a val split too short for one window is refused now, not at the first eval
    return train, evals


def check_cpu_compiler() -> None:
    """torch.compile on a CPU writes C++ and builds it: without a compiler it would fail only at the
    first step, in a long traceback, after the data and model were made."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # inductor's InvalidCxxCompiler, or whatever a broken $CXX raises
        raise UsageError(f"--compile=true on the CPU needs a C++ compiler, and none was found ({type(e).__name__}); "
                         "install g++ (or set CXX), or pass --compile=false") from None


def wrap_model(model: torch.nn.Module, dist: Dist, use_compile: bool, fsdp: bool, device_type: str,
               say: Callable[[str], None]) -> torch.nn.Module:
    """What a step runs: ``model`` compiled and/or DDP-wrapped (the bare model is what gets saved)."""
    if dist.ddp and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, **ddp_kwargs(device_type, dist.local_rank))
    if use_compile:
        # compile the DDP module, not the reverse: dynamo then sees DDP's gradient buckets and splits
        # the graph at their boundaries, so each bucket's all-reduce overlaps the rest of backward
        say("compiling the model (torch.compile)...")
        model = torch.compile(model)
    return model


def resolve(cfg: TrainConfig, dist: Dist, device: str, use_compile: bool, fsdp: bool, precision: Precision,
            threads: dict[str, Any], model: GPT, data_vocab: int) -> Resolved:
    """What the run resolved, with the throughput facts of its global batch."""
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * dist.world_size
    return Resolved(device=device, device_type=device.split(":")[0], dtype=precision.dtype,
                    muon_dtype=precision.muon_dtype, compile=use_compile, world_size=dist.world_size, fsdp=fsdp,
                    threads=threads, tokens_per_iter=tokens_per_iter,
                    flops_per_iter=model.flops_per_token(cfg.block_size) * tokens_per_iter,
                    peak=dashboard.device_peak_flops(device, cfg.peak_flops), vocab_size=data_vocab,
                    model_vocab_size=model.config.vocab_size, n_params=model.num_params(),
                    cpu_facts=precision.cpu_facts, cpu_summary=precision.cpu_summary)


def banner(cfg: TrainConfig, resolved: Resolved, data_folder: Path, muon: bool) -> list[str]:
    """The start-up lines: model, device and precision; the global batch; on CPU the probe's findings."""
    r = resolved
    lines = [f"model: {cfg.init_from if cfg.init_from not in ('scratch', 'resume') else cfg.model}, "
             f"{r.n_params / 1e6:.2f}M parameters; device {r.device}, {dtype_name(r.dtype)}, compile {r.compile}"
             f"{', FSDP' if r.fsdp else ''}; data {data_folder} (vocab {r.vocab_size})"]
    if cfg.fsdp and not r.fsdp:
        lines.append("--fsdp: one process has nothing to shard with (start it with torchrun); training unsharded")
    lines.append(f"global batch: {cfg.batch_size} x {cfg.gradient_accumulation_steps} accum x {r.world_size} "
                 f"processes x {cfg.block_size} tokens = {r.tokens_per_iter:,} tokens/iter")
    if r.device_type == "cpu":
        lines.append(cpu_line(r, muon))
    return lines


class RunFolder(NamedTuple):
    """What opening the run folder made: its logs and config.json's run fields (rank 0; empty elsewhere)."""

    metrics: dashboard.MetricsLog | None  # metrics.jsonl, and the --report_to dashboards it feeds
    extra: dict[str, Any]  # config.json's run fields: options, tokenizer spec, data, resolved
    wandb_id: str | None  # the wandb/trackio run this one logs to (a resume continues the saved one)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def open_run_folder(cfg: TrainConfig, dist: Dist, tokenizer: Any, meta: dict[str, Any], resolved: Resolved,
                    counters: Counters, t_start: float, say: Callable[[str], None]) -> RunFolder:
    """A self-contained tokenizer, metrics.jsonl and its dashboards, and config.json's run fields (rank 0 writes).

    The first writes of the run: --overwrite's deletion of the old run, temp files of a killed
    run removed, metrics.jsonl cut back to the resumed iteration, the tokenizer (if it changed).
    """
    if not dist.master or cfg.eval_only:
        return RunFolder(None, {}, counters.wandb_id)
    out_dir, resumed = Path(cfg.out_dir), cfg.init_from == "resume"
    with writing(out_dir):
        deleted = start_writing(out_dir, overwrite=cfg.overwrite and not resumed)
        if deleted:
            say(f"--overwrite: deleted the previous run's {', '.join(deleted)} in {out_dir}")
        spec = tokenizer.save(out_dir)
    extra = {"train": dataclasses.asdict(cfg), "tokenizer": spec,
             "data": {k: meta.get(k) for k in ("dataset", "source", "split", "vocab_size", "train_tokens",
                                               "val_tokens")},
             "resolved": resolved.record()}
    # the values the run uses, not only the options given
    trackers = open_trackers(requested(cfg.report_to, cfg.wandb_log, cfg.wandb_mode), out_dir,
                             {**dataclasses.asdict(cfg), "resolved": resolved.record()}, counters.wandb_id,
                             counters.iter_num if resumed else None, cfg.wandb_project, cfg.wandb_run_name,
                             cfg.wandb_mode)
    try:
        with writing(out_dir):
            metrics = dashboard.MetricsLog(out_dir, t_start, keep_until=counters.iter_num if resumed else None,
                                           trackers=trackers)
    except BaseException:
        trackers.finish()
        raise
    return RunFolder(metrics, extra, trackers.run_id)
