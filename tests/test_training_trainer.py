"""training/setup.py and training/trainer.py phase by phase, in-process: fp16 skipped steps, throughput, the padded vocabulary.

fp16 training runs on CPU here (autocast float16 with a real GradScaler), so the scaler's skip
path, which on a GPU happens in the first hour of any fp16 run, is exercised without one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from train import load_config
from training.control import MAX_SKIPPED_STEPS, TrainingDiverged, check_divergence
from training.config import scratch_config
from training.setup import set_up
from training.trainer import Trainer

POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n" * 20


def tiny(tmp_path: Path, *extra: str):
    text = tmp_path / "poem.txt"
    text.write_text(POEM, encoding="utf-8")
    return load_config([f"--input={text}", "--dataset=poem", f"--data_dir={tmp_path / 'data'}",
                        f"--out_dir={tmp_path / 'out'}", "--n_layer=1", "--n_head=2", "--n_embd=16",
                        "--block_size=16", "--batch_size=4", "--eval_iters=1", "--sample_tokens=0", "--device=cpu",
                        "--optimizer=adamw", "--max_iters=100", "--log_interval=1000", "--dtype=float32", *extra])


def overflow_scale(run: Trainer, scale: float, backoff: float = 0.5) -> None:
    """Make the next steps' fp16 gradients overflow, as a too-high loss scale does on a GPU."""
    state = run.scaler.state_dict()
    state.update(scale=scale, backoff_factor=backoff)
    run.scaler.load_state_dict(state)


def params(run: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.raw_model.parameters()]


def test_fp16_steps_the_scaler_skips_are_not_divergence(tmp_path: Path) -> None:
    with set_up(tiny(tmp_path, "--dtype=float16"), log_to_console=False) as run:
        assert run.scaler.is_enabled()  # fp16 gets a GradScaler on any device
        run.step()
        overflow_scale(run, 2.0 ** 40)
        before = params(run)
        for _ in range(8):
            run.step()
            run.log()  # checks for divergence: must not raise
            assert not math.isfinite(run.grad_norm.item())  # the overflow happened
        assert all(torch.equal(a, b) for a, b in zip(before, params(run)))  # ... and the steps were skipped
        assert run.scaler.get_scale() == 2.0 ** 32  # halved at each skip
        overflow_scale(run, 2.0 ** 8)
        run.step()
        run.log()
        assert math.isfinite(run.grad_norm.item())
        assert not all(torch.equal(a, b) for a, b in zip(before, params(run)))  # training goes on


def test_fp16_too_many_skipped_steps_in_a_row_is_divergence(tmp_path: Path) -> None:
    with set_up(tiny(tmp_path, "--dtype=float16"), log_to_console=False) as run:
        overflow_scale(run, 2.0 ** 40, backoff=1.0)  # the scale never comes down: every step overflows
        for _ in range(MAX_SKIPPED_STEPS - 1):
            run.step()
        run.log()
        run.step()
        with pytest.raises(TrainingDiverged, match=f"{MAX_SKIPPED_STEPS} optimizer steps in a row were skipped"):
            run.log()


def test_a_nan_loss_is_divergence_even_with_a_scaler(tmp_path: Path) -> None:
    with set_up(tiny(tmp_path, "--dtype=float16"), log_to_console=False) as run:
        with torch.no_grad():
            run.raw_model.transformer.wte.weight.fill_(float("nan"))
        run.step()
        with pytest.raises(TrainingDiverged, match="the loss became NaN/inf before iteration 1"):
            run.log()


def test_divergence_rule() -> None:
    check_divergence(False, MAX_SKIPPED_STEPS - 1, 10)  # skips alone are normal
    with pytest.raises(TrainingDiverged, match="loss"):
        check_divergence(True, 0, 10)
    with pytest.raises(TrainingDiverged, match=f"{MAX_SKIPPED_STEPS} optimizer steps in a row"):
        check_divergence(False, MAX_SKIPPED_STEPS, 10)


def test_throughput_leaves_out_the_first_step(tmp_path: Path) -> None:
    """The first step compiles (on a GPU) and warms up; a slow first step must not lower tokens/s."""
    with set_up(tiny(tmp_path), log_to_console=False) as run:
        calls = []

        def slow_first_forward(*_):
            calls.append(1)
            if len(calls) == 1:
                time.sleep(1.0)

        run.raw_model.register_forward_pre_hook(slow_first_forward)
        run.step()
        run.log()
        assert run.results["tokens_per_sec"] is None  # nothing but the first step to time yet
        for _ in range(3):
            run.step()
        run.log()
        per_iter = run.resolved.tokens_per_iter
        assert run.results["tokens_per_sec"] > 3 * per_iter / 0.5  # with the 1 s step it would be < 3 * per_iter


@pytest.mark.parametrize("tokens, padded", [(65, 65), (1000, 1000), (1025, 1088), (4096, 4096), (50257, 50304)])
def test_scratch_models_pad_the_vocabulary_to_a_multiple_of_64(tmp_path: Path, tokens: int, padded: int) -> None:
    """nanoGPT's 50304 for GPT-2's 50257 tokens; a character vocabulary stays as it is."""
    assert scratch_config(tiny(tmp_path), tokens).vocab_size == padded


def test_the_eval_sample_never_draws_a_padded_id() -> None:
    """train.py's sample at each eval decodes its tokens: a padded id would be past the tokenizer's table."""
    from conftest import random_model
    from data.tokenizer import CharTokenizer
    from model import GPTConfig
    from training.evaluate import sample_text

    tok = CharTokenizer(set("abcdefghijklmnopqrstuvwxyz .,;:!?'\n-ABCDE"))
    model = random_model(GPTConfig.classic(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.lm_head.weight[tok.vocab_size:] *= 50  # the padded rows would win every draw
    text = sample_text(model, tok, 30, "cpu", seed=0)
    assert len(text) == 30 and set(text) <= set(tok.chars)
