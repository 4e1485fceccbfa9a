"""BatchLoader: shapes, determinism, resume, DDP sharding, sequential epochs, short files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.loader import BatchLoader, read_tokens
from runtime.errors import DataError


def token_file(folder: Path, n: int, dtype=np.uint16) -> Path:
    """Tokens 0, 1, 2, ... so a window's first token is its start offset."""
    path = folder / "train.bin"
    np.arange(n, dtype=dtype).tofile(path)
    (folder / "meta.json").write_text(json.dumps({"dtype": np.dtype(dtype).name}), encoding="utf-8")
    return path


def starts(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_shapes_dtype_and_shift(tmp_path, mode):
    loader = BatchLoader(token_file(tmp_path, 5000), block_size=16, batch_size=4, mode=mode)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x - x[:, :1], torch.arange(16).expand(4, 16))  # contiguous windows of the file


def test_uint32_files_and_read_tokens(tmp_path):
    path = token_file(tmp_path, 100_000, np.uint32)
    x, _ = BatchLoader(path, 8, 2).next_batch()
    assert int(x.max()) < 100_000
    assert read_tokens(path)[70_000] == 70_000


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_same_seed_same_batches(tmp_path, mode):
    path = token_file(tmp_path, 20_000)
    a, b = (BatchLoader(path, 32, 8, mode=mode, seed=7) for _ in range(2))
    for _ in range(5):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    assert not torch.equal(BatchLoader(path, 32, 8, mode=mode, seed=8).next_batch()[0],
                           BatchLoader(path, 32, 8, mode=mode, seed=7).next_batch()[0])


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_resume_continues_the_sequence(tmp_path, mode):
    path = token_file(tmp_path, 3000)  # sequential: 93 windows, so the run crosses epochs
    run = BatchLoader(path, 32, 8, mode=mode)
    for _ in range(7):
        run.next_batch()
    state = json.loads(json.dumps(run.state_dict()))  # must survive JSON
    resumed = BatchLoader(path, 32, 8, mode=mode)
    resumed.load_state_dict(state)
    for _ in range(30):
        assert torch.equal(run.next_batch()[0], resumed.next_batch()[0])


def test_resume_refuses_a_different_recipe(tmp_path):
    path = token_file(tmp_path, 3000)
    state = BatchLoader(path, 32, 8, seed=1).state_dict()
    with pytest.raises(DataError, match="seed changed"):
        BatchLoader(path, 32, 8, seed=2).load_state_dict(state)


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_ranks_split_the_global_batch(tmp_path, mode):
    path = token_file(tmp_path, 50_000)
    world, b = 3, 4
    single = BatchLoader(path, 16, world * b, mode=mode, seed=3)
    ranks = [BatchLoader(path, 16, b, mode=mode, seed=3, rank=r, world_size=world) for r in range(world)]
    for _ in range(10):
        parts = [starts(r.next_batch()[0]) for r in ranks]
        assert sum(parts, []) == starts(single.next_batch()[0])  # rank r holds rows [r*b, (r+1)*b)
        assert len(set(sum(parts, []))) == world * b  # no window read twice


def test_sequential_reads_each_window_once_per_epoch(tmp_path):
    block, n = 10, 1001  # 100 windows of 10 (+1 target) tokens
    path = token_file(tmp_path, n)
    for world in (1, 2):
        loaders = [BatchLoader(path, block, 5, mode="sequential", rank=r, world_size=world) for r in range(world)]
        epochs = []
        for _ in range(2):
            seen = []
            for _ in range(100 // (5 * world)):
                for loader in loaders:
                    seen += starts(loader.next_batch()[0])
            assert sorted(seen) == list(range(0, 1000, block))
            epochs.append(seen)
        assert epochs[0] != epochs[1]  # a fresh order each epoch
        assert loaders[0].state_dict()["epoch"] == 2


def test_too_short_file_names_path_count_and_fix(tmp_path):
    path = token_file(tmp_path, 64)
    with pytest.raises(DataError, match=r"train\.bin has 64 tokens.*block_size\+1=65.*smaller --block_size"):
        BatchLoader(path, block_size=64, batch_size=1)
    assert BatchLoader(path, block_size=63, batch_size=4).next_batch()[0].shape == (4, 63)


def test_missing_file_or_meta(tmp_path):
    with pytest.raises(DataError, match="token file not found.*prepare"):
        BatchLoader(tmp_path / "val.bin", 8, 2)
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    with pytest.raises(DataError, match="no meta.json"):
        BatchLoader(tmp_path / "val.bin", 8, 2)
    assert BatchLoader(tmp_path / "val.bin", 8, 2, dtype=np.uint16).next_batch()[0].shape == (2, 8)


def test_bad_mode_and_rank(tmp_path):
    path = token_file(tmp_path, 100)
    with pytest.raises(DataError, match="random, sequential"):
        BatchLoader(path, 8, 2, mode="shuffled")
    with pytest.raises(DataError, match="rank 2 is outside world size 2"):
        BatchLoader(path, 8, 2, rank=2, world_size=2)
