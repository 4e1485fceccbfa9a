"""One training run in named phases: set up, step, evaluate and checkpoint, log, stop.

``train.py`` reads as the loop that calls these in order; ``bench/bench_train.py`` times the
very ``step()`` that training runs. Setup happens in ``Trainer.__init__`` (device, data, model,
precision, optimizers, loaders, resume, wrappers, run folder); ``close()`` (or leaving the
``with`` block) ends the dashboards and the process group.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from data.loader import BatchLoader
from data.options import DataOptions
from data.prepare import PrepareOptions, ensure_prepared, load_meta
from data.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import (BEST_DIR, STATE_FILE, from_pretrained, load_tensors, load_train_state, model_config,
                              save_model, save_train_state)
from runtime.cpu import CpuProbe, OtherLoad, ThreadGovernor, probe_cpu
from runtime.device import autocast, dtype_name, resolve_device, resolve_dtype, resolve_muon_dtype
from runtime.errors import CheckpointError, ConfigError, UsageError
from training import dashboard
from training.config import ARCH_FIELDS, ARCH_SWITCHES, TrainConfig, config_warnings
from training.control import StopRequest, TrainingDiverged
from training.distributed import any_rank, setup_distributed, teardown
from training.evaluate import estimate_loss, sample_text
from training.muon import Muon
from training.optim import configure_optimizers, lr_multiplier, set_lr
from training.precision import cpu_bf16_pays
from training.state import set_rng_state, train_state


def scratch_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    """The GPTConfig for a from-scratch model: the preset, then every switch the user set."""
    switches = {k: getattr(cfg, k) for k in ARCH_SWITCHES if getattr(cfg, k) is not None}
    if switches.get("logit_softcap") == 0:
        switches["logit_softcap"] = None
    try:
        return GPTConfig.preset(cfg.model, block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                                n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, **switches)
    except ConfigError as e:
        raise UsageError(f"--{e}") from None


def resume_command(cfg: TrainConfig) -> str:
    return f"python train.py --init_from=resume --out_dir={cfg.out_dir}"


class Trainer:
    """Everything one run holds; ``train.py``'s loop drives it phase by phase."""

    def __init__(self, cfg: TrainConfig, log_to_console: bool = True) -> None:
        self.cfg = cfg
        self.t_start = time.time()
        self.threads_before = torch.get_num_threads()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)  # process-wide, so put back by close()
        try:
            self._setup(log_to_console)
        except BaseException:
            torch.set_num_threads(self.threads_before)
            raise

    # ------------------------------------------------------------------ setup

    def _setup(self, log_to_console: bool) -> None:
        """Device, data, model, precision, optimizers, loaders, resume, wrappers, run folder: in this order."""
        cfg = self.cfg
        self.dist = setup_distributed(cfg.device if cfg.device != "auto" else
                                      ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.device_type = self.device.split(":")[0]
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
            torch.backends.cudnn.allow_tf32 = True
        self.use_compile = cfg.compile == "true" or (cfg.compile == "auto" and self.device_type == "cuda")
        self.out_dir = Path(cfg.out_dir)
        self.console = self.dist.master and log_to_console
        if self.console:
            for warning in config_warnings(cfg):
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        self.data_folder, self.meta, self.tokenizer = self._prepare_data()
        state = self._build_model()
        self._choose_precision(state)
        self.governor = self._thread_governor()
        self.optimizers = configure_optimizers(self.model, cfg, self.device_type, self.muon_dtype)
        self.scaler = torch.amp.GradScaler(self.device_type,
                                           enabled=(self.ptdtype == torch.float16 and self.device_type == "cuda"))
        self._build_loaders()
        self.iter_num, self.best_val, self.wandb_id, self.tokens_seen = 0, math.inf, None, 0
        if state is not None:
            self._restore(state)
        del state  # drop the checkpoint's tensors (nanoGPT kept them alive for the whole run)
        self._wrap_model()
        self._open_run_folder()
        self.progress = dashboard.Progress(self.iter_num, cfg.max_iters, enabled=self.console)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # NaN/inf since last check, no sync
        self.last_loss = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.first_iter = self.iter_num
        self.t_log, self.it_log, self.stopped = time.time(), self.iter_num, "done"
        self.results: dict[str, Any] = {"out_dir": str(self.out_dir), "val_loss": None, "train_loss": None,
                                        "tokens_per_sec": None}
        self.model.train()

    def say(self, text: str) -> None:
        if self.console:
            print(text)

    def _prepare_data(self) -> tuple[Path, dict[str, Any], Any]:
        """Rank 0 prepares the corpus, then each other node's first process (a no-op if data_dir is
        shared), then everyone else reads it: never two builders of one folder at once."""
        cfg, dist = self.cfg, self.dist
        prep = PrepareOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DataOptions)})
        turns = [dist.master, dist.local_rank == 0 and not dist.master, dist.local_rank != 0] if dist.ddp else [True]
        folder = None
        for my_turn in turns:
            if my_turn:
                folder = ensure_prepared(prep)
            if dist.ddp:
                torch.distributed.barrier()
        meta = load_meta(folder)
        return folder, meta, load_tokenizer(meta["tokenizer"], folder)

    def _build_model(self) -> dict[str, Any] | None:
        """From scratch, from out_dir's train state (returned, for _restore), or from pretrained weights."""
        cfg = self.cfg
        state = None
        if cfg.init_from == "resume":
            state = load_train_state(self.out_dir)
            saved = state.get("train_config", {})
            changed = [k for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
            if changed:
                raise UsageError(f"cannot resume {self.out_dir} with a different architecture: "
                                 + ", ".join(f"--{k}={getattr(cfg, k)} (checkpoint: {saved[k]})" for k in changed)
                                 + "; drop those options or start a new --out_dir")
            where = self.out_dir / STATE_FILE
            self.model = GPT(model_config({"model": state["model_config"]}, where, dropout=cfg.dropout))
            load_tensors(self.model, state["model"], where)
        elif cfg.init_from == "scratch":
            torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
            self.model = GPT(scratch_config(cfg, self.meta["vocab_size"]))
        else:
            self.model = from_pretrained(cfg.init_from, dropout=cfg.dropout)
        mcfg = self.model.config
        if cfg.block_size > mcfg.block_size:
            raise UsageError(f"--block_size={cfg.block_size} exceeds the model's context ({mcfg.block_size})")
        if self.meta["vocab_size"] > mcfg.vocab_size:
            raise UsageError(f"the data's vocabulary ({self.meta['vocab_size']}, tokenizer {cfg.tokenizer}) is larger "
                             f"than the model's ({mcfg.vocab_size}); use the tokenizer the model was trained with")
        self.model.to(self.device)
        return state

    def _choose_precision(self, state: dict[str, Any] | None) -> None:
        """The dtype rules (runtime/device.py), fed on CPU by the start-up probe (runtime/cpu.py).

        A resumed run keeps its choices, for exactness; every rank must choose alike (DDP keeps
        one set of weights), so bf16 is used only if all ranks measured it faster.
        """
        cfg = self.cfg
        kept = dict((state or {}).get("resolved") or {})
        if state is not None:
            kept.setdefault("dtype", state.get("dtype"))
            kept.setdefault("muon_dtype", "bfloat16")  # a state from torch.optim.Muon, which always used bf16
            kept = {k: v for k, v in kept.items() if v is not None}
        resumed = {"dtype", "muon_dtype"} <= kept.keys()
        self.cpu_probe: CpuProbe | None = probe_cpu() if self.device_type == "cpu" and not resumed else None

        def everywhere(flag: bool) -> bool:
            return not any_rank(self.dist, self.device, not flag)[0]

        def bf16_pays() -> bool:  # bf16 autocast: only where bf16 matmuls are faster, then if this model gains
            if "dtype" in kept:
                return kept["dtype"] == "bfloat16"
            return everywhere(self.cpu_probe.bf16_matmul_faster
                              and cpu_bf16_pays(self.model, cfg.batch_size, cfg.block_size))

        def bf16_ortho() -> bool:
            if "muon_dtype" in kept:
                return kept["muon_dtype"] == "bfloat16"
            return everywhere(self.cpu_probe.bf16_ortho_faster)

        self.ptdtype = resolve_dtype(cfg.dtype, self.device, cpu_bf16_pays=bf16_pays)
        self.muon_dtype = resolve_muon_dtype(self.device, cpu_bf16_faster=bf16_ortho)
        self.autocast = autocast(self.device, self.ptdtype)
        self.cpu_facts = self.cpu_probe.as_dict() if self.cpu_probe else \
            {k: v for k, v in kept.items() if k in ("cpu", "cpu_flags", "matmul_gflops", "probe_seconds")}

    def _thread_governor(self) -> ThreadGovernor | None:
        """--threads=0 on a single-process eager CPU run: a governor adapts the count to the load.

        Not under DDP (ranks must stay in step) nor torch.compile (its kernels fix the count).
        """
        cfg = self.cfg
        why = ("--threads" if cfg.threads > 0 else "not a CPU run" if self.device_type != "cpu" else
               "distributed" if self.dist.ddp else "compiled" if self.use_compile else None)
        if why is None and torch.get_num_threads() > 1:
            self.threads_policy = {"policy": "governor", "max": torch.get_num_threads()}
            return ThreadGovernor(torch.get_num_threads(), load=OtherLoad().cores)
        self.threads_policy = {"policy": "fixed", "threads": torch.get_num_threads(),
                               "why": why or "one thread available"}
        return None

    def _build_loaders(self) -> None:
        """The training stream (resumable), and fresh fixed-seed loaders for each eval."""
        cfg, dist, folder = self.cfg, self.dist, self.data_folder
        self.train_loader = BatchLoader(folder / "train.bin", cfg.block_size, cfg.batch_size, mode=cfg.data_mode,
                                        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, device=self.device)
        eval_bs = cfg.eval_batch_size or cfg.batch_size
        self.eval_loaders = {split: (lambda s=split: BatchLoader(folder / f"{s}.bin", cfg.block_size, eval_bs,
                                                                  seed=cfg.seed + 1, device=self.device))
                             for split in ("train", "val")}

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything the next step depends on: optimizers, scaler, data position, RNG, counters."""
        try:
            if len(state["optimizers"]) != len(self.optimizers):
                raise ValueError("a different --optimizer than the checkpoint's")
            for o, sd in zip(self.optimizers, state["optimizers"]):
                o.load_state_dict(sd)
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"cannot restore the optimizer from {self.out_dir}: {e}") from None
        self.train_loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.iter_num, self.best_val = int(state["iter"]), float(state["best_val_loss"])
        self.wandb_id, self.tokens_seen = state.get("wandb_id"), int(state.get("tokens", 0))
        for o in self.optimizers:  # the schedule sets lr from base_lr; a resumed run may change the peak
            for g in o.param_groups:
                g["base_lr"] = self.cfg.muon_lr if isinstance(o, Muon) else self.cfg.learning_rate
                if isinstance(o, Muon):
                    g["ortho_dtype"] = self.muon_dtype  # the run's recorded choice

    def _wrap_model(self) -> None:
        """torch.compile and DDP wrap ``self.model``; ``self.raw_model`` is what gets saved and evaluated."""
        cfg, dist = self.cfg, self.dist
        self.raw_model = self.model
        if self.use_compile:
            self.say("compiling the model (torch.compile)...")
            self.model = torch.compile(self.model)
        if dist.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, device_ids=[dist.local_rank] if self.device_type == "cuda" else None)
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * dist.world_size
        self.flops_per_iter = self.raw_model.flops_per_token(cfg.block_size) * self.tokens_per_iter
        self.peak = dashboard.device_peak_flops(self.device, cfg.peak_flops)
        self.say(f"model: {cfg.init_from if cfg.init_from not in ('scratch', 'resume') else cfg.model}, "
                 f"{self.raw_model.num_params() / 1e6:.2f}M parameters; device {self.device}, "
                 f"{dtype_name(self.ptdtype)}, compile {self.use_compile}; data {self.data_folder} "
                 f"(vocab {self.meta['vocab_size']})")
        self.say(f"global batch: {cfg.batch_size} x {cfg.gradient_accumulation_steps} accum x {dist.world_size} "
                 f"processes x {cfg.block_size} tokens = {self.tokens_per_iter:,} tokens/iter")
        if self.device_type == "cpu":
            self.say(self._cpu_line())

    def _cpu_line(self) -> str:
        """'cpu: <model> (<flags>); bf16 matmul X GFLOP/s vs fp32 Y: compute float32, muon float32; threads ...'"""
        probe = self.cpu_probe.summary() if self.cpu_probe else \
            f"{self.cpu_facts.get('cpu', 'this CPU')}; choices kept from the resumed run"
        muon = f", muon {self.muon_dtype}" if any(isinstance(o, Muon) for o in self.optimizers) else ""
        t = self.threads_policy
        threads = f"auto (governor, up to {t['max']})" if t["policy"] == "governor" else f"{t['threads']} ({t['why']})"
        return f"cpu: {probe}: compute {dtype_name(self.ptdtype)}{muon}; threads {threads}"

    def _open_run_folder(self) -> None:
        """The resolved config and a self-contained tokenizer; metrics and wandb (rank 0 writes everything)."""
        cfg, meta = self.cfg, self.meta
        self.resolved = {"device": self.device, "dtype": dtype_name(self.ptdtype), "muon_dtype": self.muon_dtype,
                         "compile": self.use_compile, "world_size": self.dist.world_size,
                         "tokens_per_iter": self.tokens_per_iter, "vocab_size": self.meta["vocab_size"],
                         "model_vocab_size": self.raw_model.config.vocab_size,
                         "n_params": self.raw_model.num_params(), "threads": self.threads_policy, **self.cpu_facts}
        self.extra: dict[str, Any] = {}
        self.metrics = self.wb = None
        if not self.dist.master or cfg.eval_only:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.extra = {"train": dataclasses.asdict(cfg), "tokenizer": self.tokenizer.save(self.out_dir),
                      "data": {k: meta.get(k) for k in ("dataset", "source", "split", "vocab_size", "train_tokens",
                                                        "val_tokens")},
                      "resolved": self.resolved}
        self.metrics = dashboard.MetricsLog(self.out_dir, self.t_start)
        if cfg.wandb_log and cfg.wandb_mode != "disabled":  # the values the run uses, not only the options given
            self.wb = dashboard.WandbLogger(cfg.wandb_project, cfg.wandb_run_name, cfg.wandb_mode, self.out_dir,
                                            {**dataclasses.asdict(cfg), "resolved": self.resolved}, self.wandb_id)
            self.wandb_id = self.wb.run_id

    # ------------------------------------------------------------------ step

    def step(self) -> None:
        """One optimizer step: gradients accumulated over micro-batches, clipped, applied. No host sync."""
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        set_lr(self.optimizers, lr_multiplier(self.iter_num, cfg))
        step_loss = torch.zeros((), device=self.device)
        for micro in range(cfg.gradient_accumulation_steps):
            x, y = self.train_loader.next_batch()
            last_micro = micro == cfg.gradient_accumulation_steps - 1
            # DDP: all-reduce gradients only on the last micro-step
            with nullcontext() if (not self.dist.ddp or last_micro) else model.no_sync():
                with self.autocast:
                    _, loss = model(x, y)
                    loss = loss / cfg.gradient_accumulation_steps  # the sum over micro-steps is the mean
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
        if self.scaler.is_enabled():
            for o in self.optimizers:
                self.scaler.unscale_(o)
        # clip_grad_norm_ returns the pre-clip norm; with no clipping, measure it all the same
        self.grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
        self.nonfinite |= ~torch.isfinite(step_loss) | ~torch.isfinite(self.grad_norm)
        for o in self.optimizers:
            self.scaler.step(o)
        self.scaler.update()
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        self.iter_num += 1
        self.tokens_seen += self.tokens_per_iter
        self.last_loss = step_loss
        self.progress.step()
        if self.governor is not None:  # CPU: the step really ended here (no asynchronous queue)
            self.governor.step_done(time.perf_counter() - t0)

    # ------------------------------------------------------------------ evaluate and checkpoint

    def eval_due(self) -> bool:
        """Every eval_interval steps and at the end (a resumed run does not re-evaluate its first step)."""
        cfg, it = self.cfg, self.iter_num
        return (it % cfg.eval_interval == 0 or it >= cfg.max_iters) and \
            (it != self.first_iter or cfg.init_from != "resume" or cfg.eval_only)

    def evaluate_and_checkpoint(self) -> bool:
        """Estimate the losses, record them, save what is due; True when the run should end here."""
        cfg, dist = self.cfg, self.dist
        if any_rank(dist, self.device, bool(self.nonfinite))[0]:
            raise TrainingDiverged(f"loss became NaN/inf before iteration {self.iter_num}")
        reached = False
        if dist.master:
            losses = estimate_loss(self.raw_model, self.eval_loaders, cfg.eval_iters, self.autocast)
            self.results.update(train_loss=losses["train"], val_loss=losses["val"])
            self.progress.message(f"eval @ iter {self.iter_num}: train loss {losses['train']:.4f}, "
                                  f"val loss {losses['val']:.4f}")
            if not math.isfinite(losses["val"]):
                raise TrainingDiverged(f"val loss is {losses['val']} at iteration {self.iter_num}")
            if not cfg.eval_only:
                self._record_eval(losses)
                self._checkpoint_after_eval(losses["val"])
                reached = cfg.target_loss is not None and losses["val"] <= cfg.target_loss
        if cfg.eval_only:
            self.stopped = "eval_only"
            return True
        if any_rank(dist, self.device, reached)[0]:
            self.stopped = "target"
            return True
        self.t_log, self.it_log = time.time(), self.iter_num  # eval time is not training throughput
        return False

    def _record_eval(self, losses: dict[str, float]) -> None:
        """An eval's losses and sample go to metrics.jsonl, loss.png and wandb."""
        cfg, it = self.cfg, self.iter_num
        text = sample_text(self.raw_model, self.tokenizer, cfg.sample_tokens, self.device, cfg.seed) \
            if cfg.sample_tokens else ""
        self.results["sample"] = text
        now = time.time()
        self.metrics.write("eval", now, iter=it, train_loss=losses["train"], val_loss=losses["val"])
        if text:
            self.metrics.write("sample", now, iter=it, text=text)
        dashboard.plot_losses(self.out_dir)
        if self.wb is not None:
            self.wb.log({"train/loss_eval": losses["train"], "val/loss": losses["val"], "tokens": self.tokens_seen},
                        step=it)
            if text:
                self.wb.log_sample(text, it)

    def _checkpoint_after_eval(self, val_loss: float) -> None:
        """best/ when val improved; the latest checkpoint always (or when improved, or at the end)."""
        cfg, it = self.cfg, self.iter_num
        improved = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        if it > self.first_iter or cfg.init_from != "scratch":
            if improved and cfg.keep_best:
                self.save_best(val_loss)
            if improved or cfg.always_save_checkpoint or it >= cfg.max_iters:
                self.save_checkpoint(val_loss)

    def save_checkpoint(self, val_loss: float | None) -> None:
        """Latest checkpoint: train_state.pt (for resume) then the model export (for sample.py)."""
        cfg, it = self.cfg, self.iter_num
        save_train_state(self.out_dir, train_state(
            self.raw_model, self.optimizers, self.scaler, iter=it, best_val_loss=self.best_val,
            dtype=dtype_name(self.ptdtype), resolved=self.resolved, loader=self.train_loader.state_dict(),
            wandb_id=self.wandb_id,
            tokens=self.tokens_seen, train_config=dataclasses.asdict(cfg)))
        save_model(self.raw_model, self.out_dir,
                   {**self.extra, "iter": it, "val_loss": val_loss, "best_val_loss": self.best_val})

    def save_best(self, val_loss: float) -> None:
        best = self.out_dir / BEST_DIR
        spec = self.tokenizer.save(best)
        save_model(self.raw_model, best, {**self.extra, "tokenizer": spec, "iter": self.iter_num, "val_loss": val_loss})

    # ------------------------------------------------------------------ log

    def log_due(self) -> bool:
        return self.iter_num % self.cfg.log_interval == 0 or self.iter_num >= self.cfg.max_iters

    def log(self) -> None:
        """Loss, lr, grad norm, throughput and MFU: the only per-interval device sync; stops on NaN/inf."""
        dist, it = self.dist, self.iter_num
        stats = torch.stack([self.last_loss.float(), self.grad_norm.float(), self.nonfinite.float()])
        if dist.ddp:  # the logged loss is the global batch's mean
            torch.distributed.all_reduce(stats)
            stats[:2] /= dist.world_size
        loss_v, gn_v, bad = stats.tolist()
        if bad or not math.isfinite(loss_v):
            raise TrainingDiverged(f"loss became {loss_v} at iteration {it}")
        now = time.time()
        tok_s = (it - self.it_log) * self.tokens_per_iter / max(now - self.t_log, 1e-9)
        flops_s = tok_s * self.flops_per_iter / self.tokens_per_iter
        mfu = flops_s / self.peak if self.peak else None
        self.t_log, self.it_log = now, it
        self.results["tokens_per_sec"] = tok_s
        if not dist.master:
            return
        lr_now = self.optimizers[0].param_groups[0]["lr"]
        self.progress.log(it, loss_v, lr_now, tok_s, gn_v, 1000 * self.tokens_per_iter / tok_s, mfu)
        threads = torch.get_num_threads() if self.device_type == "cpu" else None  # the governor's count now
        if self.metrics is not None:
            self.metrics.write("log", now, iter=it, loss=loss_v, lr=lr_now, grad_norm=gn_v, tokens_per_sec=tok_s,
                               mfu=mfu, flops_per_sec=flops_s, tokens=self.tokens_seen, threads=threads)
        if self.wb is not None:
            self.wb.log({"train/loss": loss_v, "lr": lr_now, "grad_norm": gn_v, "tokens_per_sec": tok_s, "mfu": mfu,
                         "flops_per_sec": flops_s, "tokens": self.tokens_seen, "threads": threads}, step=it)

    # ------------------------------------------------------------------ stop

    def stop_requested(self, stop: StopRequest) -> bool:
        """A signal arrived: every rank agrees on this step (DDP checks at log steps only), saves, and ends."""
        dist = self.dist
        check_now = not dist.ddp or self.iter_num % self.cfg.log_interval == 0
        if not (check_now and any_rank(dist, self.device, stop.requested is not None)[0]):
            return False
        if any_rank(dist, self.device, bool(self.nonfinite))[0]:
            raise TrainingDiverged(f"loss became NaN/inf before iteration {self.iter_num}")
        if dist.master:
            self.save_checkpoint(None)
            self.progress.message(f"stopped at iteration {self.iter_num} ({stop.requested or 'signal'}); "
                                  f"checkpoint saved in {self.out_dir}. Resume with: {resume_command(self.cfg)}")
        self.stopped = "signal"
        return True

    def result(self) -> dict[str, Any]:
        """{"iters", "val_loss", "train_loss", "best_val_loss", "time", "tokens_per_sec", "tokens", "out_dir",
        "stopped"}, where ``stopped`` is "done", "target", "signal" or "eval_only"."""
        best = self.best_val if math.isfinite(self.best_val) else None
        return {**self.results, "iters": self.iter_num, "best_val_loss": best, "time": time.time() - self.t_start,
                "tokens": self.tokens_seen, "stopped": self.stopped}

    def close(self) -> None:
        """End the dashboards and the process group; put the thread count back."""
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.wb is not None:
            self.wb.finish()
        teardown(self.dist)
        torch.set_num_threads(self.threads_before)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
