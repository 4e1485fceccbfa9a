"""Memory estimates: exact parameter counts, lower bounds checked against what torch really allocates,
and refusals that name the estimate, what the machine has and what to change."""

from __future__ import annotations

import itertools

import pytest
import torch

from conftest import random_model
from model import GPT, GPTConfig
from model.generate import generate_stream, generation_bytes
from runtime import memory
from runtime.errors import DeviceError
from runtime.memory import available_bytes, ensure_fits, format_bytes
from train import load_config
from training.memory import check_training_fits, training_bytes
from training.optim import configure_optimizers

GB = 10**9


@pytest.mark.parametrize("preset, bias, tie, pos_emb, n_kv_head, norm", list(itertools.product(
    ["classic", "modern"], [True, False], [True, False], ["learned", "rope"], [None, 1], ["layernorm", "rmsnorm"])))
def test_config_counts_parameters_and_bytes_exactly_as_the_built_model(preset, bias, tie, pos_emb, n_kv_head,
                                                                          norm) -> None:
    config = GPTConfig.preset(preset, block_size=8, vocab_size=37, n_layer=2, n_head=2, n_embd=16, bias=bias,
                              tie_embeddings=tie, pos_emb=pos_emb, n_kv_head=n_kv_head, norm=norm, mlp_ratio=3)
    model = GPT(config)
    assert config.num_params() == model.num_params()
    tensors = [*model.parameters(), *model.buffers()]
    assert config.model_bytes() == sum(t.numel() * t.element_size() for t in tensors)


def test_gpt2_sizes_match_the_published_counts() -> None:
    """124M / 350M / 774M / 1558M: GPT-2's four sizes (vocab 50257, context 1024, tied head)."""
    published = {(12, 768): 124_439_808, (24, 1024): 354_823_168, (36, 1280): 774_030_080, (48, 1600): 1_557_611_200}
    for (n_layer, n_embd), count in published.items():
        config = GPTConfig(vocab_size=50257, n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd)
        assert config.num_params() == count


def test_available_memory_is_capped_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.MEMORY_ENV, raising=False)
    free = available_bytes("cpu")
    assert free is None or free > 0
    monkeypatch.setenv(memory.MEMORY_ENV, "2e9")
    assert available_bytes("cpu") == min(2 * GB, free or 2 * GB)
    monkeypatch.setenv(memory.MEMORY_ENV, "lots")
    with pytest.raises(DeviceError, match="QUILLGPT_MEMORY_LIMIT"):
        available_bytes("cpu")


def test_gpu_memory_torch_caches_but_does_not_use_counts_as_available(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU mid-run, as the driver and torch's allocator report it: 1 GB free to the driver, 6 GB
    reserved by torch of which 2 GB hold tensors. A new tensor can get 1 + (6 - 2) = 5 GB."""
    monkeypatch.delenv(memory.MEMORY_ENV, raising=False)
    seen = []

    def reading(value: int):
        return lambda device=None: seen.append(torch.device(device)) or value

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (seen.append(device) or 1 * GB, 16 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", reading(6 * GB))
    monkeypatch.setattr(torch.cuda, "memory_allocated", reading(2 * GB))
    assert available_bytes("cuda:1") == 5 * GB
    assert set(seen) == {torch.device("cuda:1")}  # every reading is of the GPU asked about
    ensure_fits(4 * GB, "cuda:1", "this", "that")  # fits in the cached memory: no refusal
    with pytest.raises(DeviceError, match="GPU has 5.0 GB available"):
        ensure_fits(6 * GB, "cuda:1", "this", "that")
    monkeypatch.setenv(memory.MEMORY_ENV, str(3 * GB))
    assert available_bytes("cuda:1") == 3 * GB  # the cap still applies


def test_ensure_fits_names_the_need_the_room_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.MEMORY_ENV, str(8 * GB))
    ensure_fits(7 * GB, "cpu", "x", "y")  # fits: nothing happens
    with pytest.raises(DeviceError) as e:
        ensure_fits(51 * GB, "cpu", "the model of out", "use a bigger machine")
    assert str(e.value) == ("the model of out needs at least 51.0 GB of memory but this machine has 8.0 GB "
                            "available; use a bigger machine")
    assert format_bytes(999) == "999 bytes" and format_bytes(1536) == "1.5 KB"


def cfg_for(*args: str):
    return load_config(["--device=cpu", *args])


def test_big_legitimate_runs_pass_and_absurd_ones_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """nanoGPT's GPT-2 124M recipe (batch 12 x 1024, bf16) trains on a 40 GB A100; gpt2-xl fine-tunes
    at batch 1 on an 80 GB GPU. Neither may be refused there; a billion-sequence batch always is."""
    gpt2 = GPTConfig(vocab_size=50304)
    cfg = cfg_for("--batch_size=12", "--block_size=1024", "--optimizer=adamw", "--n_layer=12", "--n_head=12",
                  "--n_embd=768")
    need = training_bytes(gpt2, cfg, compute_bytes=2)
    assert 16 * gpt2.num_params() < need < 40 * GB
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 40 * GB)
    check_training_fits(gpt2, cfg, "cuda:0", 2)
    xl = GPTConfig(vocab_size=50257, n_layer=48, n_head=25, n_embd=1600)
    tune = cfg_for("--batch_size=1", "--block_size=1024", "--optimizer=adamw", "--init_from=gpt2-xl")
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 80 * GB)
    check_training_fits(xl, tune, "cuda:0", 2)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 16 * GB)
    with pytest.raises(DeviceError, match="needs at least 2[0-9].[0-9] GB .* has 16.0 GB available; use a smaller"):
        check_training_fits(xl, tune, "cuda:0", 2)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 10**15)  # a petabyte
    with pytest.raises(DeviceError):
        check_training_fits(gpt2, cfg_for("--batch_size=1000000000", "--block_size=1024"), "cpu", 2)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_estimate_is_below_what_a_step_really_holds(optimizer: str) -> None:
    """Measured, not assumed: weights, gradients and optimizer state after a step, plus every tensor
    autograd saves for the backward pass, add up to more than the estimate."""
    cfg = cfg_for("--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--batch_size=4",
                  f"--optimizer={optimizer}", "--dtype=float32")
    mcfg = GPTConfig.modern(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=64)
    model = random_model(mcfg).train()
    optimizers = configure_optimizers(model, cfg, "cpu")
    x = torch.randint(0, 50, (4, 32))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, loss = model(x, x)
    loss.backward()
    for o in optimizers:
        o.step()
    held = sum(p.nbytes + p.grad.nbytes for p in model.parameters()) + sum(b.nbytes for b in model.buffers())
    held += sum(v.nbytes for o in optimizers for s in o.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0)
    held += sum(saved.values()) + logits.nbytes + 2 * x.nbytes
    estimate = training_bytes(mcfg, cfg, compute_bytes=4)
    assert estimate <= held
    assert estimate > held / 4  # and not a vacuous bound


def test_generation_estimate_is_below_what_generation_allocates() -> None:
    config = GPTConfig.modern(block_size=64, vocab_size=97, n_layer=3, n_head=4, n_embd=32, n_kv_head=2)
    model = random_model(config)
    B, T, new = 3, 5, 40
    cache = model.new_kv_cache(B)  # the cache generate_stream makes, filled the way it fills it
    with torch.no_grad():
        model(torch.zeros(B, T, dtype=torch.long), kv_cache=cache)
    tokens = torch.empty(B, T + new, dtype=torch.long)  # generate_stream's token buffer
    real = cache.k.nbytes + cache.v.nbytes + tokens.nbytes + 2 * 4 * B * config.vocab_size  # + a step's logits, probs
    assert generation_bytes(config, B, T, new) == real  # float32: the count is exact
    assert generation_bytes(config, B, T, new, dtype_bytes=2) < real


def test_a_generation_too_big_for_the_machine_is_refused_before_allocating() -> None:
    model = random_model(GPTConfig(block_size=16, vocab_size=11, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(DeviceError, match="generating 1,000,000,000,000 tokens x 1 row"):
        next(generate_stream(model, torch.zeros(1, 1, dtype=torch.long), 10**12))


def test_fsdp_counts_each_process_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's `--init_from=gpt2-xl --fsdp` on 24 GB GPUs: refused unsharded (weights, gradients
    and AdamW state alone are 16 bytes x 1.56e9 parameters = 25 GB), allowed across 8 processes,
    where each holds an eighth of that state plus one block's full weights while it is gathered."""
    xl = GPTConfig(vocab_size=50257, n_layer=48, n_head=25, n_embd=1600)
    tune = cfg_for("--batch_size=1", "--block_size=1024", "--optimizer=adamw", "--init_from=gpt2-xl")
    one, eight = training_bytes(xl, tune, compute_bytes=2), training_bytes(xl, tune, 2, shards=8)
    block = 12 * 1600 * 1600  # q, k, v, proj (4 C^2) and the MLP (8 C^2) of one block
    P = xl.num_params()
    assert one > 16 * P > 24 * GB
    assert 16 * P / 8 < eight < one / 4
    assert eight >= 4 * block + 16 * P // 8 - 4 * 8  # one gathered block is counted whole
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 24 * GB)
    with pytest.raises(DeviceError):
        check_training_fits(xl, tune, "cuda:0", 2)
    check_training_fits(xl, tune, "cuda:0", 2, shards=8)


def test_fsdp_pre_check_under_a_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through $QUILLGPT_MEMORY_LIMIT, the knob a CPU run has: a model that fits only when
    sharded across 2 processes passes with shards=2 and is refused alone."""
    mcfg = GPTConfig.classic(block_size=64, vocab_size=256, n_layer=4, n_head=4, n_embd=256)
    cfg = cfg_for("--batch_size=1", "--block_size=64", "--optimizer=adamw", "--sample_tokens=0")
    one, two = training_bytes(mcfg, cfg, 4), training_bytes(mcfg, cfg, 4, shards=2)
    monkeypatch.setenv("QUILLGPT_MEMORY_LIMIT", str((one + two) // 2))
    check_training_fits(mcfg, cfg, "cpu", 4, shards=2)
    with pytest.raises(DeviceError, match="needs at least"):
        check_training_fits(mcfg, cfg, "cpu", 4)
