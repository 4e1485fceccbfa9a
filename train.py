"""Train a GPT on a text corpus: one process, or many under torchrun.

    python train.py                                    # ~5 min on a laptop CPU: Shakespeare, characters
    python train.py configs/shakespeare_char.toml      # nanoGPT's GPU recipe
    python train.py --init_from=resume --out_dir=out   # continue a run exactly where it stopped
    python train.py --out_dir=out --overwrite          # start over where a run already is (deletes it)
    torchrun --standalone --nproc_per_node=8 train.py configs/gpt2_124m.toml

Several machines (run on each node; node 0's address as master, same port everywhere):

    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \
        train.py configs/gpt2_124m.toml       # node 1: --node_rank=1; without InfiniBand: NCCL_IB_DISABLE=1

Each process reads its own rows of every global batch; only rank 0 logs and writes the run
folder (--out_dir is on rank 0's machine: resume there, or use a shared filesystem). Add --fsdp
(with --optimizer=adamw) to shard the model and optimizer state across processes.
The global batch is batch_size x gradient_accumulation_steps x processes (printed at start).

Read top-down: ``train(cfg)`` is the loop. ``training.setup.set_up`` makes the run, phase by
phase; each phase the loop then calls (step, evaluate and checkpoint, log, stop) is a method of
the ``training.trainer.Trainer`` it returns. Options are ``training.config.TrainConfig`` (shown
by --help); the run folder's format is ``model.checkpoint``.

A run folder (``out_dir``) holds:
    model.safetensors, config.json   the latest model (config.json: model + train config + tokenizer)
    <tokenizer file>                  so the folder is self-contained for sample.py
    train_state.pt                    everything a resume needs (weights, optimizer, RNG, data position)
    best/                             model.safetensors + config.json + tokenizer at the best val loss
    metrics.jsonl, loss.png           one JSON line per log/eval event; the loss curves
    attention.png                     every layer's and head's attention over a fixed val text, at the last eval
    tensorboard/, wandb/              only with --report_to=tensorboard / wandb (or --wandb_log)
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from runtime.errors import CheckpointError, UsageError
from runtime.options import parse, run_main
from training.config import TrainConfig, saved_options
from training.control import Interrupted, StopRequest, TrainingDiverged, signal_exit_code


def train(cfg: TrainConfig, log_to_console: bool = True, stop: StopRequest | None = None) -> dict[str, Any]:
    """Run the training described by ``cfg``; returns its final metrics (see ``Trainer.result``).

    Raises a ``QuillError`` for bad input, ``TrainingDiverged`` for a NaN/inf loss and
    ``Interrupted`` for a signal outside the loop (start-up) or a second one. ``stop``: the
    caller's signal handler, if it installed one already (main does, before reading options).
    """
    from training.setup import set_up  # imports torch: here, so that --help answers at once

    with (contextlib.nullcontext(stop) if stop is not None else StopRequest()) as stop:
        with set_up(cfg, log_to_console) as run:
            stop.arm()  # from here a first signal means: finish this step, save, stop
            try:
                while True:
                    if run.eval_due() and run.evaluate_and_checkpoint():  # True: eval_only, or the target reached
                        break
                    if run.iter_num >= cfg.max_iters:
                        break
                    if run.stop_requested(stop):  # SIGINT/SIGTERM: saved; resume with --init_from=resume
                        break
                    run.step()
                    if run.log_due():
                        run.log()
            finally:
                stop.disarm()
            return run.result()


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line; a resume starts from the run's saved options (then files, then CLI)."""
    cfg = parse(TrainConfig, argv, prog="train.py", description=__doc__.split("\n\n")[0])
    if cfg.init_from == "resume":
        from model.checkpoint import STATE_FILE, load_train_state

        try:
            state = load_train_state(cfg.out_dir)
        except CheckpointError:
            return cfg  # train() reports the missing/corrupt checkpoint precisely, before touching the data
        path = Path(cfg.out_dir) / STATE_FILE
        try:
            cfg = parse(TrainConfig, argv, prog="train.py", base_values=saved_options(state, path))
        except UsageError as e:
            raise CheckpointError(f"{path}: its saved options do not make a valid run with this command line ({e}); "
                                  "give a valid value on the command line or start a fresh run") from None
    return cfg


def _report(cfg: TrainConfig, result: dict[str, Any], stop: StopRequest) -> int:
    """Print how the run ended; the exit code."""
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if result["stopped"] == "eval_only":
        from training.evaluate import bpb_text

        print(f"eval: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}"
              f"{bpb_text(result['val_bpb'])}")
        return 0
    if result["stopped"] == "signal":  # the loop said what it saved; with nothing to resume from, not a clean stop
        return 0 if result["saved_iter"] is not None else signal_exit_code(stop.requested or "SIGINT")
    if result.get("sample"):
        print(f"\n--- sample at iteration {result['iters']} ---\n{result['sample']}\n---")
    where = Path(cfg.out_dir)
    if result["saved_iter"] is None:
        print(f"done: {result['iters']} iterations in {result['time']:.0f} s; no checkpoint was saved "
              "(a new run saves at its evals after iteration 0; raise --max_iters)")
        return 0
    best = f" (best val loss {result['best_val_loss']:.4f} in {where / 'best'})" if result["best_val_loss"] else ""
    print(f"done: {result['iters']} iterations in {result['time']:.0f} s; checkpoint in {where}{best}")
    print(f"write text with: python sample.py --out_dir={shlex.quote(str(where))} --temperature 0.8")
    return 0


def main(argv: list[str] | None = None) -> int:
    # the handler goes in first: a signal while options are read or the data prepared ends cleanly too
    with StopRequest() as stop:
        cfg = None
        try:
            cfg = load_config(argv)
            return _report(cfg, train(cfg, stop=stop), stop)
        except TrainingDiverged as e:
            print(f"error: training diverged: {e}. The last good checkpoint in {cfg.out_dir} was kept; "
                  "try a lower --learning_rate or --grad_clip, or a smaller model.", file=sys.stderr)
            return 3
        except Interrupted as e:
            print(e.message(), file=sys.stderr)
            return e.exit_code


if __name__ == "__main__":
    run_main(main)
