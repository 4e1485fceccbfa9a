"""TrainConfig: every option of a training run, typed, with help (shown by ``train.py --help``).

Values resolve as defaults < TOML presets (configs/) < ``--key=value``; a resumed run starts
from the options saved in its run folder. ``__post_init__`` refuses values that make no sense.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data.options import DataOptions
from runtime.device import DEVICE_NAMES, DTYPES, check_device_name
from runtime.errors import CheckpointError, ConfigError, DeviceError, UsageError
from runtime.options import check_seed, coerce, opt
from training.trackers import check_installed, parse_report_to, requested

if TYPE_CHECKING:
    from data.prepare import PrepareOptions
    from model.config import GPTConfig

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")
# architecture switches: None keeps the --model preset's value
ARCH_SWITCHES = ("n_kv_head", "bias", "pos_emb", "norm", "qk_norm", "activation", "tie_embeddings",
                 "logit_softcap", "zero_init")
ARCH_FIELDS = ("model", "n_layer", "n_head", "n_embd", "block_size") + ARCH_SWITCHES
NOT_RESUMED = ("init_from", "eval_only", "overwrite")  # saved options a resume never takes over


@dataclass
class TrainConfig(DataOptions):
    """Every option of a training run. The defaults are the ~5-minute CPU run (`python train.py`)."""

    # I/O
    out_dir: str = opt("out", "run folder: checkpoints, metrics.jsonl, loss.png (and wandb/)")
    overwrite: bool = opt(False, "start a new run in an out_dir that already holds one, deleting that run's "
                                 "checkpoints, best/, train_state.pt, metrics.jsonl and loss.png first; "
                                 "without it a new run refuses such a folder")
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
    attention_png: bool = opt(True, "at each eval, draw every layer's and head's attention over the first tokens of "
                                    "the val split to out_dir/attention.png (and wandb): watch heads specialise "
                                    "(not with --fsdp)")
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
    attn_dropout: float | None = opt(None, "dropout on the attention weights; none = dropout. 0 keeps the fused "
                                           "attention kernel, which on a CPU is much faster")
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
    max_iters: int = opt(1000, "optimizer steps in total")
    optimizer: str = opt("muon", "adamw, or muon (Muon for the blocks' 2-D matrices, AdamW for the rest; "
                                 "not with --fsdp)",
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
    device: str = opt("auto", f"where to train: {DEVICE_NAMES} (auto = cuda, else mps, else cpu)")
    dtype: str = opt("auto", "auto (cuda: bfloat16, else float16; mps: float32; cpu: float32 unless a start-up probe "
                             "measures bf16 matmuls faster on this CPU and then bf16 autocast faster for this model "
                             "and batch), float32, bfloat16, float16. Muon's dtype follows the same probe",
                     choices=DTYPES)
    fsdp: bool = opt(False, "under torchrun, shard parameters, gradients and optimizer state across processes "
                            "(PyTorch FSDP2) instead of a whole copy per process (DDP): for models whose AdamW state "
                            "outgrows one GPU. Needs --optimizer=adamw")
    compile: str = opt("auto", "torch.compile the model: auto (on for CUDA, off for CPU), true, false",
                       flag=("true", "false"))
    seed: int = opt(1337, "seed for init, dropout and data order (0 to 2**63-1)")
    threads: int = opt(0, "CPU threads for torch ops; 0 = auto: start with torch's default (one per core, or "
                          "$OMP_NUM_THREADS) and let a governor time the steps and move to fewer threads while "
                          "other processes load the machine (and back); N = exactly N, fixed")
    peak_flops: float | None = opt(None, "one device's peak FLOP/s for MFU (each process's FLOP/s / this); "
                                            "none = GPU table (no MFU on CPU)")
    target_loss: float | None = opt(None, "stop as soon as an eval's val loss is at or below this")
    # logging
    report_to: str = opt("none", "dashboards the run also logs to: wandb, tensorboard (<out_dir>/tensorboard/), "
                                 "trackio (its local store; watch with `trackio show`) or none; several with "
                                 "commas, e.g. tensorboard,trackio")
    wandb_log: bool = opt(False, "log to Weights & Biases: the same as --report_to=wandb")
    wandb_project: str = opt("quillgpt", "wandb and trackio project")
    wandb_run_name: str | None = opt(None, "wandb run name (none = wandb's), and trackio's before the run id")
    wandb_mode: str = opt("online", "online (falls back to offline without credentials), offline, disabled",
                          choices=("online", "offline", "disabled"))

    def __post_init__(self) -> None:
        """Refuse values that make no sense, one line each, before anything is read or written."""
        super().__post_init__()
        c = str(self.compile).strip().lower()
        self.compile = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(c, c)
        if self.compile not in ("auto", "true", "false"):
            raise UsageError(f"--compile: expected auto, true or false, got {self.compile!r}")
        for name in ("out_dir", "data_dir", "dataset", "init_from"):
            if not str(getattr(self, name)).strip():
                raise UsageError(f"--{name} must not be empty")
        if self.overwrite and self.init_from == "resume":
            raise UsageError("--overwrite starts a new run over an old one; it cannot be combined with "
                             "--init_from=resume, which continues the old one")
        self._check_counts()
        self._check_optimizer()
        check_seed(self.seed)
        try:
            check_device_name(self.device)
        except DeviceError as e:
            raise UsageError(f"--device: {e}") from None
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise UsageError(f"--peak_flops must be > 0 (or none), got {self.peak_flops}")
        self.report_to = ",".join(parse_report_to(self.report_to)) or "none"
        check_installed(requested(self.report_to, self.wandb_log, self.wandb_mode))  # not after data and model
        self.prepare_options()  # the data options, checked by their own rules (data/prepare.py)
        if self.init_from == "scratch":
            scratch_config(self, vocab_size=1)  # the architecture asked for is a valid one

    def _check_counts(self) -> None:
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "gradient_accumulation_steps",
                     "n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "sample_tokens", "threads"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eval_batch_size", "n_kv_head"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1 (or none), got {getattr(self, name)}")
        if self.lr_decay_iters is not None and self.lr_decay_iters < 0:
            raise UsageError(f"--lr_decay_iters must be >= 0 (or none), got {self.lr_decay_iters}")

    def _check_optimizer(self) -> None:
        for name in ("learning_rate", "muon_lr"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name} must be > 0, got {getattr(self, name)}; e.g. 6e-4 (AdamW), 0.02 (Muon)")
        for name in ("weight_decay", "grad_clip", "min_lr", "logit_softcap"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UsageError(f"--{name} must be >= 0, got {value} (0 = off)" if name != "min_lr" else
                                 f"--min_lr must be >= 0, got {value}")
        for name in ("beta1", "beta2", "muon_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"--{name} must be in [0, 1), got {getattr(self, name)}; e.g. 0.9, 0.95 or 0.99")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise UsageError(f"--{name} must be in [0, 1), got {value}")
        if self.fsdp and self.optimizer == "muon":
            raise UsageError("--fsdp shards every matrix across processes, and Muon orthogonalises whole matrices; "
                             "use --optimizer=adamw with --fsdp")
        if not 0.0 < self.cooldown_frac <= 1.0:
            raise UsageError(f"--cooldown_frac must be in (0, 1], got {self.cooldown_frac}")

    def prepare_options(self) -> "PrepareOptions":
        """The data/prepare.py options this run's corpus is prepared with: the shared DataOptions fields
        (UsageError for bad ones, by PrepareOptions' own rules)."""
        from dataclasses import fields

        from data.prepare import PrepareOptions

        return PrepareOptions(**{f.name: getattr(self, f.name) for f in fields(DataOptions)})


def dropouts(cfg: TrainConfig) -> dict[str, float | None]:
    """The model's dropout fields from the options: they are training choices, so a resumed or loaded
    model takes them from this run, not from the config it was saved with."""
    return {"dropout": cfg.dropout, "attn_dropout": cfg.attn_dropout}


def scratch_config(cfg: TrainConfig, vocab_size: int) -> "GPTConfig":
    """The GPTConfig for a from-scratch model: the preset, then every switch the user set; the
    vocabulary padded for fast matmuls (``padded_vocab_size``)."""
    from model.config import GPTConfig, padded_vocab_size

    switches = {k: getattr(cfg, k) for k in ARCH_SWITCHES if getattr(cfg, k) is not None}
    if switches.get("logit_softcap") == 0:
        switches["logit_softcap"] = None
    try:
        return GPTConfig.preset(cfg.model, block_size=cfg.block_size, vocab_size=padded_vocab_size(vocab_size),
                                n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                                **dropouts(cfg), **switches)
    except ConfigError as e:
        raise UsageError(f"--{e}") from None


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Options that are valid but probably not what was meant (train.py prints them on stderr)."""
    warnings = []
    if cfg.decay_lr and cfg.max_iters > 0 and cfg.warmup_iters >= cfg.max_iters:
        peak = cfg.max_iters / (cfg.warmup_iters + 1)
        warnings.append(f"--warmup_iters={cfg.warmup_iters} >= --max_iters={cfg.max_iters}: the whole run is warmup "
                        f"and the learning rate only reaches {peak:.0%} of its peak; lower --warmup_iters")
    return warnings


def saved_options(state: dict[str, Any], path: Any) -> dict[str, Any]:
    """A run's saved options a resume starts from, each checked against its field's type (the file is
    untrusted input); ``path`` names the file in errors."""
    saved = state.get("train_config", {})
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the saved options are not a table; restore the file or start a fresh run")
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_RESUMED)
    out = {}
    for key, value in saved.items():
        if key in known:
            try:
                out[key] = coerce(value, hints[key], key)
            except UsageError:
                raise CheckpointError(f"{path}: the saved option {key}={value!r} is not valid; the file is damaged: "
                                      "restore it or start a fresh run") from None
    return out
