"""TrainConfig: every option of a training run, typed, with help (shown by ``train.py --help``).

Values resolve as defaults < TOML presets (configs/) < ``--key=value``; a resumed run starts
from the options saved in its run folder. ``__post_init__`` refuses values that make no sense.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.options import DataOptions
from runtime.device import DTYPES
from runtime.errors import UsageError
from runtime.options import opt

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
# architecture switches: None keeps the --model preset's value
ARCH_SWITCHES = ("n_kv_head", "bias", "pos_emb", "norm", "qk_norm", "activation", "tie_embeddings",
                 "logit_softcap", "zero_init")
ARCH_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size") + ARCH_SWITCHES


@dataclass
class TrainConfig(DataOptions):
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
    # data (the corpus options are DataOptions', shared with data/prepare.py: listed first in --help)
    data_mode: str = opt("random", "random windows (nanoGPT) or sequential (each window once per epoch)",
                         choices=("random", "sequential"))
    # model
    model: str = opt("modern", "architecture preset: classic (GPT-2) or modern (rotary, RMSNorm, QK-norm, ReLU², ...)",
                     choices=("classic", "modern"))
    n_layer: int = opt(4, "transformer blocks")
    n_head: int = opt(4, "attention heads")
    n_embd: int = opt(128, "embedding width")
    block_size: int = opt(128, "context length in tokens")
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
    batch_size: int = opt(16, "sequences per micro-batch per process")
    gradient_accumulation_steps: int = opt(1, "micro-batches per optimizer step, per process")
    max_iters: int = opt(1200, "optimizer steps in total")
    optimizer: str = opt("muon", "adamw, or muon (Muon for the blocks' 2-D matrices, AdamW for the rest)",
                         choices=OPTIMIZERS)
    learning_rate: float = opt(1e-2, "AdamW peak learning rate")
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
    dtype: str = opt("auto", "auto (cuda: bfloat16, else float16; mps: float32; cpu: float32 unless a start-up probe "
                             "measures bf16 matmuls faster on this CPU and then bf16 autocast faster for this model "
                             "and batch), float32, bfloat16, float16. Muon's dtype follows the same probe",
                     choices=DTYPES)
    compile: str = opt("auto", "torch.compile the model: auto (on for CUDA, off for CPU), true, false")
    seed: int = opt(1337, "seed for init, dropout and data order")
    threads: int = opt(0, "CPU threads for torch ops; 0 = auto: start with torch's default (one per core, or "
                          "$OMP_NUM_THREADS) and let a governor time the steps and move to fewer threads while "
                          "other processes load the machine (and back); N = exactly N, fixed")
    peak_flops: float | None = opt(None, "device peak FLOP/s for MFU; none = GPU table (no MFU on CPU)")
    target_loss: float | None = opt(None, "stop as soon as an eval's val loss is at or below this")
    # logging
    wandb_log: bool = opt(False, "log to Weights & Biases")
    wandb_project: str = opt("quillgpt", "wandb project")
    wandb_run_name: str | None = opt(None, "wandb run name; none = wandb's")
    wandb_mode: str = opt("online", "online (falls back to offline without credentials), offline, disabled",
                          choices=("online", "offline", "disabled"))

    def __post_init__(self) -> None:
        super().__post_init__()
        c = str(self.compile).strip().lower()
        self.compile = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(c, c)
        if self.compile not in ("auto", "true", "false"):
            raise UsageError(f"--compile: expected auto, true or false, got {self.compile!r}")
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "gradient_accumulation_steps",
                     "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_iters < 0 or self.warmup_iters < 0 or self.sample_tokens < 0 or self.threads < 0:
            raise UsageError("--max_iters, --warmup_iters, --sample_tokens and --threads must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.cooldown_frac <= 1.0:
            raise UsageError(f"--cooldown_frac must be in (0, 1], got {self.cooldown_frac}")


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Options that are valid but probably not what was meant (train.py prints them on stderr)."""
    warnings = []
    if cfg.decay_lr and cfg.max_iters > 0 and cfg.warmup_iters >= cfg.max_iters:
        peak = cfg.max_iters / (cfg.warmup_iters + 1)
        warnings.append(f"--warmup_iters={cfg.warmup_iters} >= --max_iters={cfg.max_iters}: the whole run is warmup "
                        f"and the learning rate only reaches {peak:.0%} of its peak; lower --warmup_iters")
    return warnings
