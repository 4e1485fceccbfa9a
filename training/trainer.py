"""One run being trained: the phases train.py's loop calls (step, evaluate and checkpoint, log, stop).

training/setup.py makes the ``Trainer`` (every field is given then); ``bench/bench_train.py``
times the very ``step()`` that training runs. ``close()`` (or leaving the ``with`` block) ends
the dashboards and the process group. What the ranks of a torchrun job do together lives in
training/distributed.py; what a checkpoint writes, in training/checkpoints.py.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.loader import BatchLoader
from model.checkpoint import writing
from runtime.cpu import ThreadGovernor
from training import dashboard
from training.checkpoints import Checkpoints, due_after_eval
from training.config import TrainConfig
from training.control import STOP_WARMUP_STEPS, StopRequest, TrainingDiverged, steps_between_stop_agreements
from training.distributed import Dist, gradient_sync, local_norm, max_across_ranks, on_master, teardown
from training.evaluate import attention_at, bpb_text, combine_ranks, estimate_loss, record_eval, sample_text
from training.health import Health
from training.optim import lr_multiplier, set_lr
from training.resolved import Resolved
from training.run_folder import resume_command


@dataclass
class Trainer:
    """What set-up made for one run, the counters that move as it trains, and its phases."""

    cfg: TrainConfig
    dist: Dist
    resolved: Resolved
    model: torch.nn.Module  # what a step runs: compiled and/or DDP-wrapped
    raw_model: torch.nn.Module  # what is saved and evaluated
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    autocast: Any  # the compute dtype's context (training/precision.py)
    train_loader: BatchLoader
    eval_loaders: dict[str, Any]  # split -> a maker of a fresh, fixed-seed loader
    data_folder: Path
    tokenizer: Any
    governor: ThreadGovernor | None
    checkpoints: Checkpoints
    progress: dashboard.Progress
    metrics: dashboard.MetricsLog | None  # rank 0, unless eval_only; feeds the --report_to dashboards
    health: Health
    threads_before: int  # the thread count to put back at close()
    t_start: float
    iter_num: int
    best_val: float
    tokens_seen: int
    saved_iter: int | None  # the iteration of the run folder's latest checkpoint (None: there is none)
    last_loss: torch.Tensor  # the last step's loss and gradient norm, on the device
    grad_norm: torch.Tensor
    first_iter: int = field(init=False)
    t_log: float = field(init=False)  # throughput is measured from here ...
    it_log: int = field(init=False)  # ... and this iteration
    stopped: str = "done"  # "done", "target", "signal" or "eval_only"
    moves_recorded: int = 0  # governor moves already written to metrics.jsonl
    stop_every: int = 1  # steps between the ranks' stop agreements (see stop_requested)
    stop_agreements: int = 0  # the collectives made for them, reported in metrics.jsonl and the result
    agreed_iter: int = field(init=False)  # the iteration of the last agreement, and its time
    t_agreed: float = field(init=False)
    results: dict[str, Any] = field(init=False)
    token_bytes: torch.Tensor = field(init=False)  # each id's UTF-8 length, on the device: for bits per byte

    def __post_init__(self) -> None:
        self.first_iter = self.iter_num
        self.t_log, self.it_log = time.time(), self.iter_num
        self.agreed_iter, self.t_agreed = self.iter_num, time.perf_counter()
        self.results = {"out_dir": str(self.out_dir), "val_loss": None, "train_loss": None, "val_bpb": None,
                        "tokens_per_sec": None}
        self.token_bytes = torch.tensor(self.tokenizer.token_bytes(), dtype=torch.int64, device=self.resolved.device)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    # ------------------------------------------------------------------ step

    def step(self) -> None:
        """One optimizer step: gradients accumulated over micro-batches, clipped, applied. No host sync."""
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        set_lr(self.optimizers, lr_multiplier(self.iter_num, cfg))
        step_loss = torch.zeros((), device=self.resolved.device)
        for micro in range(cfg.gradient_accumulation_steps):
            x, y = self.train_loader.next_batch()
            # DDP all-reduces (FSDP reduce-scatters) the gradients only on the last micro-step
            with gradient_sync(model, self.raw_model, self.dist, self.resolved.fsdp,
                               micro == cfg.gradient_accumulation_steps - 1):
                with self.autocast:
                    _, loss = model(x, y)
                    loss = loss / cfg.gradient_accumulation_steps  # the sum over micro-steps is the mean
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
        if self.scaler.is_enabled():
            for o in self.optimizers:
                self.scaler.unscale_(o)
        # clip_grad_norm_ returns the pre-clip norm; with no clipping, measure it all the same
        self.grad_norm = local_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
        self.health.track(step_loss, self.grad_norm)
        for o in self.optimizers:
            self.scaler.step(o)
        self.scaler.update()
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        self.iter_num += 1
        self.tokens_seen += self.resolved.tokens_per_iter
        self.last_loss = step_loss
        self.progress.step()
        if self.governor is not None:  # CPU: the step really ended here (no asynchronous queue)
            self.governor.step_done(time.perf_counter() - t0)
            self._record_thread_moves()
        if self.iter_num == self.first_iter + 1:  # the first step compiles and warms up: not throughput
            step_loss.item()  # wait for it (once)
            self.t_log, self.it_log = time.time(), self.iter_num

    def _record_thread_moves(self) -> None:
        """Every move of the governor goes into metrics.jsonl: a reader of the dashboard can see when
        and why the thread count changed (a trial, other load, a win kept, a step back)."""
        moves = self.governor.history
        if self.metrics is not None:
            now = time.time()
            for at, threads, why in moves[self.moves_recorded:]:
                self.metrics.write("threads", now, iter=self.iter_num, threads=threads, why=why, governor_time=at)
        self.moves_recorded = len(moves)

    # ------------------------------------------------------------------ evaluate and checkpoint

    def eval_due(self) -> bool:
        """Every eval_interval steps and at the end (a resumed run does not re-evaluate its first step)."""
        cfg, it = self.cfg, self.iter_num
        return (it % cfg.eval_interval == 0 or it >= cfg.max_iters) and \
            (it != self.first_iter or cfg.init_from != "resume" or cfg.eval_only)

    def evaluate_and_checkpoint(self) -> bool:
        """Estimate the losses, record them, save what is due; True when the run should end here.

        Every rank evaluates (FSDP's sharded forward needs them all; under DDP they would only wait)
        and takes the same decisions from the same, rank-averaged losses; rank 0 writes.
        """
        cfg, it = self.cfg, self.iter_num
        self.health.check(self.dist, it)
        mine = estimate_loss(self.raw_model, self.eval_loaders, cfg.eval_iters, self.autocast, self.token_bytes)
        losses = combine_ranks(self.dist, mine)  # {"train": .., "val": .., "train_bpb": .., "val_bpb": ..}
        self.results.update(train_loss=losses["train"], val_loss=losses["val"], val_bpb=losses["val_bpb"])
        self.progress.message(f"eval @ iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                              f"{bpb_text(losses['val_bpb'])}")
        if not math.isfinite(losses["val"]):
            raise TrainingDiverged(f"val loss is {losses['val']} at iteration {it}")
        if cfg.eval_only:
            self.stopped = "eval_only"
            return True
        # the same seed on every rank: under FSDP each rank takes part in each forward
        text = sample_text(self.raw_model, self.tokenizer, cfg.sample_tokens, self.resolved.device, cfg.seed) \
            if cfg.sample_tokens else ""
        self.results["sample"] = text
        # every rank draws (a forward, as above); not under FSDP, whose sharded weights the layer-by-layer
        # attention_maps pass does not gather
        view = attention_at(self.raw_model, self.tokenizer, self.data_folder, self.out_dir, it) \
            if cfg.attention_png and not self.resolved.fsdp else None
        on_master(self.dist, "the eval's logging",
                  lambda: record_eval(self.metrics, self.out_dir, it, losses, text, view))
        self._checkpoint_after_eval(losses["val"], losses["val_bpb"])
        if cfg.target_loss is not None and losses["val"] <= cfg.target_loss:
            self.stopped = "target"
            return True
        self.t_log, self.it_log = time.time(), self.iter_num  # eval time is not training throughput
        return False

    def _checkpoint_after_eval(self, val_loss: float, val_bpb: float | None) -> None:
        """best/ when val improved, then the latest checkpoint (training/checkpoints.py says when and why
        in this order); the model is gathered once for both."""
        improved = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        best, latest = due_after_eval(self.cfg, self.iter_num, self.first_iter, improved)
        if not (best or latest):
            return
        tensors = self.checkpoints.gather()
        if best:
            self.checkpoints.save_best(self.iter_num, val_loss, tensors, val_bpb)
        if latest:
            self.save_checkpoint(val_loss, tensors, val_bpb)

    def save_checkpoint(self, val_loss: float | None, tensors: dict[str, torch.Tensor] | None = None,
                        val_bpb: float | None = None) -> None:
        """The latest checkpoint at this iteration (every rank calls it; rank 0 writes)."""
        self.checkpoints.save(self.iter_num, val_loss, self.best_val, self.tokens_seen, tensors, val_bpb)
        self.saved_iter = self.iter_num

    # ------------------------------------------------------------------ log

    def log_due(self) -> bool:
        return self.iter_num % self.cfg.log_interval == 0 or self.iter_num >= self.cfg.max_iters

    def log(self) -> None:
        """Loss, lr, grad norm, throughput and MFU: the only per-interval device sync; stops on NaN/inf."""
        dist, it, per_iter = self.dist, self.iter_num, self.resolved.tokens_per_iter
        self.health.check(dist, it)
        stats = torch.stack([self.last_loss.float(), self.grad_norm.float()])
        if dist.ddp:  # the logged loss is the global batch's mean
            torch.distributed.all_reduce(stats)
            stats /= dist.world_size
        loss_v, gn_v = stats.tolist()
        now = time.time()
        tok_s = flops_s = mfu = None  # an interval holding only the first (compiling) step has no throughput
        if it > self.it_log:
            tok_s = (it - self.it_log) * per_iter / max(now - self.t_log, 1e-9)
            flops_s = tok_s * self.resolved.flops_per_iter / per_iter
            mfu = dashboard.mfu(flops_s, dist.world_size, self.resolved.peak)
            self.results["tokens_per_sec"] = tok_s
        self.t_log, self.it_log = now, it
        if not dist.master:
            return
        lr_now = self.optimizers[0].param_groups[0]["lr"]
        self.progress.log(it, loss_v, lr_now, tok_s, gn_v, 1000 * per_iter / tok_s if tok_s else None, mfu)
        threads = torch.get_num_threads() if self.resolved.device_type == "cpu" else None  # the governor's count now
        if self.metrics is not None:
            with writing(self.metrics.path):
                self.metrics.write("log", now, iter=it, loss=loss_v, lr=lr_now, grad_norm=gn_v, tokens_per_sec=tok_s,
                                   mfu=mfu, flops_per_sec=flops_s, tokens=self.tokens_seen, threads=threads)

    # ------------------------------------------------------------------ stop

    def stop_requested(self, stop: StopRequest) -> bool:
        """A signal arrived on any rank: every rank agrees on one step, saves there, and ends.

        One process reads its own flag at every step. Under torchrun the ranks must agree, with a
        collective (one gloo all-reduce, no GPU sync), and agreeing at every step would cost a host
        round trip per step; so they agree every ``stop_every`` steps, after every eval, and at every
        step while warming up. torchrun SIGKILLs its workers 30 s after it forwards a signal, so
        ``stop_every`` is the number of steps that fit in STOP_AGREEMENT_SECONDS at the slowest rank's
        pace since the last agreement: every rank derives the same number from the same agreed time,
        so all call the collective on the same steps. Nothing is saved twice (a checkpoint already at
        this iteration stands), and nothing before the first step of a new run: there is no progress
        to keep.
        """
        it = self.iter_num
        if self.dist.ddp:
            if it < self.agreed_iter + self.stop_every and not self.eval_due():  # eval_due: it just evaluated
                return False
            if not self._agree_on_stop(stop.requested is not None):
                return False
        elif stop.requested is None:
            return False
        self.health.check(self.dist, it)
        saved = False
        if not self.cfg.eval_only and it != self.saved_iter and it > self.first_iter:
            self.save_checkpoint(None)
            saved = True
        if self.dist.master and not self.cfg.eval_only:
            signame = stop.requested or "signal"
            if saved:
                done = f"checkpoint saved in {self.out_dir}"
            elif self.saved_iter is not None:
                done = f"the checkpoint in {self.out_dir} is up to date"
            else:
                done = "nothing trained yet, so nothing saved"
            resume = f". Resume with: {resume_command(self.out_dir)}" if self.saved_iter is not None else ""
            self.progress.message(f"stopped at iteration {it} ({signame}); {done}{resume}")
            if self.metrics is not None:
                with writing(self.metrics.path):
                    self.metrics.write("stop", time.time(), iter=it, signal=signame, saved_iter=self.saved_iter,
                                       stop_agreements=self.stop_agreements, stop_every=self.stop_every)
        self.stopped = "signal"
        return True

    def _agree_on_stop(self, requested: bool) -> bool:
        """One collective: was any rank signalled, and the slowest rank's wall time per step since the last
        agreement (on a GPU the host waits for the device within a step or two, so this is the device's pace)."""
        now = time.perf_counter()
        per_step = (now - self.t_agreed) / max(self.iter_num - self.agreed_iter, 1)
        flag, slowest = max_across_ranks(self.dist, [float(requested), per_step])
        self.stop_agreements += 1
        warm = self.iter_num - self.first_iter >= STOP_WARMUP_STEPS
        self.stop_every = steps_between_stop_agreements(slowest) if warm else 1
        self.agreed_iter, self.t_agreed = self.iter_num, now
        return flag > 0

    def result(self) -> dict[str, Any]:
        """{"iters", "val_loss", "val_bpb", "train_loss", "best_val_loss", "time", "tokens_per_sec", "tokens", "out_dir",
        "stopped", "saved_iter", "stop_agreements"}, where ``stopped`` is "done", "target", "signal" or
        "eval_only" and ``saved_iter`` the iteration of the run folder's latest checkpoint (None: there is none);
        ``stop_agreements`` counts the ranks' stop agreements (0 in one process)."""
        best = self.best_val if math.isfinite(self.best_val) else None
        return {**self.results, "iters": self.iter_num, "best_val_loss": best, "time": time.time() - self.t_start,
                "tokens": self.tokens_seen, "stopped": self.stopped, "saved_iter": self.saved_iter,
                "stop_agreements": self.stop_agreements}

    def close(self, failed: bool = False) -> None:
        """End the dashboards and the process group; put the thread count back.

        ``failed``: leaving on an exception; then no closing barrier, which another rank still inside
        a collective could take for its own (this process exits, and torchrun ends the others).
        """
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
        teardown(self.dist, barrier=not failed)
        torch.set_num_threads(self.threads_before)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)
