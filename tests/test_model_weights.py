"""Weights on disk: safetensors round trip, no pickle, and clear CheckpointErrors for bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

import model as model_pkg
from model import GPT, CheckpointError, GPTConfig, load_model, save_model
from model.weights import load_weights, save_weights

TINY = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16)


def random_model(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: 8-byte little-endian length, then JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


@pytest.mark.parametrize("preset", ["classic", "modern"])
def test_round_trip_is_exact(tmp_path: Path, preset: str) -> None:
    model = random_model(GPTConfig.preset(preset, **TINY, n_kv_head=1))
    save_model(model, tmp_path, extra={"step": 7})
    loaded, meta = load_model(tmp_path)
    assert meta["step"] == 7 and loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    idx = torch.randint(0, 40, (2, 16))
    assert torch.equal(loaded.eval()(idx)[0], model(idx)[0])
    keys = set(safetensors_header(tmp_path / "model.safetensors")) - {"__metadata__"}
    if preset == "classic":  # tied head stored once and still tied after loading
        assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    else:
        assert "lm_head.weight" in keys
    assert not any("rope" in k or "pos_ids" in k for k in keys)  # derived buffers are not saved


def test_files_are_safetensors_and_json_not_pickle(tmp_path: Path) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor a torch.save zip
    assert safetensors_header(tmp_path / "model.safetensors")["__metadata__"] == {"format": "pt"}
    assert json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))["model"]["n_layer"] == 2
    source = "".join(p.read_text(encoding="utf-8") for p in Path(model_pkg.__file__).parent.glob("*.py"))
    assert "torch.load(" not in source and "import pickle" not in source


def test_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "bad header"])
def test_corrupt_weights_raise(tmp_path: Path, damage: str) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    path = tmp_path / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes({
        "truncated": raw[:len(raw) // 2],
        "empty": b"",
        "garbage": b"\x80\x04not a safetensors file at all" * 10,
        "bad header": raw[:8] + b"#" + raw[9:],
    }[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_model(tmp_path)
    assert str(path) in str(err.value)


def test_mismatched_shapes_and_names_raise(tmp_path: Path) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    wider = GPT(GPTConfig.classic(**{**TINY, "n_embd": 32}))
    with pytest.raises(CheckpointError, match=r"does not match its config: transformer\.\S+ has shape \(\d+(, \d+)?,?\), config expects"):
        load_weights(wider, tmp_path / "model.safetensors")
    deeper = GPT(GPTConfig.classic(**{**TINY, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"missing \['transformer\.h\.2"):
        load_weights(deeper, tmp_path / "model.safetensors")
    shallower = GPT(GPTConfig.classic(**{**TINY, "n_layer": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected \['transformer\.h\.1"):
        load_weights(shallower, tmp_path / "model.safetensors")
    untied = GPT(GPTConfig.classic(**TINY, tie_embeddings=False))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_weights(untied, tmp_path / "model.safetensors")


@pytest.mark.parametrize("config_text, match", [
    ("{not json", "corrupt"),
    ('{"step": 3}', "no 'model' section"),
    ('{"model": {"n_layer": 0}}', "bad model config.*n_layer"),
    ('{"model": {"n_layers": 2}}', "bad model config.*unknown GPTConfig fields"),
])
def test_bad_config_json_raises(tmp_path: Path, config_text: str, match: str) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    (tmp_path / "config.json").write_text(config_text, encoding="utf-8")
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path)


def test_save_weights_unwraps_compiled_models(tmp_path: Path) -> None:
    model = random_model(GPTConfig.modern(**TINY))
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule exposes
    save_weights(wrapper, tmp_path / "w.safetensors")
    fresh = GPT(model.config)
    load_weights(fresh, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
