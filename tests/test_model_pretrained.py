"""GPT.from_pretrained / GPT.save_pretrained and the one source dispatch under them (model/checkpoint.py).

References: the source model's own forward (run folders, save_pretrained round trips: exact) and
transformers' GPT2LMHeadModel forward (a folder written by its save_pretrained: to 1e-5).
Nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import random_hf_gpt2, random_model
from model import GPT, CheckpointError, GPTConfig, save_model
from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, Source, from_pretrained, resolve_source, source_config

TINY = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any accidental hub access fails fast instead of reaching the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def logits(model: GPT, seed: int = 1) -> torch.Tensor:
    idx = torch.randint(0, model.config.vocab_size, (2, model.config.block_size),
                        generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(idx)[0]


def hf_folder(folder: Path, tie: bool = True):
    """A tiny random GPT-2 written by transformers' own save_pretrained; returns the transformers model."""
    return random_hf_gpt2(folder, n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=60,
                          tie_word_embeddings=tie)


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_gpt_from_pretrained_reads_a_run_folder_exactly(tmp_path: Path, preset: str) -> None:
    model = random_model(GPTConfig.preset(preset, **TINY))
    save_model(model, tmp_path, {"iter": 3})
    loaded = GPT.from_pretrained(tmp_path)  # a Path as well as a str
    assert isinstance(loaded, GPT) and loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))
    assert GPT.from_pretrained(str(tmp_path), dropout=0.2).config.dropout == 0.2


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_from_pretrained_reads_a_transformers_gpt2_folder(tmp_path: Path, tie: bool) -> None:
    hf = hf_folder(tmp_path, tie)
    ours = GPT.from_pretrained(str(tmp_path))
    assert ours.config.tie_embeddings is tie and ours.config.block_size == 24
    idx = torch.randint(0, 60, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
    assert ref.abs().max() > 1.0  # not two near-zero tensors
    torch.testing.assert_close(ours.eval()(idx)[0], ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("preset, extra", [("classic", {}), ("modern", {"tie_embeddings": False, "n_kv_head": 1})])
def test_save_pretrained_round_trips_exactly(tmp_path: Path, preset: str, extra: dict) -> None:
    model = random_model(GPTConfig.preset(preset, **{**TINY, **extra}))
    model.save_pretrained(tmp_path / "saved", {"note": "hello"})
    meta = json.loads((tmp_path / "saved" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert meta["model"] == model.config.to_dict() and meta["note"] == "hello"  # the run-folder format
    back = GPT.from_pretrained(tmp_path / "saved")
    theirs, ours = model.state_dict(), back.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert torch.equal(logits(back), logits(model))


def test_save_pretrained_of_an_imported_gpt2_loads_back_as_a_run_folder(tmp_path: Path) -> None:
    hf_folder(tmp_path / "hf")
    gpt2 = GPT.from_pretrained(tmp_path / "hf")
    gpt2.save_pretrained(tmp_path / "ours")
    assert resolve_source(tmp_path / "ours").folder == tmp_path / "ours"  # ours now, not GPT-2's format
    assert torch.equal(logits(GPT.from_pretrained(tmp_path / "ours")), logits(gpt2))


# ---------------------------------------------------------------------------- the dispatch


def test_resolve_source_names_what_each_input_is(tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = random_model(GPTConfig.classic(**TINY))
    save_model(model, run / "best", {"iter": 20, "val_loss": 1.25})
    save_model(model, run, {"iter": 30})
    best = resolve_source(run, "auto")
    assert best.folder == run / "best" and best.pretrained is None
    assert best.label == f"{run / 'best'} (best, iter 20, val loss 1.2500)"
    latest = resolve_source(run, "latest")
    assert latest.folder == run and latest.label == f"{run} (latest, iter 30)"
    assert resolve_source(run).folder == run and resolve_source(run).label == str(run)  # a folder itself
    assert source_config(best) == model.config
    hf_folder(tmp_path / "hf")
    hf = resolve_source(str(tmp_path / "hf"))
    assert hf.folder is None and hf.pretrained == str(tmp_path / "hf") and "Hugging Face GPT-2 folder" in hf.label
    assert source_config(hf).n_embd == 32 and source_config(hf, dropout=0.3).dropout == 0.3
    hub = resolve_source("gpt2")  # a name, not fetched by resolving
    assert hub == Source(None, "gpt2", {}, "gpt2 (GPT-2 from the Hugging Face hub)") and source_config(hub) is None
    assert torch.equal(logits(from_pretrained(best)), logits(model))  # a resolved Source loads as is


def test_resolve_source_refuses_bad_folders_before_loading(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder: ./nowhere"):
        resolve_source("./nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json in"):
        resolve_source(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / CONFIG_FILE).write_text("{}", encoding="utf-8")
    with pytest.raises(CheckpointError, match="is not a GPT-2 config either: not a usable GPT-2 config.json"):
        resolve_source(tmp_path / "odd")
    (tmp_path / "odd" / CONFIG_FILE).write_text('{"model_type": "llama"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="model_type 'llama' is not one quillgpt loads"):
        resolve_source(tmp_path / "odd")
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path / "unsaved")
    (tmp_path / "unsaved" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="its model.safetensors is missing"):
        resolve_source(tmp_path / "unsaved")
    with pytest.raises(CheckpointError, match="run folder not found"):
        resolve_source(tmp_path / "nothing", "auto")
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        resolve_source(tmp_path / "unsaved", "best")
