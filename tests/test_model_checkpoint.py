"""model/checkpoint.py, the run folder's one owner: safetensors round trips without pickle, clear
CheckpointErrors for bad files, which checkpoint a folder means, the train state, and GPT-2 import
(parity with Hugging Face transformers' GPT-2: logits, greedy continuations, parameter count).

Everything is random-initialised and saved to tmp folders: no test touches the network.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_hf_gpt2, random_model
from model import GPT, CheckpointError, GPTConfig, from_pretrained, load_model, save_model
from model import checkpoint
from model.checkpoint import (BEST_DIR, CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, checkpoint_folder, is_run_folder,
                              load_tensors, load_train_state, looks_local, model_config, read_safetensors,
                              save_train_state, tokenizer_home)

TINY = dict(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any accidental hub access fails fast instead of reaching the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: 8-byte little-endian length, then JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------- weights: save_model / load_model


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
    keys = set(safetensors_header(tmp_path / WEIGHTS_FILE)) - {"__metadata__"}
    if preset == "classic":  # tied head stored once and still tied after loading
        assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    else:
        assert "lm_head.weight" in keys
    assert not any("rope" in k or "pos_ids" in k for k in keys)  # derived buffers are not saved


def test_files_are_plain_safetensors_and_json_and_loading_never_unpickles(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(GPTConfig.classic(**TINY))
    save_model(model, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    # any safetensors reader gets every tensor back, bit for bit, with no quillgpt code involved
    tensors = load_file(str(weights))
    assert all(torch.equal(tensors[k], v) for k, v in checkpoint.state_tensors(model).items())
    assert safetensors_header(weights)["__metadata__"] == {"format": "pt"}
    raw = weights.read_bytes()
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")  # neither a pickle nor a torch.save zip
    assert json.loads((tmp_path / CONFIG_FILE).read_text(encoding="utf-8"))["model"]["n_layer"] == 2

    def refuse(*args, **kwargs):
        raise AssertionError("loading a run folder must not unpickle anything")

    for name in ("Unpickler", "load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, meta = load_model(tmp_path)
    assert same_weights(loaded, model) and meta["model"] == model.config.to_dict()
    assert same_weights(from_pretrained(str(tmp_path)), model)


def test_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run folder not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "bad header"])
def test_corrupt_weights_raise(tmp_path: Path, damage: str) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    path = tmp_path / WEIGHTS_FILE
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
    path = tmp_path / WEIGHTS_FILE
    tensors = read_safetensors(path)
    wider = GPT(GPTConfig.classic(**{**TINY, "n_embd": 32}))
    with pytest.raises(CheckpointError, match=r"does not match its config: transformer\.\S+ has shape \(\d+(, \d+)?,?\), config expects"):
        load_tensors(wider, tensors, path)
    deeper = GPT(GPTConfig.classic(**{**TINY, "n_layer": 3}))
    with pytest.raises(CheckpointError, match=r"missing \['transformer\.h\.2"):
        load_tensors(deeper, tensors, path)
    shallower = GPT(GPTConfig.classic(**{**TINY, "n_layer": 1}))
    with pytest.raises(CheckpointError, match=r"unexpected \['transformer\.h\.1"):
        load_tensors(shallower, tensors, path)
    untied = GPT(GPTConfig.classic(**TINY, tie_embeddings=False))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_tensors(untied, tensors, path)
    with pytest.raises(CheckpointError, match="not a table of tensors"):
        load_tensors(GPT(GPTConfig.classic(**TINY)), {"transformer.wte.weight": [1, 2]}, path)


@pytest.mark.parametrize("config_text, match", [
    ("{not json", "corrupt"),
    ("[1, 2]", "not a JSON object"),
    ('{"step": 3}', "no 'model' section"),
    ('{"model": {"n_layer": 0}}', "bad model config.*n_layer"),
    ('{"model": {"n_layers": 2}}', "bad model config.*unknown GPTConfig fields"),
])
def test_bad_config_json_raises(tmp_path: Path, config_text: str, match: str) -> None:
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    (tmp_path / CONFIG_FILE).write_text(config_text, encoding="utf-8")
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path)


def test_save_model_unwraps_compiled_models(tmp_path: Path) -> None:
    model = random_model(GPTConfig.modern(**TINY))
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule exposes
    save_model(wrapper, tmp_path)
    assert not any(k.startswith("_orig_mod") for k in safetensors_header(tmp_path / WEIGHTS_FILE))
    loaded, _ = load_model(tmp_path)
    assert same_weights(loaded, model)


def test_load_model_applies_config_overrides(tmp_path: Path) -> None:
    model = random_model(GPTConfig.modern(**TINY))
    save_model(model, tmp_path)
    loaded, meta = load_model(tmp_path, dropout=0.1)
    assert loaded.config.dropout == 0.1 and meta["model"]["dropout"] == 0.0  # the file is not rewritten
    assert same_weights(loaded, model)
    assert model_config({"model": model.config.to_dict()}, "x", dropout=0.2).dropout == 0.2
    with pytest.raises(CheckpointError, match="bad model config.*dropout"):
        load_model(tmp_path, dropout=1.5)


# ---------------------------------------------------------------------------- what a folder is


def test_checkpoint_folder_picks_best_latest_or_auto(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run folder not found"):
        checkpoint_folder(tmp_path / "none")
    run = tmp_path / "run"
    save_model(random_model(GPTConfig.classic(**TINY)), run)
    assert checkpoint_folder(run) == (run, "latest")  # no best/ yet
    assert checkpoint_folder(run, "latest") == (run, "latest")
    with pytest.raises(CheckpointError, match="no best checkpoint.*use --checkpoint=latest"):
        checkpoint_folder(run, "best")
    save_model(random_model(GPTConfig.classic(**TINY), seed=1), run / BEST_DIR)
    assert checkpoint_folder(run) == (run / BEST_DIR, "best")
    assert checkpoint_folder(run, "latest") == (run, "latest")
    (run / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        checkpoint_folder(run, "latest")


def test_is_run_folder_and_looks_local(tmp_path: Path) -> None:
    assert not is_run_folder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text('{"n_embd": 64}', encoding="utf-8")  # a Hugging Face config
    assert not is_run_folder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{broken", encoding="utf-8")
    assert not is_run_folder(tmp_path)
    save_model(random_model(GPTConfig.classic(**TINY)), tmp_path)
    assert is_run_folder(tmp_path)
    for local in ("./out", "../x", "~/run", "/abs/path", "a/b/c", "a\\b", str(tmp_path)):
        assert looks_local(local), local
    for hub in ("gpt2", "openai-community/gpt2"):
        assert not looks_local(hub), hub


def test_tokenizer_home_lets_best_use_its_parents_file(tmp_path: Path) -> None:
    spec = {"kind": "char", "file": "tokenizer.json"}
    best = tmp_path / BEST_DIR
    best.mkdir()
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert tokenizer_home(best, {"tokenizer": spec}) == (spec, tmp_path)
    (best / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert tokenizer_home(best, {"tokenizer": spec}) == (spec, best)  # its own file wins
    assert tokenizer_home(tmp_path, {"tokenizer": spec}) == (spec, tmp_path)
    with pytest.raises(CheckpointError, match="no 'tokenizer' spec"):
        tokenizer_home(tmp_path, {})


# ---------------------------------------------------------------------------- train_state.pt


def test_train_state_round_trips(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "iter": 12, "best_val_loss": 1.5, "names": ["a", "b"]}
    save_train_state(tmp_path, state)
    back = load_train_state(tmp_path)
    assert back["format"] == checkpoint.STATE_FORMAT and back["iter"] == 12 and back["names"] == ["a", "b"]
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_crash_while_saving_the_train_state_keeps_the_old_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    save_train_state(tmp_path, {"model": {"w": torch.zeros(3)}, "iter": 1})
    before = (tmp_path / STATE_FILE).read_bytes()
    real_save = torch.save

    def dies_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are out, then the process "dies"
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", dies_mid_write)
    with pytest.raises(CheckpointError, match="simulated crash mid-write; the previous file was kept"):
        save_train_state(tmp_path, {"model": {"w": torch.ones(1000)}, "iter": 2})
    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file is gone too
    assert load_train_state(tmp_path)["iter"] == 1


def big_state(mb: int = 40) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.randn(256, 1024) for i in range(mb)}  # 1 MB each


def peak_python_memory(work) -> int:
    """Peak bytes of Python allocations (bytes objects, BytesIO buffers) while ``work`` runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_saving_streams_to_the_file_without_a_copy_in_memory(tmp_path: Path) -> None:
    """A gpt2-xl save once built the whole state as bytes before writing (tens of GB of host RAM):
    train_state.pt and model.safetensors now stream from the tensors into the temp file."""
    tensors = big_state()
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    assert peak_python_memory(lambda: save_train_state(tmp_path, {"model": tensors, "iter": 1})) < size / 10
    model = GPT(GPTConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=512))
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert weights > 10_000_000
    assert peak_python_memory(lambda: save_model(model, tmp_path / "run")) < weights / 10
    loaded, _ = load_model(tmp_path / "run")
    assert same_weights(model, loaded)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_the_train_state_is_memory_mapped_not_read_into_memory(tmp_path: Path) -> None:
    """Every rank of a resume reads train_state.pt: mapped, its pages are shared and loaded on use."""
    save_train_state(tmp_path, {"model": big_state(8), "iter": 3})
    state = load_train_state(tmp_path)
    maps = Path("/proc/self/maps").read_text(encoding="utf-8")
    assert str((tmp_path / STATE_FILE).resolve()) in maps
    assert state["iter"] == 3 and state["model"]["w0"].shape == (256, 1024)


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_train_states_raise_without_running_anything(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="run folder .* does not exist"):
        load_train_state(tmp_path / "none")
    with pytest.raises(CheckpointError, match=f"no {STATE_FILE}"):
        load_train_state(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / STATE_FILE, "wb") as f:  # a bare pickle (not torch.save's zip)
        pickle.dump({"format": 1, "model": Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match=STATE_FILE):
        load_train_state(tmp_path)
    torch.save({"format": 1, "model": Exploit(marker)}, tmp_path / STATE_FILE)  # torch.save's zip around it
    with pytest.raises(CheckpointError, match="refusing .*pickled objects or code.*not loaded"):
        load_train_state(tmp_path)
    assert not marker.exists()
    torch.save({"format": 99, "model": {}}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match="not a quillgpt train_state"):
        load_train_state(tmp_path)
    save_train_state(tmp_path, {"model": {"w": torch.zeros(100)}})
    raw = (tmp_path / STATE_FILE).read_bytes()
    (tmp_path / STATE_FILE).write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_train_state(tmp_path)


# ---------------------------------------------------------------------------- GPT-2 in Hugging Face format


def hf_gpt2(folder: Path, activation: str = "gelu_new", seed: int = 0):
    """A random GPT-2 (2 layers, 4 heads, 64 wide) saved as safetensors by transformers."""
    hf = random_hf_gpt2(folder, seed, n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=100,
                        activation_function=activation)
    assert (folder / WEIGHTS_FILE).is_file()
    return hf


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_logits_match_transformers(tmp_path: Path, activation: str) -> None:
    hf = hf_gpt2(tmp_path, activation)
    ours = from_pretrained(str(tmp_path)).eval()
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
    ours = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=40,
                          min_new_tokens=40, pad_token_id=0)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(idx, 40, temperature=0.0, use_cache=use_cache), ref)


def test_gpt2_124m_parameter_count_equals_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())  # 12 x 768, 1024 positions, 50257 tokens
        ours = GPT(GPTConfig.classic(vocab_size=50257, block_size=1024))
    theirs = sum(p.numel() for p in hf.parameters())
    assert theirs == 124_439_808
    assert ours.num_params() == theirs


def test_from_pretrained_loads_a_quillgpt_run_folder_with_overrides(tmp_path: Path) -> None:
    model = random_model(GPTConfig.modern(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    save_model(model, tmp_path)
    loaded = from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0], rtol=0, atol=0)
    # overrides reach a run folder's config, as they do a GPT-2 folder's
    tuned = from_pretrained(str(tmp_path), dropout=0.1)
    assert tuned.config.dropout == 0.1 and same_weights(tuned, model)


def test_from_pretrained_applies_overrides_to_a_hf_folder(tmp_path: Path) -> None:
    hf_gpt2(tmp_path)
    assert from_pretrained(str(tmp_path)).config.dropout == 0.0
    assert from_pretrained(str(tmp_path), dropout=0.1).config.dropout == 0.1


def test_from_pretrained_errors_are_clear_and_offline(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="no such folder"):
        from_pretrained("./not/a/run")
    with pytest.raises(CheckpointError, match="config.json"):
        from_pretrained(str(tmp_path))  # a folder without config.json
    hf_gpt2(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes((tmp_path / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_pretrained(str(tmp_path))


def test_from_pretrained_rejects_a_mismatched_hf_folder(tmp_path: Path) -> None:
    hf_gpt2(tmp_path)
    cfg = (tmp_path / CONFIG_FILE).read_text(encoding="utf-8").replace('"n_embd": 64', '"n_embd": 32')
    (tmp_path / CONFIG_FILE).write_text(cfg, encoding="utf-8")
    with pytest.raises(CheckpointError, match="shape"):
        from_pretrained(str(tmp_path))


def test_unsupported_hf_activation_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unsupported GPT-2 activation_function 'swish'"):
        checkpoint.config_from_hf({"n_embd": 16, "vocab_size": 10, "n_layer": 1, "n_head": 2,
                                   "activation_function": "swish"})
    with pytest.raises(CheckpointError, match="not a usable GPT-2 config.json"):
        checkpoint.config_from_hf({"n_embd": 16})
