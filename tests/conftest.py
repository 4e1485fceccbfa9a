"""Shared test helpers: the ../shared reference files, one random model, one-thread torch.

The repo root is importable through pytest's ``pythonpath`` setting (pyproject.toml), so
``import train`` and ``import sample`` need no sys.path edits here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The reference folder beside the repo (or $QUILLGPT_SHARED); may not exist."""
    return Path(os.environ.get("QUILLGPT_SHARED") or ROOT.parent / "shared")


def shared_file(name: str) -> Path:
    """A file under the shared folder, or skip the test saying what is missing."""
    path = shared_dir() / name
    if not path.is_file():
        pytest.skip(f"../shared absent: {path} not found (set QUILLGPT_SHARED to the reference folder)")
    return path


@pytest.fixture
def tinyshakespeare() -> Path:
    """The char-rnn tiny shakespeare text from the shared folder."""
    return shared_file("data/tinyshakespeare.txt")


@pytest.fixture
def gpt2_ranks() -> Path:
    """GPT-2's BPE ranks in tiktoken format, so GPT-2 encoding needs no network."""
    return shared_file("data/gpt2.tiktoken")


@pytest.fixture(autouse=True)
def one_thread():
    """Tests use tiny models, which gain nothing from intra-op threads; on a shared 2-core box,
    spinning OpenMP workers slow them down tenfold. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(config, seed: int = 0, std: float = 0.15):
    """A GPT with every weight random, so zero-initialised projections and heads cannot hide bugs."""
    import torch

    from model import GPT

    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, std)
            if p.dim() == 1 and ("ln_" in name or "norm" in name):
                p.add_(1.0)  # norm gains around 1
    return model


def needs_cpu_compiler() -> None:
    """Skip a torch.compile test, saying why, on a machine without a C++ compiler."""
    from model.generate import cpu_compiler

    if cpu_compiler() is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX): torch.compile cannot build CPU kernels")


def random_hf_gpt2(folder, seed: int = 0, **config):
    """A GPT-2 written by transformers' own save_pretrained, every weight (biases and LayerNorms too)
    random and non-trivial; ``config`` are GPT2Config fields. Returns the transformers model."""
    import torch

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{"bos_token_id": None, "eos_token_id": None, **config})
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.1)
            if ".ln_" in name and name.endswith("weight"):
                p.add_(1.0)
    hf.save_pretrained(folder)
    return hf
