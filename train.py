"""Train a GPT on a text corpus: one process, or many under torchrun.

    python train.py                                    # ~5 min on a laptop CPU: Shakespeare, characters
    python train.py configs/shakespeare_char.toml      # nanoGPT's GPU recipe
    python train.py --init_from=resume --out_dir=out   # continue a run exactly where it stopped
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.toml

Several machines (run on each node; node 0's address as master, same port everywhere):

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \
        train.py configs/gpt2_124m.toml       # node 1: --node_rank=1; without InfiniBand: NCCL_IB_DISABLE=1

Each process reads its own rows of every global batch; only rank 0 logs and writes the run
folder (--out_dir is on rank 0's machine: resume there, or use a shared filesystem). Add --fsdp
(with --optimizer=adamw) to shard the model and optimizer state across processes.
The global batch is batch_size x gradient_accumulation_steps x processes (printed at start).

Read top-down: ``train(cfg)`` is the loop; each phase it calls (set up, step, evaluate and
checkpoint, log, stop) is a method of ``training.trainer.Trainer``. Options are
``training.config.TrainConfig`` (shown by --help); the run folder's format is ``model.checkpoint``.

A run folder (``out_dir``) holds:
    model.safetensors, config.json   the latest model (config.json: model + train config + tokenizer)
    <tokenizer file>                  so the folder is self-contained for sample.py
    train_state.pt                    everything a resume needs (weights, optimizer, RNG, data position)
    best/                             model.safetensors + config.json + tokenizer at the best val loss
    metrics.jsonl, loss.png           one JSON line per log/eval event; the loss curves
    attention.png                     every layer's and head's attention over a fixed val text, at the last eval
    wandb/                            only with --wandb_log
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from runtime.errors import CheckpointError
from runtime.options import parse, run_main
from training.config import TrainConfig
from training.control import StopRequest, TrainingDiverged


def train(cfg: TrainConfig, log_to_console: bool = True) -> dict[str, Any]:
    """Run the training described by ``cfg``; returns its final metrics (see ``Trainer.result``).

    Raises a ``QuillError`` for bad input and ``TrainingDiverged`` for a NaN/inf loss.
    """
    from training.trainer import Trainer  # imports torch: here, so that --help answers at once

    with Trainer(cfg, log_to_console) as run, StopRequest() as stop:
        while True:
            if run.eval_due() and run.evaluate_and_checkpoint():  # True: eval_only, or the target was reached
                break
            if run.iter_num >= cfg.max_iters:
                break
            run.step()
            if run.log_due():
                run.log()
            if run.stop_requested(stop):  # SIGINT/SIGTERM: saved; resume with --init_from=resume
                break
        return run.result()


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line; a resume starts from the run's saved options (then files, then CLI)."""
    cfg = parse(TrainConfig, argv, prog="train.py", description=__doc__.split("\n\n")[0])
    if cfg.init_from == "resume":
        from model.checkpoint import load_train_state

        try:
            saved = load_train_state(cfg.out_dir).get("train_config", {})
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
