"""Parity with Hugging Face transformers' GPT-2: logits, greedy continuations, parameter count.

Everything is random-initialised and saved to tmp folders: no test touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from model import GPT, CheckpointError, GPTConfig, save_model  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any accidental hub access fails fast instead of reaching the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_gpt2(folder: Path, activation: str = "gelu_new", seed: int = 0) -> GPT2LMHeadModel:
    """A random GPT-2 with every weight (biases and LayerNorms too) non-trivial, saved as safetensors."""
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=100,
                     activation_function=activation, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.1)
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    hf.save_pretrained(folder, safe_serialization=True)
    assert (folder / "model.safetensors").is_file()
    return hf


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_logits_match_transformers(tmp_path: Path, activation: str) -> None:
    hf = hf_gpt2(tmp_path, activation)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert ours.config.activation == {"gelu_new": "gelu_tanh", "gelu": "gelu"}[activation]
    assert ours.config.block_size == 128 and ours.config.vocab_size == 100
    idx = torch.randint(0, 100, (3, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
    logits, _ = ours(idx)
    assert ref.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_greedy_continuations_match_transformers(tmp_path: Path) -> None:
    hf = hf_gpt2(tmp_path, seed=2)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=40,
                          min_new_tokens=40, pad_token_id=0)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(idx, 40, temperature=0.0, use_cache=use_cache), ref)


def test_gpt2_124m_parameter_count_equals_transformers() -> None:
    with torch.device("meta"):
        hf = GPT2LMHeadModel(GPT2Config())  # the 124M shape: 12 x 768, 1024 positions, 50257 tokens
        ours = GPT(GPTConfig.classic(vocab_size=50257, block_size=1024))
    theirs = sum(p.numel() for p in hf.parameters())
    assert theirs == 124_439_808
    assert ours.num_params() == theirs


def test_from_pretrained_loads_a_quillgpt_run_folder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.modern(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    save_model(model, tmp_path)
    loaded = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_from_pretrained_errors_are_clear_and_offline(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        GPT.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="no such folder"):
        GPT.from_pretrained("./not/a/run")
    with pytest.raises(CheckpointError, match="config.json"):
        GPT.from_pretrained(str(tmp_path))  # a folder without config.json
    hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        GPT.from_pretrained(str(tmp_path))


def test_from_pretrained_rejects_a_mismatched_hf_folder(tmp_path: Path) -> None:
    hf_gpt2(tmp_path)
    cfg = (tmp_path / "config.json").read_text(encoding="utf-8").replace('"n_embd": 64', '"n_embd": 32')
    (tmp_path / "config.json").write_text(cfg, encoding="utf-8")
    with pytest.raises(CheckpointError, match="shape"):
        GPT.from_pretrained(str(tmp_path))
