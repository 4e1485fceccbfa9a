"""Train a GPT on a text corpus: one process, or many under torchrun.

    python train.py                                    # ~5 min on a laptop CPU: Shakespeare, characters
    python train.py configs/shakespeare_char.toml      # nanoGPT's GPU recipe
    python train.py --init_from=resume --out_dir=out   # continue a run exactly where it stopped
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.toml

Several machines (run on each node; node 0's address as master, same port everywhere):

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \
        train.py configs/gpt2_124m.toml       # node 1: --node_rank=1; without InfiniBand: NCCL_IB_DISABLE=1

Each process reads its own rows of every global batch; only rank 0 logs and writes the run
folder (--out_dir is on rank 0's machine: resume there, or use a shared filesystem).
The global batch is batch_size x gradient_accumulation_steps x processes (printed at start).

Read top-down: TrainConfig (every option, shown by --help), then the pieces of a run
(device, model, optimizer, schedule, evaluation, checkpoint), then ``train(cfg)``, the loop,
and ``main``. Dashboards live in train_log.py, checkpoint state in train_state.py.

A run folder (``out_dir``) holds:
    model.safetensors, config.json   the latest model (config.json: model + train config + tokenizer)
    <tokenizer file>                  so the folder is self-contained for sample.py
    train_state.pt                    everything a resume needs (weights, optimizer, RNG, data position)
    best/                             model.safetensors + config.json + tokenizer at the best val loss
    metrics.jsonl, loss.png           one JSON line per log/eval event; the loss curves
    wandb/                            only with --wandb_log
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from devices import resolve_device
from options import UsageError, opt, parse, run_main

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
# architecture switches: None keeps the --model preset's value
ARCH_SWITCHES = ("n_kv_head", "bias", "pos_emb", "norm", "qk_norm", "activation", "tie_embeddings",
                 "logit_softcap", "zero_init")
ARCH_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size") + ARCH_SWITCHES


@dataclass
class TrainConfig:
    """Every option of a training run. The defaults are the ~5-minute CPU run (`python train.py`)."""

    # I/O
    out_dir: str = opt("out", "run folder: checkpoints, metrics.jsonl, loss.png (and wandb/)")
    init_from: str = opt("scratch", "scratch | resume (continue out_dir exactly) | gpt2 | gpt2-medium | gpt2-large "
                                    "| gpt2-xl | a local Hugging Face GPT-2 or quillgpt run folder")
    eval_interval: int = opt(250, "evaluate (and maybe checkpoint) every this many iterations, and at the end")
    eval_iters: int = opt(20, "batches per split when estimating train/val loss")
    eval_batch_size: int | None = opt(None, "batch size for evaluation; none = batch_size")
    eval_only: bool = opt(False, "evaluate the initial (resumed or pretrained) model once and exit")
    log_interval: int = opt(10, "log train loss, lr, grad norm, tokens/s every this many iterations")
    always_save_checkpoint: bool = opt(True, "save the latest checkpoint at every eval, not only when val improves")
    keep_best: bool = opt(True, "keep the best-val-loss model in out_dir/best/")
    sample_tokens: int = opt(200, "tokens of text generated at each eval (logged, and printed at the end); 0 = none")
    # data
    dataset: str = opt("shakespeare", "corpus: shakespeare, tinyshakespeare, a hub id (owner/name), or a name for --input")
    input: str | None = opt(None, "local text for the corpus: a file, folder or glob (see data/prepare.py)")
    tokenizer: str = opt("char", "char | bpe (trained on the corpus) | gpt2", choices=("char", "bpe", "gpt2"))
    vocab_size: int = opt(4096, "bpe only: vocabulary size to train")
    data_dir: str = opt("data", "prepared token files go to <data_dir>/<dataset>/<tokenizer>")
    hf_config: str | None = opt(None, "hub datasets: the configuration, e.g. sample-10BT for HuggingFaceFW/fineweb-edu")
    max_tokens: int | None = opt(None, "prepare at most this many tokens (train + val); none = the whole corpus")
    data_mode: str = opt("random", "random windows (nanoGPT) or sequential (each window once per epoch)",
                         choices=("random", "sequential"))
    # model
    model: str = opt("modern", "architecture preset: classic (GPT-2) or modern (rotary, RMSNorm, QK-norm, ReLU², ...)",
                     choices=("classic", "modern"))
    n_layer: int = opt(4, "transformer blocks")
    n_head: int = opt(4, "attention heads")
    n_embd: int = opt(128, "embedding width")
    block_size: int = opt(64, "context length in tokens")
    dropout: float = opt(0.0, "dropout probability (0 for pretraining, 0.1-0.2 for small data)")
    n_kv_head: int | None = opt(None, "key/value heads (grouped-query attention); none = n_head")
    bias: bool | None = opt(None, "biases in Linear and LayerNorm; none = preset's")
    pos_emb: str | None = opt(None, "learned or rope; none = preset's", choices=("learned", "rope"))
    norm: str | None = opt(None, "layernorm or rmsnorm; none = preset's", choices=("layernorm", "rmsnorm"))
    qk_norm: bool | None = opt(None, "normalise queries and keys per head; none = preset's")
    activation: str | None = opt(None, "gelu_tanh, gelu or relu2; none = preset's", choices=("gelu_tanh", "gelu", "relu2"))
    tie_embeddings: bool | None = opt(None, "share the input embedding with the output head; none = preset's")
    logit_softcap: float | None = opt(None, "logits = c*tanh(logits/c); 0 = off; none = preset's")
    zero_init: bool | None = opt(None, "zero-init residual projections and the untied head; none = preset's")
    # optimization
    batch_size: int = opt(32, "sequences per micro-batch per process")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step, per process")
    max_iters: int = opt(1500, "optimizer steps in total")
    optimizer: str = opt("muon", "adamw, or muon (Muon for the blocks' 2-D matrices, AdamW for the rest)",
                         choices=OPTIMIZERS)
    learning_rate: float = opt(2e-3, "AdamW peak learning rate")
    weight_decay: float = opt(0.1, "decoupled weight decay on 2-D parameters (matrices and embeddings)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 = no clipping")
    muon_lr: float = opt(0.02, "Muon peak learning rate (scaled by the same schedule)")
    muon_momentum: float = opt(0.95, "Muon momentum")
    # learning-rate schedule
    decay_lr: bool = opt(True, "use the schedule below; off = constant learning_rate")
    lr_schedule: str = opt("cosine", "cosine: warmup then cosine to min_lr; wsd: warmup, stable, linear cooldown",
                           choices=SCHEDULES)
    warmup_iters: int = opt(100, "linear warmup steps")
    lr_decay_iters: int | None = opt(None, "the schedule ends here (then min_lr); none = max_iters")
    min_lr: float | None = opt(None, "final learning rate; none = learning_rate / 10")
    cooldown_frac: float = opt(0.3, "wsd only: share of lr_decay_iters spent decaying to min_lr")
    # system
    device: str = opt("auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps")
    dtype: str = opt("auto", "auto (cuda: bfloat16, else float16; cpu: bfloat16 autocast if a 1-second probe "
                             "measures it faster for this model and batch, else float32), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    compile: str = opt("auto", "torch.compile the model: auto (on for CUDA, off for CPU), true, false")
    seed: int = opt(1337, "seed for init, dropout and data order")
    threads: int = opt(0, "CPU threads for torch ops; 0 = torch's default (one per core). On a busy machine, "
                          "1 is often several times faster for small models (threads spin-wait on each other)")
    peak_flops: float | None = opt(None, "device peak FLOP/s for MFU; none = GPU table (no MFU on CPU)")
    target_loss: float | None = opt(None, "stop as soon as an eval's val loss is at or below this")
    # logging
    wandb_log: bool = opt(False, "log to Weights & Biases")
    wandb_project: str = opt("quillgpt", "wandb project")
    wandb_run_name: str | None = opt(None, "wandb run name; none = wandb's")
    wandb_mode: str = opt("online", "online (falls back to offline without credentials), offline, disabled",
                          choices=("online", "offline", "disabled"))

    def __post_init__(self) -> None:
        c = str(self.compile).strip().lower()
        self.compile = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(c, c)
        if self.compile not in ("auto", "true", "false"):
            raise UsageError(f"--compile: expected auto, true or false, got {self.compile!r}")
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "gradient_accumulation_steps",
                     "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.sample_tokens < 0:
            raise UsageError("--max_iters, --warmup_iters and --sample_tokens must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.cooldown_frac <= 1.0:
            raise UsageError(f"--cooldown_frac must be in (0, 1], got {self.cooldown_frac}")


# ---------------------------------------------------------------------------- device and precision


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    """auto -> bf16 on CUDA if supported, else fp16 (with a GradScaler); fp32 on CPU/MPS.

    On CPU, ``auto`` starts as fp32; train() then switches to bf16 autocast only where
    ``cpu_bf16_pays`` measures it faster for this model and batch (see there).
    """
    if name == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cpu_bf16_pays(model: torch.nn.Module, batch_size: int, block_size: int, trials: int = 4) -> bool:
    """Time forward+backward of a throwaway copy of ``model`` in fp32 and in bf16 autocast.

    bf16 pays on CPUs with AVX-512 BF16 or AMX once the matmuls are big enough; at nanoGPT's
    batch 12 x 64 it measured ~10% slower, at batch 32 ~25% faster (README speedrun table),
    so the choice is measured per run rather than guessed. The probe runs under fork_rng,
    so the training RNG stream (and with it exact resume) is untouched.
    """
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    probe = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        x = torch.randint(0, probe.config.vocab_size, (batch_size, block_size))

        def best_time(ctx: Any) -> float:
            times = []
            for _ in range(trials):
                t = time.perf_counter()
                with ctx:
                    _, loss = probe(x, x)
                loss.backward()
                times.append(time.perf_counter() - t)
            probe.zero_grad(set_to_none=True)
            return min(times[1:])  # the first call pays one-off allocation and kernel selection

        fp32 = best_time(nullcontext())
        bf16 = best_time(torch.autocast("cpu", dtype=torch.bfloat16))
    return bf16 < 0.95 * fp32


# ---------------------------------------------------------------------------- model, optimizer, schedule


def model_config(cfg: TrainConfig, vocab_size: int):
    """The GPTConfig for a from-scratch model: the preset, then every switch the user set."""
    from model import GPTConfig

    switches = {k: getattr(cfg, k) for k in ARCH_SWITCHES if getattr(cfg, k) is not None}
    if switches.get("logit_softcap") == 0:
        switches["logit_softcap"] = None
    try:
        return GPTConfig.preset(cfg.model, block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                                n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, **switches)
    except ValueError as e:
        raise UsageError(str(e).replace("GPTConfig.", "--")) from None


def configure_optimizers(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """AdamW (decay on 2-D params, none on biases/norms), or Muon for the blocks' matrices + AdamW for the rest.

    Embeddings and the head are 2-D but are not hidden matrices: Muon's orthogonalised update
    is meant for linear maps between hidden states, so they stay with AdamW (as in modded-nanogpt).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in params if cfg.optimizer == "muon" and p.dim() == 2 and ".h." in f".{n}"]
    muon_ids = {id(p) for p in muon}
    rest = [(n, p) for n, p in params if id(p) not in muon_ids]
    groups = [{"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # the fused kernel exists for CUDA and CPU; on CPU it measured 0.3 ms/step vs 1.8 ms for torch's
    # default per-tensor loop at nanoGPT's CPU shape (nanoGPT fuses on CUDA only)
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)]
    for g in optimizers[0].param_groups:
        g["base_lr"] = cfg.learning_rate
    if muon:
        m = torch.optim.Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum)
        for g in m.param_groups:
            g["base_lr"] = cfg.muon_lr
        optimizers.append(m)
    return optimizers


def lr_multiplier(it: int, cfg: TrainConfig) -> float:
    """The schedule as a factor of the peak lr at step ``it`` (0-based); never 0 on step 0.

    cosine: linear warmup, cosine from 1 down to min_lr/learning_rate at lr_decay_iters, flat after.
    wsd: linear warmup, flat, then a linear cooldown over the last cooldown_frac of lr_decay_iters.
    """
    if not cfg.decay_lr:
        return 1.0
    floor = (cfg.min_lr if cfg.min_lr is not None else cfg.learning_rate / 10) / cfg.learning_rate
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return floor
    if cfg.lr_schedule == "wsd":
        cooldown_start = decay_iters * (1 - cfg.cooldown_frac)
        if it < cooldown_start:
            return 1.0
        frac = (it - cooldown_start) / max(1.0, decay_iters - cooldown_start)
        return 1.0 - frac * (1.0 - floor)
    frac = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * frac)) * (1.0 - floor)


# ---------------------------------------------------------------------------- evaluation and samples


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, loaders: dict[str, Any], eval_iters: int, autocast: Any) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches per split; the loaders are fresh and seeded, so every
    eval sees the same batches and nothing touches the training RNG or data stream."""
    was_training = model.training
    model.eval()
    out = {}
    for split, make_loader in loaders.items():
        loader = make_loader()
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            x, y = loader.next_batch()
            with autocast:
                _, loss = model(x, y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    model.train(was_training)
    return out


def sample_text(model: Any, tokenizer: Any, n_tokens: int, device: str, seed: int) -> str:
    """A short sample from a fixed prompt and seed (its own generator: training RNG untouched)."""
    prompt = [tokenizer.eot] if tokenizer.eot is not None else (tokenizer.encode("\n") or [0])
    was_training = model.training
    model.eval()
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    out = model.generate(idx, n_tokens, temperature=0.8, top_k=200, seed=seed)
    model.train(was_training)
    return tokenizer.decode(out[0, len(prompt):].tolist())


# ---------------------------------------------------------------------------- run control


class StopRequest:
    """SIGINT/SIGTERM -> finish the current step, save and exit; a second signal aborts at once.

    Installed for the duration of a run only (``with StopRequest() as stop:``), then the
    previous handlers come back. Outside the main thread signals cannot be caught: no-op.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # second signal: stop now, no checkpoint
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this step and saving (again to abort at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was left as it was."""


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) if RANK is set."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return Dist()
    import torch.distributed as tdist

    d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return d


def any_rank(dist: Dist, device: str, *flags: bool) -> list[bool]:
    """OR each flag across ranks so every process takes the same branch (no hang)."""
    if not dist.ddp:
        return list(flags)
    import torch.distributed as tdist

    t = torch.tensor([float(f) for f in flags], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def resume_command(cfg: TrainConfig) -> str:
    return f"python train.py --init_from=resume --out_dir={cfg.out_dir}"


# ---------------------------------------------------------------------------- training


def train(cfg: TrainConfig, log_to_console: bool = True) -> dict[str, Any]:
    """Run the training described by ``cfg``; returns final metrics.

    Returns {"iters", "val_loss", "train_loss", "best_val_loss", "time", "tokens_per_sec",
    "tokens", "out_dir", "stopped"}, where ``stopped`` is "done", "target", "signal" or "eval_only".
    Raises UsageError for bad input and TrainingDiverged for a NaN/inf loss.
    """
    t_start = time.time()
    threads_before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # process-wide, so put back when the run ends
    try:
        return _train(cfg, log_to_console, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, log_to_console: bool, t_start: float) -> dict[str, Any]:
    """train() itself: set up, then the loop (eval + checkpoint, step, log) until done or stopped."""
    from data.loader import BatchLoader
    from data.prepare import PrepareOptions, ensure_prepared, load_meta
    from data.tokenizer import load_tokenizer
    from model import GPT
    from model.weights import CheckpointError, save_model
    import train_log
    import train_state

    dist = setup_distributed(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    device = resolve_device(cfg.device, dist.local_rank)
    device_type = device.split(":")[0]
    if device_type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = resolve_dtype(cfg.dtype, device_type)
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    use_compile = cfg.compile == "true" or (cfg.compile == "auto" and device_type == "cuda")
    out_dir = Path(cfg.out_dir)
    say = print if (dist.master and log_to_console) else (lambda *a, **k: None)

    # ---- data: rank 0 prepares the corpus, then each other node's first process (a no-op if
    # data_dir is shared), then everyone else reads it: never two builders of one folder at once
    prep = PrepareOptions(dataset=cfg.dataset, input=cfg.input, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                          data_dir=cfg.data_dir, hf_config=cfg.hf_config, max_tokens=cfg.max_tokens)
    turns = [dist.master, dist.local_rank == 0 and not dist.master, dist.local_rank != 0] if dist.ddp else [True]
    for my_turn in turns:
        if my_turn:
            data_folder = ensure_prepared(prep)
        if dist.ddp:
            torch.distributed.barrier()
    meta = load_meta(data_folder)
    tokenizer = load_tokenizer(meta["tokenizer"], data_folder)

    # ---- model: from scratch, from a checkpoint in out_dir, or from pretrained weights
    state: dict[str, Any] | None = None
    if cfg.init_from == "resume":
        state = train_state.load_state(out_dir)
        saved = state.get("train_config", {})
        changed = [k for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            raise UsageError(f"cannot resume {out_dir} with a different architecture: "
                             + ", ".join(f"--{k}={getattr(cfg, k)} (checkpoint: {saved[k]})" for k in changed)
                             + "; drop those options or start a new --out_dir")
        from model import GPTConfig

        try:
            mcfg = GPTConfig.from_dict({**state["model_config"], "dropout": cfg.dropout})
        except (TypeError, ValueError) as e:
            raise UsageError(f"{out_dir / train_state.STATE_FILE}: bad model config ({e})") from None
        model = GPT(mcfg)
        train_state.load_model_state(model, state["model"], out_dir / train_state.STATE_FILE)
    elif cfg.init_from == "scratch":
        torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        model = GPT(model_config(cfg, meta["vocab_size"]))
    else:
        try:
            model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
    mcfg = model.config
    if cfg.block_size > mcfg.block_size:
        raise UsageError(f"--block_size={cfg.block_size} exceeds the model's context ({mcfg.block_size})")
    if meta["vocab_size"] > mcfg.vocab_size:
        raise UsageError(f"the data's vocabulary ({meta['vocab_size']}, tokenizer {cfg.tokenizer}) is larger than the "
                         f"model's ({mcfg.vocab_size}); use the tokenizer the model was trained with")
    model.to(device)
    if cfg.dtype == "auto" and device_type == "cpu":
        if state is not None and state.get("dtype"):  # a resumed run keeps its precision, for exactness
            bf16 = state["dtype"] == "bfloat16"
        else:  # measured on every rank; bf16 only if all ranks found it faster
            bf16 = not any_rank(dist, device, not cpu_bf16_pays(model, cfg.batch_size, cfg.block_size))[0]
        if bf16:
            ptdtype = torch.bfloat16
            autocast = torch.autocast(device_type, dtype=ptdtype)
    optimizers = configure_optimizers(model, cfg, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(ptdtype == torch.float16 and device_type == "cuda"))

    # ---- data loaders: training stream (resumable), and fresh fixed-seed loaders for eval
    train_loader = BatchLoader(data_folder / "train.bin", cfg.block_size, cfg.batch_size, mode=cfg.data_mode,
                               seed=cfg.seed, rank=dist.rank, world_size=dist.world_size, device=device)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    eval_loaders = {split: (lambda s=split: BatchLoader(data_folder / f"{s}.bin", cfg.block_size, eval_bs,
                                                         seed=cfg.seed + 1, device=device))
                    for split in ("train", "val")}

    iter_num, best_val, wandb_id, tokens_seen = 0, math.inf, None, 0
    if state is not None:  # restore everything the next step depends on
        try:
            if len(state["optimizers"]) != len(optimizers):
                raise ValueError("a different --optimizer than the checkpoint's")
            for o, sd in zip(optimizers, state["optimizers"]):
                o.load_state_dict(sd)
            if state.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UsageError(f"cannot restore the optimizer from {out_dir}: {e}") from None
        train_loader.load_state_dict(state["loader"])
        train_state.set_rng_state(state["rng"])
        iter_num, best_val = int(state["iter"]), float(state["best_val_loss"])
        wandb_id, tokens_seen = state.get("wandb_id"), int(state.get("tokens", 0))
        for o in optimizers:  # the schedule sets lr from base_lr; a resumed run may change the peak
            for g in o.param_groups:
                g["base_lr"] = cfg.muon_lr if isinstance(o, torch.optim.Muon) else cfg.learning_rate
    del state  # drop the checkpoint's tensors (nanoGPT kept them alive for the whole run)

    raw_model = model
    if use_compile:
        say("compiling the model (torch.compile)...")
        model = torch.compile(model)
    if dist.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist.local_rank] if device_type == "cuda" else None)

    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps * dist.world_size
    flops_per_iter = raw_model.flops_per_token(cfg.block_size) * tokens_per_iter
    peak = train_log.device_peak_flops(device, cfg.peak_flops)
    say(f"model: {cfg.init_from if cfg.init_from not in ('scratch', 'resume') else cfg.model}, "
        f"{raw_model.num_params() / 1e6:.2f}M parameters; device {device}, {str(ptdtype).replace('torch.', '')}, "
        f"compile {use_compile}; data {data_folder} (vocab {meta['vocab_size']})")
    say(f"global batch: {cfg.batch_size} x {cfg.gradient_accumulation_steps} accum x {dist.world_size} processes "
        f"x {cfg.block_size} tokens = {tokens_per_iter:,} tokens/iter")

    # ---- run folder: the resolved config and a self-contained tokenizer (rank 0 writes everything)
    extra: dict[str, Any] = {}
    metrics = wb = None
    if dist.master and not cfg.eval_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        extra = {"train": dataclasses.asdict(cfg), "tokenizer": tokenizer.save(out_dir),
                 "data": {k: meta.get(k) for k in ("dataset", "source", "split", "vocab_size", "train_tokens",
                                                   "val_tokens")},
                 "resolved": {"device": device, "dtype": str(ptdtype).replace("torch.", ""), "compile": use_compile,
                              "world_size": dist.world_size, "tokens_per_iter": tokens_per_iter}}
        metrics = train_log.MetricsLog(out_dir, t_start)
        if cfg.wandb_log and cfg.wandb_mode != "disabled":
            wb = train_log.WandbLogger(cfg.wandb_project, cfg.wandb_run_name, cfg.wandb_mode, out_dir,
                                       dataclasses.asdict(cfg), wandb_id)
            wandb_id = wb.run_id

    def save_checkpoint(it: int, val_loss: float | None) -> None:
        """Latest checkpoint: train_state.pt (for resume) then the model export (for sample.py)."""
        train_state.save_state(out_dir, raw_model, optimizers, scaler, iter=it, best_val_loss=best_val,
                               dtype=str(ptdtype).replace("torch.", ""),
                               loader=train_loader.state_dict(), wandb_id=wandb_id, tokens=tokens_seen,
                               train_config=dataclasses.asdict(cfg))
        save_model(raw_model, out_dir, {**extra, "iter": it, "val_loss": val_loss, "best_val_loss": best_val})

    def save_best(it: int, val_loss: float) -> None:
        best = out_dir / "best"
        spec = tokenizer.save(best)
        save_model(raw_model, best, {**extra, "tokenizer": spec, "iter": it, "val_loss": val_loss})

    result: dict[str, Any] = {"out_dir": str(out_dir), "val_loss": None, "train_loss": None, "tokens_per_sec": None}
    progress = train_log.Progress(iter_num, cfg.max_iters, enabled=dist.master and log_to_console)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # any NaN/inf since the last check, no sync
    last_loss = torch.zeros((), device=device)
    t_log, it_log, stopped = time.time(), iter_num, "done"
    first_iter = iter_num
    model.train()

    with StopRequest() as stop:
        try:
            while True:
                # ---- evaluate (and checkpoint) every eval_interval steps and at the end
                is_eval = (iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters) and \
                    (iter_num != first_iter or cfg.init_from != "resume" or cfg.eval_only)
                if is_eval:
                    diverged = any_rank(dist, device, bool(nonfinite))[0]
                    if diverged:
                        raise TrainingDiverged(f"loss became NaN/inf before iteration {iter_num}")
                    reached = False
                    if dist.master:
                        losses = estimate_loss(raw_model, eval_loaders, cfg.eval_iters, autocast)
                        result.update(train_loss=losses["train"], val_loss=losses["val"])
                        progress.message(f"eval @ iter {iter_num}: train loss {losses['train']:.4f}, "
                                         f"val loss {losses['val']:.4f}")
                        if not math.isfinite(losses["val"]):
                            raise TrainingDiverged(f"val loss is {losses['val']} at iteration {iter_num}")
                    if dist.master and not cfg.eval_only:
                        text = sample_text(raw_model, tokenizer, cfg.sample_tokens, device, cfg.seed) \
                            if cfg.sample_tokens else ""
                        result["sample"] = text
                        now = time.time()
                        metrics.write("eval", now, iter=iter_num, train_loss=losses["train"], val_loss=losses["val"])
                        if text:
                            metrics.write("sample", now, iter=iter_num, text=text)
                        train_log.plot_losses(out_dir)
                        if wb is not None:
                            wb.log({"train/loss_eval": losses["train"], "val/loss": losses["val"],
                                    "tokens": tokens_seen}, step=iter_num)
                            if text:
                                wb.log_sample(text, iter_num)
                        improved = losses["val"] < best_val
                        best_val = min(best_val, losses["val"])
                        if iter_num > first_iter or cfg.init_from != "scratch":
                            if improved and cfg.keep_best:
                                save_best(iter_num, losses["val"])
                            if improved or cfg.always_save_checkpoint or iter_num >= cfg.max_iters:
                                save_checkpoint(iter_num, losses["val"])
                        reached = cfg.target_loss is not None and losses["val"] <= cfg.target_loss
                    if cfg.eval_only:
                        stopped = "eval_only"
                        break
                    if any_rank(dist, device, reached)[0]:
                        stopped = "target"
                        break
                    t_log, it_log = time.time(), iter_num  # eval time is not training throughput
                if iter_num >= cfg.max_iters:
                    break

                # ---- one optimizer step: accumulate gradients over micro-batches
                mult = lr_multiplier(iter_num, cfg)
                for o in optimizers:
                    for g in o.param_groups:
                        g["lr"] = g["base_lr"] * mult
                step_loss = torch.zeros((), device=device)
                for micro in range(cfg.gradient_accumulation_steps):
                    x, y = train_loader.next_batch()
                    last_micro = micro == cfg.gradient_accumulation_steps - 1
                    # DDP: all-reduce gradients only on the last micro-step
                    sync = nullcontext() if (not dist.ddp or last_micro) else model.no_sync()
                    with sync:
                        with autocast:
                            _, loss = model(x, y)
                            loss = loss / cfg.gradient_accumulation_steps  # the sum over micro-steps is the mean
                        scaler.scale(loss).backward()
                    step_loss += loss.detach()
                if scaler.is_enabled():
                    scaler.unscale_(optimizers[0])
                    for o in optimizers[1:]:
                        scaler.unscale_(o)
                # clip_grad_norm_ returns the pre-clip norm; with no clipping, measure it all the same
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                nonfinite |= ~torch.isfinite(step_loss) | ~torch.isfinite(grad_norm)
                for o in optimizers:
                    scaler.step(o)
                scaler.update()
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                iter_num += 1
                tokens_seen += tokens_per_iter
                last_loss = step_loss
                progress.step(iter_num)

                # ---- log (the only per-interval device sync), and check for NaN and stop signals
                if iter_num % cfg.log_interval == 0 or iter_num >= cfg.max_iters:
                    stats = torch.stack([last_loss.float(), grad_norm.float(), nonfinite.float()])
                    if dist.ddp:  # the logged loss is the global batch's mean
                        torch.distributed.all_reduce(stats)
                        stats[:2] /= dist.world_size
                    loss_v, gn_v, bad = stats.tolist()
                    if bad or not math.isfinite(loss_v):
                        raise TrainingDiverged(f"loss became {loss_v} at iteration {iter_num}")
                    now = time.time()
                    tok_s = (iter_num - it_log) * tokens_per_iter / max(now - t_log, 1e-9)
                    flops_s = tok_s * flops_per_iter / tokens_per_iter
                    mfu = flops_s / peak if peak else None
                    t_log, it_log = now, iter_num
                    result["tokens_per_sec"] = tok_s
                    if dist.master:
                        lr_now = optimizers[0].param_groups[0]["lr"]
                        progress.log(iter_num, loss_v, lr_now, tok_s, gn_v, 1000 * tokens_per_iter / tok_s, mfu)
                        if metrics is not None:
                            metrics.write("log", now, iter=iter_num, loss=loss_v, lr=lr_now, grad_norm=gn_v,
                                          tokens_per_sec=tok_s, mfu=mfu, flops_per_sec=flops_s, tokens=tokens_seen)
                        if wb is not None:
                            wb.log({"train/loss": loss_v, "lr": lr_now, "grad_norm": gn_v, "tokens_per_sec": tok_s,
                                    "mfu": mfu, "flops_per_sec": flops_s, "tokens": tokens_seen}, step=iter_num)
                # a signal: every rank must agree on the step to stop at (DDP checks at log steps only)
                check_now = not dist.ddp or iter_num % cfg.log_interval == 0
                if check_now and any_rank(dist, device, stop.requested is not None)[0]:
                    if any_rank(dist, device, bool(nonfinite))[0]:
                        raise TrainingDiverged(f"loss became NaN/inf before iteration {iter_num}")
                    if dist.master:
                        save_checkpoint(iter_num, None)
                        progress.message(f"stopped at iteration {iter_num} ({stop.requested or 'signal'}); "
                                         f"checkpoint saved in {out_dir}. Resume with: {resume_command(cfg)}")
                    stopped = "signal"
                    break
        finally:
            progress.close()
            if metrics is not None:
                metrics.close()
            if wb is not None:
                wb.finish()
            if dist.ddp:
                # a barrier first: a rank that tears gloo down while another is still finishing its
                # last save can abort the slower one ("terminate called without an active exception")
                with contextlib.suppress(RuntimeError):
                    torch.distributed.barrier()
                torch.distributed.destroy_process_group()

    result.update(iters=iter_num, best_val_loss=best_val if math.isfinite(best_val) else None,
                  time=time.time() - t_start, tokens=tokens_seen, stopped=stopped)
    return result


# ---------------------------------------------------------------------------- command line


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line; a resume starts from the run's saved options (then files, then CLI)."""
    cfg = parse(TrainConfig, argv, prog="train.py", description=__doc__.split("\n\n")[0])
    if cfg.init_from == "resume":
        from model.weights import read_config, CheckpointError

        try:
            saved = read_config(cfg.out_dir).get("train", {})
        except CheckpointError:
            saved = {}  # train() reports the missing/corrupt checkpoint precisely
        base = {k: v for k, v in saved.items() if k not in ("init_from", "eval_only")}
        cfg = parse(TrainConfig, argv, prog="train.py", base_values=base)
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}. The last good checkpoint in {cfg.out_dir} was kept; "
              "try a lower --learning_rate or --grad_clip, or a smaller model.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("aborted (second signal): nothing saved since the last checkpoint", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result["stopped"] == "eval_only":
        print(f"eval: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}")
        return 0
    if result["stopped"] == "signal":
        return 0
    if result.get("sample"):
        print(f"\n--- sample at iteration {result['iters']} ---\n{result['sample']}\n---")
    where = Path(cfg.out_dir)
    best = f" (best val loss {result['best_val_loss']:.4f} in {where / 'best'})" if result["best_val_loss"] else ""
    print(f"done: {result['iters']} iterations in {result['time']:.0f} s; checkpoint in {where}{best}")
    print(f"write text with: python sample.py --out_dir={where} --temperature 0.8")
    return 0


if __name__ == "__main__":
    run_main(main)
