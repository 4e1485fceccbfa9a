"""One training run in named phases: set up, step, evaluate and checkpoint, log, stop.

``train.py`` reads as the loop that calls these in order; ``bench/bench_train.py`` times the
very ``step()`` that training runs. Setup happens in ``Trainer.__init__`` (device, data, process
group, model, precision, FSDP sharding, optimizers, loaders, resume, wrappers, run folder);
``close()`` (or leaving the ``with`` block) ends the dashboards and the process group. What the
ranks of a torchrun job do together (collectives, sharding, gathering the state) lives in
``training/distributed.py``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from data.loader import BatchLoader, read_tokens
from data.prepare import load_meta
from data.tokenizer import load_tokenizer
from model import GPT, GPTConfig
from model.checkpoint import (ATTENTION_FILE, BEST_DIR, STATE_FILE, from_pretrained, load_tensors, load_train_state,
                              model_config, save_model, save_train_state, writing)
from runtime.cpu import CpuProbe, OtherLoad, ThreadGovernor, probe_cpu
from runtime.device import (autocast, dtype_name, resolve_device, resolve_dtype, resolve_muon_dtype,
                            use_cuda_device)
from runtime.errors import CheckpointError, UsageError
from training import dashboard
from training.config import ARCH_FIELDS, TrainConfig, config_warnings, scratch_config
from training.control import StopRequest, TrainingDiverged, check_divergence
from training.distributed import (any_rank, ddp_kwargs, dist_from_env, full_model_state, full_optimizer_states,
                                  gather_objects, gradient_sync, init_process_group, load_optimizer_states,
                                  local_norm, mean_across_ranks, on_master, prepare_data, shard_model,
                                  sharded_grad_scaler, teardown)
from training.evaluate import estimate_loss, sample_text
from training.memory import check_training_fits
from training.muon import Muon
from training.optim import configure_optimizers, lr_multiplier, set_lr
from training.precision import cpu_bf16_pays
from training.run_folder import check_out_dir, check_same_tokenizer, resume_command, start_writing
from training.state import check_train_state, rank_rng_state, rng_state, set_rng_state, train_state
from viz.picture import attention_view, write_picture

ATTENTION_PROMPT_TOKENS = 48  # the val split's first tokens: a fixed text whose attention is drawn at each eval
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
            self.close(failed=True)
            raise

    # ------------------------------------------------------------------ setup

    def _setup(self, log_to_console: bool) -> None:
        """Checks, device, data, process group, model, precision, sharding, optimizers, loaders, resume,
        wrappers, run folder: in this order.

        Nothing is written (run folder or data) until every check that can be made without the
        data has passed: out_dir, device, the train state to resume, the memory the run needs.
        """
        cfg = self.cfg
        self.dist = dist_from_env()
        check_out_dir(cfg, master=self.dist.master)
        self.device = resolve_device(cfg.device, self.dist.local_rank, distributed=self.dist.ddp)
        self.device_type = self.device.split(":")[0]
        if self.device_type == "cuda":
            use_cuda_device(self.device)
        self.use_compile = cfg.compile == "true" or (cfg.compile == "auto" and self.device_type == "cuda")
        self.fsdp = cfg.fsdp and self.dist.ddp
        self.out_dir = Path(cfg.out_dir)
        self.console = self.dist.master and log_to_console
        state = self._load_state()
        if state is not None:
            self._check_fits(model_config({"model": state["model_config"]}, self.out_dir / STATE_FILE))
        elif cfg.init_from == "scratch":  # the vocabulary is known once the data is; a lower bound for now
            self._check_fits(scratch_config(cfg, LOWER_BOUND_VOCAB.get(cfg.tokenizer, cfg.vocab_size)))
        self.data_folder, self.meta, self.tokenizer = self._prepare_data()  # before the process group: no timeout
        if state is not None:
            check_same_tokenizer(self.out_dir, state, self.meta["tokenizer"], self.data_folder)
        init_process_group(self.dist, self.device)
        self._build_model(state)
        self._choose_precision(state)
        self.governor = self._thread_governor()
        self.moves_recorded = 0  # governor moves already written to metrics.jsonl
        if self.fsdp:  # before the optimizers, which must hold the sharded parameters
            shard_model(self.model, self.ptdtype)
        self.optimizers = configure_optimizers(self.model, cfg, self.device_type, self.muon_dtype)
        # fp16 gradients underflow on any device: a GradScaler whenever the compute dtype is fp16
        # (under FSDP the sharded one, which agrees across ranks on whether to skip a step)
        scaler_class = sharded_grad_scaler() if self.fsdp else torch.amp.GradScaler
        self.scaler = scaler_class(self.device_type, enabled=self.ptdtype == torch.float16)
        self._build_loaders()
        # init drew from cfg.seed on every rank (identical weights); dropout draws from seed + rank,
        # so each rank's masks differ, as they would across the rows of one big batch
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.iter_num, self.best_val, self.wandb_id, self.tokens_seen = 0, math.inf, None, 0
        state_iter = None
        if state is not None:
            self._restore(state)
            state_iter = self.iter_num
        del state  # drop the checkpoint's tensors (nanoGPT kept them alive for the whole run)
        self._wrap_model()
        self._open_run_folder()
        self.progress = dashboard.Progress(self.iter_num, cfg.max_iters, enabled=self.console)
        # NaN/inf loss, NaN/inf gradient (without a scaler) since the last check; steps the scaler skipped in
        # a row: device tensors, no sync per step
        self.loss_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.grad_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.skips = torch.zeros((), dtype=torch.long, device=self.device)
        self.max_skips = torch.zeros((), dtype=torch.long, device=self.device)
        self.saved_iter = self.iter_num if state_iter is not None else None
        self.last_loss = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.first_iter = self.iter_num
        self._gathered: tuple[int, dict[str, torch.Tensor]] | None = None  # (iter, full model) for this eval's saves
        self.t_log, self.it_log, self.stopped = time.time(), self.iter_num, "done"
        self.results: dict[str, Any] = {"out_dir": str(self.out_dir), "val_loss": None, "train_loss": None,
                                        "tokens_per_sec": None}
        self.model.train()
        if self.console:  # once every check has passed: an error stays one line
            for warning in config_warnings(cfg):
                print(f"warning: {warning}", file=sys.stderr, flush=True)

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
        """The prepared corpus: built by one process, the others wait for it (training/distributed.py)."""
        folder = prepare_data(self.cfg.prepare_options(), self.dist,
                              say=lambda text: print(text, file=sys.stderr, flush=True))
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
            return not any_rank(self.dist, not flag)[0]

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
            if state.get("sharded", False) != self.fsdp:
                raise ValueError(f"it was saved {'with' if state.get('sharded') else 'without'} --fsdp; resume "
                                 f"it the same way")
            load_optimizer_states(self.model, self.optimizers, state["optimizers"], self.fsdp)
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"cannot restore the optimizer from {self.out_dir}: {str(e)[:200]}") from None
        self.train_loader.load_state_dict(state["loader"])
        try:
            rng = rank_rng_state(state, self.dist.rank, self.dist.world_size)
            if rng is not None:
                set_rng_state(rng)
            else:  # resumed with another number of processes: fresh, distinct dropout streams
                torch.manual_seed(self.cfg.seed + self.dist.rank + int(state["iter"]))
            self.iter_num, self.best_val = int(state["iter"]), float(state["best_val_loss"])
            self.wandb_id, self.tokens_seen = state.get("wandb_id"), int(state.get("tokens", 0))
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"cannot restore the RNG state and counters from {self.out_dir / STATE_FILE} "
                                  f"({type(e).__name__}: {str(e)[:100]}); the file is damaged: restore it "
                                  "or start a fresh run") from None
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
        if dist.ddp and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(self.model, **ddp_kwargs(self.device_type, dist.local_rank))
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * dist.world_size
        self.flops_per_iter = self.raw_model.flops_per_token(cfg.block_size) * self.tokens_per_iter
        self.peak = dashboard.device_peak_flops(self.device, cfg.peak_flops)
        self.say(f"model: {cfg.init_from if cfg.init_from not in ('scratch', 'resume') else cfg.model}, "
                 f"{self.raw_model.num_params() / 1e6:.2f}M parameters; device {self.device}, "
                 f"{dtype_name(self.ptdtype)}, compile {self.use_compile}{', FSDP' if self.fsdp else ''}; "
                 f"data {self.data_folder} "
                 f"(vocab {self.meta['vocab_size']})")
        if cfg.fsdp and not self.fsdp:
            self.say("--fsdp: one process has nothing to shard with (start it with torchrun); training unsharded")
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
        """The resolved config and a self-contained tokenizer; metrics and wandb (rank 0 writes everything).

        The first writes of the run: --overwrite's deletion of the old run, temp files of a killed
        run removed, metrics.jsonl cut back to the resumed iteration, the tokenizer (if it changed).
        """
        cfg, meta = self.cfg, self.meta
        self.resolved = {"device": self.device, "dtype": dtype_name(self.ptdtype), "muon_dtype": self.muon_dtype,
                         "compile": self.use_compile, "world_size": self.dist.world_size, "fsdp": self.fsdp,
                         "tokens_per_iter": self.tokens_per_iter, "vocab_size": self.meta["vocab_size"],
                         "model_vocab_size": self.raw_model.config.vocab_size,
                         "n_params": self.raw_model.num_params(), "threads": self.threads_policy, **self.cpu_facts}
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
                      "resolved": self.resolved}
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
            # DDP all-reduces (FSDP reduce-scatters) the gradients only on the last micro-step
            with gradient_sync(model, self.raw_model, self.dist, self.fsdp,
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
        self._track_nonfinite(step_loss)
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

    def _track_nonfinite(self, step_loss: torch.Tensor) -> None:
        """A NaN/inf loss is divergence. A NaN/inf gradient with an fp16 GradScaler is a step the scaler
        skips (and then lowers its scale): normal, unless it happens MAX_SKIPPED_STEPS times in a row."""
        bad_grad = ~torch.isfinite(self.grad_norm)
        self.loss_bad |= ~torch.isfinite(step_loss)
        if self.scaler.is_enabled():
            self.skips = torch.where(bad_grad, self.skips + 1, 0)
            self.max_skips = torch.maximum(self.max_skips, self.skips)
        else:
            self.grad_bad |= bad_grad

    def _check_health(self) -> None:
        """Raise TrainingDiverged if any rank saw a NaN/inf loss or too many skipped steps (one host sync)."""
        flags = torch.stack([self.loss_bad.float(), self.max_skips.float(), self.grad_bad.float()])
        if self.dist.ddp:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        loss_bad, skips, grad_bad = flags.tolist()
        self.max_skips = self.skips.clone()  # the next check looks at runs of skips from here on
        check_divergence(bool(loss_bad), int(skips), self.iter_num, grad_nonfinite=bool(grad_bad))

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
        cfg = self.cfg
        self._check_health()
        mine = estimate_loss(self.raw_model, self.eval_loaders, cfg.eval_iters, self.autocast)
        losses = dict(zip(mine, mean_across_ranks(self.dist, list(mine.values()))))  # {"train": .., "val": ..}
        self.results.update(train_loss=losses["train"], val_loss=losses["val"])
        self.progress.message(f"eval @ iter {self.iter_num}: train loss {losses['train']:.4f}, "
                              f"val loss {losses['val']:.4f}")
        if not math.isfinite(losses["val"]):
            raise TrainingDiverged(f"val loss is {losses['val']} at iteration {self.iter_num}")
        if cfg.eval_only:
            self.stopped = "eval_only"
            return True
        # the same seed on every rank: under FSDP each rank takes part in each forward
        text = sample_text(self.raw_model, self.tokenizer, cfg.sample_tokens, self.device, cfg.seed) \
            if cfg.sample_tokens else ""
        self.results["sample"] = text
        # every rank draws (a forward, as above); not under FSDP, whose sharded weights the layer-by-layer
        # attention_maps pass does not gather
        view = self._attention_view() if cfg.attention_png and not (cfg.fsdp and self.dist.ddp) else None
        on_master(self.dist, "the eval's logging", lambda: self._record_eval(losses, text, view))
        self._checkpoint_after_eval(losses["val"])
        if cfg.target_loss is not None and losses["val"] <= cfg.target_loss:
            self.stopped = "target"
            return True
        self.t_log, self.it_log = time.time(), self.iter_num  # eval time is not training throughput
        return False

    def _record_eval(self, losses: dict[str, float], text: str, view: Any) -> None:
        """An eval's losses, sample and attention picture go to metrics.jsonl, loss.png, attention.png
        and wandb (rank 0)."""
        it = self.iter_num
        now = time.time()
        with writing(self.out_dir):
            self.metrics.write("eval", now, iter=it, train_loss=losses["train"], val_loss=losses["val"])
            if text:
                self.metrics.write("sample", now, iter=it, text=text)
            dashboard.plot_losses(self.out_dir)
            if view is not None:
                write_picture(self.out_dir / ATTENTION_FILE, view)
        if view is not None and self.wb is not None:
            self.wb.log_image("attention", self.out_dir / ATTENTION_FILE, it)
        if self.wb is not None:
            self.wb.log({"train/loss_eval": losses["train"], "val/loss": losses["val"], "tokens": self.tokens_seen},
                        step=it)
            if text:
                self.wb.log_sample(text, it)

    def _attention_view(self) -> Any:
        """Every layer's and head's weights over the val split's first tokens, the same text at every eval,
        so attention.png (and wandb's "attention" image) shows the heads specialising as training goes on."""
        n = min(ATTENTION_PROMPT_TOKENS, self.raw_model.config.block_size)
        ids = read_tokens(self.data_folder / "val.bin")[:n].tolist()
        if len(ids) < 2:
            return None
        return attention_view(self.raw_model, self.tokenizer, ids, len(ids),
                              title=f"{self.out_dir}: attention at iteration {self.iter_num} (val split, first "
                                    f"{len(ids)} tokens)")

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
        self._gathered = None  # a gathered FSDP model is a whole copy in host memory: not kept

    def _full_model(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors on rank 0 (gathered under FSDP: every rank must call this)."""
        if self._gathered is None or self._gathered[0] != self.iter_num:
            self._gathered = (self.iter_num, full_model_state(self.raw_model, self.dist, self.fsdp))
        return self._gathered[1]

    def save_checkpoint(self, val_loss: float | None) -> None:
        """Latest checkpoint: the model export (for sample.py), then train_state.pt (for resume), last:
        the train state is a checkpoint's commit point (see _checkpoint_after_eval).

        Every rank calls it: the state is gathered (each rank's RNG; the shards under FSDP); rank 0 writes.
        """
        cfg, it = self.cfg, self.iter_num
        tensors = self._full_model()
        optimizer_states = full_optimizer_states(self.raw_model, self.optimizers, self.dist, self.fsdp)
        rng_ranks = gather_objects(self.dist, rng_state())

        def write() -> None:
            save_model(self.raw_model, self.out_dir,
                       {**self.extra, "iter": it, "val_loss": val_loss, "best_val_loss": self.best_val}, tensors)
            save_train_state(self.out_dir, train_state(
                self.raw_model, tensors, optimizer_states, self.scaler, rng_ranks, iter=it,
                best_val_loss=self.best_val, dtype=dtype_name(self.ptdtype), resolved=self.resolved, loader=self.train_loader.state_dict(),
                wandb_id=self.wandb_id, tokens=self.tokens_seen, sharded=self.fsdp,
                train_config=dataclasses.asdict(cfg), tokenizer=self.extra["tokenizer"]))

        on_master(self.dist, "saving a checkpoint", write)
        self.saved_iter = it
        self._gathered = None

    def save_best(self, val_loss: float) -> None:
        """best/: the model export at the best val loss (every rank calls it; rank 0 writes)."""
        tensors = self._full_model()

        def write() -> None:
            best = self.out_dir / BEST_DIR
            with writing(best):
                spec = self.tokenizer.save(best)
            save_model(self.raw_model, best, {**self.extra, "tokenizer": spec, "iter": self.iter_num,
                                              "val_loss": val_loss}, tensors)

        on_master(self.dist, "saving the best model", write)

    # ------------------------------------------------------------------ log

    def log_due(self) -> bool:
        return self.iter_num % self.cfg.log_interval == 0 or self.iter_num >= self.cfg.max_iters

    def log(self) -> None:
        """Loss, lr, grad norm, throughput and MFU: the only per-interval device sync; stops on NaN/inf."""
        dist, it = self.dist, self.iter_num
        self._check_health()
        stats = torch.stack([self.last_loss.float(), self.grad_norm.float()])
        if dist.ddp:  # the logged loss is the global batch's mean
            torch.distributed.all_reduce(stats)
            stats /= dist.world_size
        loss_v, gn_v = stats.tolist()
        now = time.time()
        tok_s = flops_s = mfu = None  # an interval holding only the first (compiling) step has no throughput
        if it > self.it_log:
            tok_s = (it - self.it_log) * self.tokens_per_iter / max(now - self.t_log, 1e-9)
            flops_s = tok_s * self.flops_per_iter / self.tokens_per_iter
            mfu = dashboard.mfu(flops_s, self.dist.world_size, self.peak)
            self.results["tokens_per_sec"] = tok_s
        self.t_log, self.it_log = now, it
        if not dist.master:
            return
        lr_now = self.optimizers[0].param_groups[0]["lr"]
        self.progress.log(it, loss_v, lr_now, tok_s, gn_v, 1000 * self.tokens_per_iter / tok_s if tok_s else None, mfu)
        threads = torch.get_num_threads() if self.device_type == "cpu" else None  # the governor's count now
        if self.metrics is not None:
            with writing(self.metrics.path):
                self.metrics.write("log", now, iter=it, loss=loss_v, lr=lr_now, grad_norm=gn_v, tokens_per_sec=tok_s,
                                   mfu=mfu, flops_per_sec=flops_s, tokens=self.tokens_seen, threads=threads)
        if self.wb is not None:
            self.wb.log({"train/loss": loss_v, "lr": lr_now, "grad_norm": gn_v, "tokens_per_sec": tok_s, "mfu": mfu,
                         "flops_per_sec": flops_s, "tokens": self.tokens_seen, "threads": threads}, step=it)

    # ------------------------------------------------------------------ stop

    def stop_requested(self, stop: StopRequest) -> bool:
        """A signal arrived on any rank: every rank agrees on this very step, saves, and ends.

        Checked every step (one flag over gloo, no GPU sync): torchrun SIGKILLs its workers 30 s after
        forwarding a signal, so waiting for the next log step could lose the save. Nothing is saved
        twice (a checkpoint already at this iteration stands), and nothing before the first step of a
        new run: there is no progress to keep.
        """
        it = self.iter_num
        if not any_rank(self.dist, stop.requested is not None)[0]:
            return False
        self._check_health()
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
        self.stopped = "signal"
        return True

    def result(self) -> dict[str, Any]:
        """{"iters", "val_loss", "train_loss", "best_val_loss", "time", "tokens_per_sec", "tokens", "out_dir",
        "stopped", "saved_iter"}, where ``stopped`` is "done", "target", "signal" or "eval_only" and
        ``saved_iter`` the iteration of the run folder's latest checkpoint (None: there is none)."""
        best = self.best_val if math.isfinite(self.best_val) else None
        return {**self.results, "iters": self.iter_num, "best_val_loss": best, "time": time.time() - self.t_start,
                "tokens": self.tokens_seen, "stopped": self.stopped, "saved_iter": self.saved_iter}

    def close(self, failed: bool = False) -> None:
        """End the dashboards and the process group; put the thread count back. Safe after a failed setup.

        ``failed``: leaving on an exception; then no closing barrier, which another rank still inside
        a collective could take for its own (this process exits, and torchrun ends the others).
        """
        if self.progress is not None:
            self.progress.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.wb is not None:
            self.wb.finish()
        if self.dist is not None:
            teardown(self.dist, barrier=not failed)
        torch.set_num_threads(self.threads_before)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(failed=exc_type is not None)
