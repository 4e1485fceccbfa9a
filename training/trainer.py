"""One training run in named phases: set up, step, evaluate and checkpoint, log, stop.

``train.py`` reads as the loop that calls these in order; ``bench/bench_train.py`` times the
very ``step()`` that training runs. Setup happens in ``Trainer.__init__`` (device, data, model,
precision, optimizers, loaders, resume, wrappers, run folder); ``close()`` (or leaving the
``with`` block) ends the dashboards and the process group.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from data.loader import BatchLoader
from data.prepare import ensure_prepared, load_meta
from data.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import (BEST_DIR, STATE_FILE, from_pretrained, load_tensors, load_train_state, model_config,
                              save_model, save_train_state, writing)
from runtime.device import autocast, dtype_name, resolve_device, resolve_dtype
from runtime.errors import CheckpointError, UsageError
from training import dashboard
from training.config import ARCH_FIELDS, TrainConfig, scratch_config
from training.control import StopRequest, TrainingDiverged
from training.distributed import any_rank, setup_distributed, teardown
from training.evaluate import estimate_loss, sample_text
from training.memory import check_training_fits
from training.optim import configure_optimizers, lr_multiplier, set_lr
from training.precision import cpu_bf16_pays
from training.run_folder import check_out_dir, check_same_tokenizer, resume_command, start_writing
from training.state import check_train_state, set_rng_state, train_state

LOWER_BOUND_VOCAB = {"char": 1, "gpt2": 50257}  # before the data is prepared (bpe: --vocab_size)


class Trainer:
    """Everything one run holds; ``train.py``'s loop drives it phase by phase."""

    def __init__(self, cfg: TrainConfig, log_to_console: bool = True) -> None:
        self.cfg = cfg
        self.t_start = time.time()
        self.dist = self.progress = self.metrics = self.wb = None
        self.threads_before = torch.get_num_threads()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)  # process-wide, so put back by close()
        try:
            self._setup(log_to_console)
        except BaseException:  # bad input, or a signal during start-up: let go of what is open
            self.close(leave_group=False)
            raise

    # ------------------------------------------------------------------ setup

    def _setup(self, log_to_console: bool) -> None:
        """Checks, device, data, model, precision, optimizers, loaders, resume, wrappers, run folder: in this order.

        Nothing is written (run folder or data) until every check that can be made without the
        data has passed: out_dir, device, the train state to resume, the memory the run needs.
        """
        cfg = self.cfg
        self.dist = setup_distributed(cfg.device if cfg.device != "auto" else
                                      ("cuda" if torch.cuda.is_available() else "cpu"))
        check_out_dir(cfg, master=self.dist.master)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.device_type = self.device.split(":")[0]
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
            torch.backends.cudnn.allow_tf32 = True
        self.use_compile = cfg.compile == "true" or (cfg.compile == "auto" and self.device_type == "cuda")
        self.out_dir = Path(cfg.out_dir)
        self.console = self.dist.master and log_to_console
        state = self._load_state()
        if state is not None:
            self._check_fits(model_config({"model": state["model_config"]}, self.out_dir / STATE_FILE))
        elif cfg.init_from == "scratch":  # the vocabulary is known once the data is; a lower bound for now
            self._check_fits(scratch_config(cfg, LOWER_BOUND_VOCAB.get(cfg.tokenizer, cfg.vocab_size)))
        self.data_folder, self.meta, self.tokenizer = self._prepare_data()
        if state is not None:
            check_same_tokenizer(self.out_dir, state, self.meta["tokenizer"], self.data_folder)
        self._build_model(state)
        self._choose_precision(state)
        self.optimizers = configure_optimizers(self.model, cfg, self.device_type)
        self.scaler = torch.amp.GradScaler(self.device_type,
                                           enabled=(self.ptdtype == torch.float16 and self.device_type == "cuda"))
        self._build_loaders()
        self.iter_num, self.best_val, self.wandb_id, self.tokens_seen = 0, math.inf, None, 0
        state_iter = None
        if state is not None:
            self._restore(state)
            state_iter = self.iter_num
        del state  # drop the checkpoint's tensors (nanoGPT kept them alive for the whole run)
        self._wrap_model()
        self._open_run_folder()
        self.progress = dashboard.Progress(self.iter_num, cfg.max_iters, enabled=self.console)
        # what first became NaN/inf (1 loss, 2 grad norm, 3 both) and at which iteration: kept on the device, no sync
        self.bad_kind = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_iter = torch.zeros((), dtype=torch.long, device=self.device)
        self.saved_iter = self.iter_num if state_iter is not None else None
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

    def _load_state(self) -> dict[str, Any] | None:
        """A resume's train state (memory-mapped, checked field by field), or None for a new run."""
        if self.cfg.init_from != "resume":
            return None
        state = load_train_state(self.out_dir)
        check_train_state(state, self.out_dir / STATE_FILE)
        return state

    def _check_fits(self, mcfg: GPTConfig) -> None:
        """Refuse a model and batch this device cannot hold, before allocating them (training/memory.py)."""
        compute_bytes = 4 if self.cfg.dtype == "float32" else 2  # auto may pick bf16: count the smaller
        check_training_fits(mcfg, self.cfg, self.device, compute_bytes)

    def _prepare_data(self) -> tuple[Path, dict[str, Any], Any]:
        """Rank 0 prepares the corpus, then each other node's first process (a no-op if data_dir is
        shared), then everyone else reads it: never two builders of one folder at once."""
        cfg, dist = self.cfg, self.dist
        prep = cfg.prepare_options()
        turns = [dist.master, dist.local_rank == 0 and not dist.master, dist.local_rank != 0] if dist.ddp else [True]
        folder = None
        for my_turn in turns:
            if my_turn:
                folder = ensure_prepared(prep)
            if dist.ddp:
                torch.distributed.barrier()
        meta = load_meta(folder)
        return folder, meta, load_tokenizer(meta["tokenizer"], folder)

    def _build_model(self, state: dict[str, Any] | None) -> None:
        """From scratch, from out_dir's train state, or from pretrained weights; each checked to fit first."""
        cfg = self.cfg
        if state is not None:
            saved = state["train_config"]
            changed = [k for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
            if changed:
                raise UsageError(f"cannot resume {self.out_dir} with a different architecture: "
                                 + ", ".join(f"--{k}={getattr(cfg, k)} (checkpoint: {saved[k]})" for k in changed)
                                 + "; drop those options or start a new --out_dir")
            where = self.out_dir / STATE_FILE
            self.model = GPT(model_config({"model": state["model_config"]}, where, dropout=cfg.dropout))
            load_tensors(self.model, state["model"], where)
        elif cfg.init_from == "scratch":
            mcfg = scratch_config(cfg, self.meta["vocab_size"])
            self._check_fits(mcfg)
            torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
            self.model = GPT(mcfg)
        else:
            self.model = from_pretrained(cfg.init_from, dropout=cfg.dropout)  # refuses a model too big to hold
            self._check_fits(self.model.config)
        mcfg = self.model.config
        if cfg.block_size > mcfg.block_size:
            raise UsageError(f"--block_size={cfg.block_size} exceeds the model's context ({mcfg.block_size})")
        if self.meta["vocab_size"] > mcfg.vocab_size:
            raise UsageError(f"the data's vocabulary ({self.meta['vocab_size']}, tokenizer {cfg.tokenizer}) is larger "
                             f"than the model's ({mcfg.vocab_size}); use the tokenizer the model was trained with")
        self.model.to(self.device)

    def _choose_precision(self, state: dict[str, Any] | None) -> None:
        """The dtype rule (runtime/device.py); a resumed CPU run keeps its precision, for exactness."""
        cfg = self.cfg

        def bf16_pays() -> bool:
            if state is not None and state.get("dtype"):
                return state["dtype"] == "bfloat16"
            # measured on every rank; bf16 only if all ranks found it faster
            return not any_rank(self.dist, self.device,
                                not cpu_bf16_pays(self.model, cfg.batch_size, cfg.block_size))[0]

        self.ptdtype = resolve_dtype(cfg.dtype, self.device, cpu_bf16_pays=bf16_pays)
        self.autocast = autocast(self.device, self.ptdtype)

    def _build_loaders(self) -> None:
        """The training stream (resumable), and fresh fixed-seed loaders for each eval."""
        cfg, dist, folder = self.cfg, self.dist, self.data_folder
        vocab = self.meta["vocab_size"]  # every batch is checked against it: a token file is untrusted input
        self.train_loader = BatchLoader(folder / "train.bin", cfg.block_size, cfg.batch_size, mode=cfg.data_mode,
                                        seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, device=self.device,
                                        vocab_size=vocab)
        eval_bs = cfg.eval_batch_size or cfg.batch_size
        self.eval_loaders = {split: (lambda s=split: BatchLoader(folder / f"{s}.bin", cfg.block_size, eval_bs,
                                                                  seed=cfg.seed + 1, device=self.device,
                                                                  vocab_size=vocab))
                             for split in ("train", "val")}
        self.eval_loaders["val"]()  # a val split too short for one window is refused now, not at the first eval

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything the next step depends on: optimizers, scaler, data position, RNG, counters."""
        try:
            if len(state["optimizers"]) != len(self.optimizers):
                raise ValueError("a different --optimizer than the checkpoint's")
            for o, sd in zip(self.optimizers, state["optimizers"]):
                o.load_state_dict(sd)
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"cannot restore the optimizer from {self.out_dir}: {str(e)[:200]}") from None
        self.train_loader.load_state_dict(state["loader"])
        try:
            set_rng_state(state["rng"])
            self.iter_num, self.best_val = int(state["iter"]), float(state["best_val_loss"])
            self.wandb_id, self.tokens_seen = state.get("wandb_id"), int(state.get("tokens", 0))
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"cannot restore the RNG state and counters from {self.out_dir / STATE_FILE} "
                                  f"({type(e).__name__}: {str(e)[:100]}); the file is damaged: restore it "
                                  "or start a fresh run") from None
        for o in self.optimizers:  # the schedule sets lr from base_lr; a resumed run may change the peak
            for g in o.param_groups:
                g["base_lr"] = self.cfg.muon_lr if isinstance(o, torch.optim.Muon) else self.cfg.learning_rate

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

    def _open_run_folder(self) -> None:
        """The resolved config and a self-contained tokenizer; metrics and wandb (rank 0 writes everything).

        The first writes of the run: --overwrite's deletion of the old run, temp files of a killed
        run removed, metrics.jsonl cut back to the resumed iteration, the tokenizer (if it changed).
        """
        cfg, meta = self.cfg, self.meta
        self.extra: dict[str, Any] = {}
        if not self.dist.master or cfg.eval_only:
            return
        resumed = cfg.init_from == "resume"
        with writing(self.out_dir):
            deleted = start_writing(self.out_dir, overwrite=cfg.overwrite and not resumed)
            if deleted:
                self.say(f"--overwrite: deleted the previous run's {', '.join(deleted)} in {self.out_dir}")
            spec = self.tokenizer.save(self.out_dir)
            self.metrics = dashboard.MetricsLog(self.out_dir, self.t_start,
                                                keep_until=self.iter_num if resumed else None)
        self.extra = {"train": dataclasses.asdict(cfg), "tokenizer": spec,
                      "data": {k: meta.get(k) for k in ("dataset", "source", "split", "vocab_size", "train_tokens",
                                                        "val_tokens")},
                      "resolved": {"device": self.device, "dtype": dtype_name(self.ptdtype),
                                   "compile": self.use_compile, "world_size": self.dist.world_size,
                                   "tokens_per_iter": self.tokens_per_iter}}
        if cfg.wandb_log and cfg.wandb_mode != "disabled":
            self.wb = dashboard.WandbLogger(cfg.wandb_project, cfg.wandb_run_name, cfg.wandb_mode, self.out_dir,
                                            dataclasses.asdict(cfg), self.wandb_id)
            self.wandb_id = self.wb.run_id

    # ------------------------------------------------------------------ step

    def step(self) -> None:
        """One optimizer step: gradients accumulated over micro-batches, clipped, applied. No host sync."""
        cfg, model = self.cfg, self.model
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
        self._watch_finite(step_loss)
        for o in self.optimizers:
            self.scaler.step(o)
        self.scaler.update()
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        self.iter_num += 1
        self.tokens_seen += self.tokens_per_iter
        self.last_loss = step_loss
        self.progress.step()

    def _watch_finite(self, step_loss: torch.Tensor) -> None:
        """Remember what first went NaN/inf (the loss, the gradient norm) and when: device ops only, no sync."""
        kind = (~torch.isfinite(step_loss)).long() + 2 * (~torch.isfinite(self.grad_norm)).long()
        first = (self.bad_kind == 0) & (kind > 0)
        self.bad_kind = torch.where(first, kind, self.bad_kind)
        self.bad_iter = torch.where(first, torch.full_like(self.bad_iter, self.iter_num + 1), self.bad_iter)

    def _raise_if_diverged(self) -> None:
        """TrainingDiverged naming the quantity that became NaN/inf and the iteration (a device sync)."""
        kind, it = (int(v) for v in torch.stack([self.bad_kind, self.bad_iter]).tolist())
        if not any_rank(self.dist, self.device, kind > 0)[0]:
            return
        what = {1: "the loss", 2: "the gradient norm", 3: "the loss and the gradient norm"}.get(kind)
        if what is None:
            raise TrainingDiverged("the loss or gradient norm of another process became NaN/inf")
        raise TrainingDiverged(f"{what} became NaN/inf at iteration {it}")

    # ------------------------------------------------------------------ evaluate and checkpoint

    def eval_due(self) -> bool:
        """Every eval_interval steps and at the end (a resumed run does not re-evaluate its first step)."""
        cfg, it = self.cfg, self.iter_num
        return (it % cfg.eval_interval == 0 or it >= cfg.max_iters) and \
            (it != self.first_iter or cfg.init_from != "resume" or cfg.eval_only)

    def evaluate_and_checkpoint(self) -> bool:
        """Estimate the losses, record them, save what is due; True when the run should end here."""
        cfg, dist = self.cfg, self.dist
        self._raise_if_diverged()
        reached = False
        if dist.master:
            losses = estimate_loss(self.raw_model, self.eval_loaders, cfg.eval_iters, self.autocast)
            self.results.update(train_loss=losses["train"], val_loss=losses["val"])
            self.progress.message(f"eval @ iter {self.iter_num}: train loss {losses['train']:.4f}, "
                                  f"val loss {losses['val']:.4f}")
            if not math.isfinite(losses["val"]):
                raise TrainingDiverged(f"the val loss is {losses['val']} at iteration {self.iter_num}")
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
        with writing(self.out_dir):
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
        """best/ when val improved, then the latest checkpoint (always, or when improved, or at the end).

        train_state.pt is the commit point of a checkpoint and is written last (best/, then the model
        export, then the state; see save_checkpoint): a kill anywhere before it resumes from the
        previous state, which trains and evaluates this interval again and rewrites best/ and the
        export. So neither best/ nor the export can lag behind the state a run resumes from.
        """
        cfg, it = self.cfg, self.iter_num
        improved = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        if it > self.first_iter or cfg.init_from != "scratch":
            if improved and cfg.keep_best:
                self.save_best(val_loss)
            if improved or cfg.always_save_checkpoint or it >= cfg.max_iters:
                self.save_checkpoint(val_loss)

    def save_checkpoint(self, val_loss: float | None) -> None:
        """Latest checkpoint: the model export (for sample.py), then train_state.pt (for resume), last."""
        cfg, it = self.cfg, self.iter_num
        save_model(self.raw_model, self.out_dir,
                   {**self.extra, "iter": it, "val_loss": val_loss, "best_val_loss": self.best_val})
        save_train_state(self.out_dir, train_state(
            self.raw_model, self.optimizers, self.scaler, iter=it, best_val_loss=self.best_val,
            dtype=dtype_name(self.ptdtype), loader=self.train_loader.state_dict(), wandb_id=self.wandb_id,
            tokens=self.tokens_seen, train_config=dataclasses.asdict(cfg), tokenizer=self.extra["tokenizer"]))
        self.saved_iter = it

    def save_best(self, val_loss: float) -> None:
        best = self.out_dir / BEST_DIR
        with writing(best):
            spec = self.tokenizer.save(best)
        save_model(self.raw_model, best, {**self.extra, "tokenizer": spec, "iter": self.iter_num, "val_loss": val_loss})

    # ------------------------------------------------------------------ log

    def log_due(self) -> bool:
        return self.iter_num % self.cfg.log_interval == 0 or self.iter_num >= self.cfg.max_iters

    def log(self) -> None:
        """Loss, lr, grad norm, throughput and MFU: the only per-interval device sync; stops on NaN/inf."""
        dist, it = self.dist, self.iter_num
        self._raise_if_diverged()
        stats = torch.stack([self.last_loss.float(), self.grad_norm.float()])
        if dist.ddp:  # the logged loss is the global batch's mean
            torch.distributed.all_reduce(stats)
            stats /= dist.world_size
        loss_v, gn_v = stats.tolist()
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
        if self.metrics is not None:
            with writing(self.metrics.path):
                self.metrics.write("log", now, iter=it, loss=loss_v, lr=lr_now, grad_norm=gn_v, tokens_per_sec=tok_s,
                                   mfu=mfu, flops_per_sec=flops_s, tokens=self.tokens_seen)
        if self.wb is not None:
            self.wb.log({"train/loss": loss_v, "lr": lr_now, "grad_norm": gn_v, "tokens_per_sec": tok_s, "mfu": mfu,
                         "flops_per_sec": flops_s, "tokens": self.tokens_seen}, step=it)

    # ------------------------------------------------------------------ stop

    def stop_requested(self, stop: StopRequest) -> bool:
        """A signal arrived: every rank agrees on this step (DDP checks at log steps only), saves, and ends.

        Nothing is saved twice (a checkpoint already at this iteration stands), and nothing is saved
        before the first step of a new run: there is no progress to keep.
        """
        dist, it = self.dist, self.iter_num
        check_now = not dist.ddp or it % self.cfg.log_interval == 0
        if not (check_now and any_rank(dist, self.device, stop.requested is not None)[0]):
            return False
        self._raise_if_diverged()
        if dist.master and not self.cfg.eval_only:
            signame = stop.requested or "signal"
            if it != self.saved_iter and it > self.first_iter:
                self.save_checkpoint(None)
                done = f"checkpoint saved in {self.out_dir}"
            elif self.saved_iter is not None:
                done = f"the checkpoint in {self.out_dir} is up to date"
            else:
                done = "nothing trained yet, so nothing saved"
            resume = f". Resume with: {resume_command(self.out_dir)}" if self.saved_iter is not None else ""
            self.progress.message(f"stopped at iteration {it} ({signame}); {done}{resume}")
        self.stopped = "signal"
        return True

    def result(self) -> dict[str, Any]:
        """{"iters", "val_loss", "train_loss", "best_val_loss", "time", "tokens_per_sec", "tokens", "out_dir",
        "stopped", "saved_iter"}, where ``stopped`` is "done", "target", "signal" or "eval_only" and
        ``saved_iter`` the iteration of the run folder's latest checkpoint (None: there is none)."""
        best = self.best_val if math.isfinite(self.best_val) else None
        return {**self.results, "iters": self.iter_num, "best_val_loss": best, "time": time.time() - self.t_start,
                "tokens": self.tokens_seen, "stopped": self.stopped, "saved_iter": self.saved_iter}

    def close(self, leave_group: bool = True) -> None:
        """End the dashboards and the process group; put the thread count back. Safe after a failed setup."""
        if self.progress is not None:
            self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.wb is not None:
            self.wb.finish()
        if self.dist is not None and leave_group:  # after a failed setup the process exits: no barrier to hang on
            teardown(self.dist)
        torch.set_num_threads(self.threads_before)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
