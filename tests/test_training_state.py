"""training/state.py: the RNG part of a resume, per rank and per GPU (CUDA faked: each call is recorded)."""

from __future__ import annotations

import pytest
import torch

from training.state import rank_rng_state, rng_state, set_rng_state


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> dict:
    """torch.cuda with 4 devices whose generator states are tensors [i]; this process is on GPU ``current``."""
    gpus = {"current": 2, "states": {i: torch.tensor([i], dtype=torch.uint8) for i in range(4)}, "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: gpus["current"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpus["states"][device].clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [gpus["states"][i] for i in range(4)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": gpus["set"].append(
        (int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: gpus["set"].extend(
        (int(s[0]), i) for i, s in enumerate(states)))
    return gpus


def test_each_rank_saves_and_restores_its_own_gpus_generator(four_gpus: dict) -> None:
    """Under torchrun rank r owns GPU r: its checkpointed CUDA state is GPU r's, restored onto GPU r only
    (restoring one rank's states onto every device gave all GPUs rank 0's streams)."""
    state = rng_state()
    assert state["cuda"].tolist() == [2]
    four_gpus["current"] = 1  # another rank reading a state saved as above
    set_rng_state(state)
    assert four_gpus["set"] == [(2, 1)]


def test_old_files_with_every_gpus_state_restore_this_gpus_only(four_gpus: dict) -> None:
    state = rng_state()
    state["cuda"] = [torch.tensor([10 + i], dtype=torch.uint8) for i in range(4)]  # the old layout
    set_rng_state(state)
    assert four_gpus["set"] == [(12, 2)]


def test_rank_rng_state_picks_this_ranks_state() -> None:
    saved = {"rng": "r0", "rng_ranks": ["r0", "r1", "r2"]}
    assert [rank_rng_state(saved, r, 3) for r in range(3)] == ["r0", "r1", "r2"]
    # another number of processes: rank 0 continues, the others start fresh streams (None)
    assert [rank_rng_state(saved, r, 2) for r in range(2)] == ["r0", None]
    legacy = {"rng": "r0"}  # rank 0's state only
    assert rank_rng_state(legacy, 0, 1) == "r0" and rank_rng_state(legacy, 1, 2) is None


def test_cpu_generators_round_trip() -> None:
    state = rng_state()
    a = torch.rand(4)
    torch.rand(100)
    set_rng_state(state)
    assert torch.equal(torch.rand(4), a)
