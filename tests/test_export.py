"""export.py against transformers itself: logits, greedy generation and tokenizers match ours."""

from __future__ import annotations

import pytest

from conftest import random_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4


def export_run(tmp_path, config, tok):
    import export
    from model import save_model

    model = random_model(config)
    run, out = tmp_path / "run", tmp_path / "hf"
    save_model(model, run, {"tokenizer": tok.save(run), "iter": 10, "val_loss": 2.5})
    assert export.main([f"--out_dir={run}", f"--to={out}"]) == 0
    return model, out


@pytest.mark.parametrize("preset,over", [("classic", {}), ("modern", {}), ("modern", {"n_kv_head": 1}),
                                         ("modern", {"embed_norm": True}),
                                         ("modern", {"embed_norm": True, "n_kv_head": 2}),
                                         ("classic", {"n_kv_head": 2, "bias": False, "tie_embeddings": False})])
def test_logits_and_greedy_match(tmp_path, preset, over):
    from data.tokenizer import CharTokenizer
    from model import GPTConfig

    tok = CharTokenizer(TEXT)
    cfg = GPTConfig.preset(preset, block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=32, **over)
    model, out = export_run(tmp_path, cfg, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    htok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok.encode(TEXT)[:60]
    assert htok(TEXT)["input_ids"][:60] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (model(x)[0][..., :tok.vocab_size] - hf(x).logits).abs().max() < 1e-4
        prompt = x[:, :8]
        ours = model.generate(prompt, 50, temperature=0.0, vocab_limit=tok.vocab_size)[0].tolist()
        theirs = hf.generate(prompt, max_new_tokens=50, do_sample=False, attention_mask=torch.ones_like(prompt),
                             eos_token_id=None)[0].tolist()
    assert ours == theirs
    assert htok.decode(theirs) == tok.decode(ours)


def test_tokenizers_match_on_val_split(tmp_path, tinyshakespeare, gpt2_ranks):
    from data.hf_tokenizer import write_hf_tokenizer
    from data.tokenizer import CharTokenizer, TiktokenTokenizer, get_gpt2_encoding, train_bpe

    text = tinyshakespeare.read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]
    extra = "héllo wörld — 日本語 🙂 <|endoftext|>"
    toks = [CharTokenizer(text + extra), train_bpe([text[:200_000]], 600),
            TiktokenTokenizer("gpt2", get_gpt2_encoding(str(gpt2_ranks)))]
    for i, tok in enumerate(toks):
        write_hf_tokenizer(tok, tmp_path / str(i), 1024)
        htok = transformers.AutoTokenizer.from_pretrained(tmp_path / str(i))
        for s in (val, extra):
            assert htok(s)["input_ids"] == tok.encode(s), tok.kind
            assert htok.decode(tok.encode(s)) == s


def test_refuses_what_no_architecture_holds(tmp_path):
    from data.tokenizer import CharTokenizer
    from model import GPTConfig
    from runtime.errors import CheckpointError

    tok = CharTokenizer(TEXT)
    cfg = GPTConfig.modern(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, qk_norm=False)
    with pytest.raises(CheckpointError, match="qk_norm"):
        export_run(tmp_path, cfg, tok)


@pytest.mark.parametrize("over", [{"tie_word_embeddings": False, "num_key_value_heads": 4},
                                  {"tie_word_embeddings": True, "num_key_value_heads": 1},
                                  {"tie_word_embeddings": False, "num_key_value_heads": 2,
                                   "final_logit_softcapping": None, "rms_norm_eps": 1e-5}])
def test_transformers_nanochat_folder_loads(tmp_path, over):
    from model import GPT

    torch.manual_seed(0)
    cfg = transformers.NanoChatConfig(vocab_size=97, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=64, **over)
    hf = transformers.NanoChatForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers' init leaves the head near zero: make every logit count
        for p in hf.parameters():
            p.normal_(0, 0.3)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    assert ours.config.n_kv_head == over["num_key_value_heads"]
    x = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        ref = hf(x).logits
        assert ref.std() > 0.5
        assert (ours(x)[0] - ref).abs().max() < 1e-4


@pytest.mark.parametrize("embed_norm", [True, False])
def test_own_nanochat_export_comes_back(tmp_path, embed_norm):
    from data.tokenizer import CharTokenizer
    from model import GPT, GPTConfig

    tok = CharTokenizer(TEXT)
    cfg = GPTConfig.modern(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                           embed_norm=embed_norm)
    model, out = export_run(tmp_path, cfg, tok)
    back = GPT.from_pretrained(out).eval()
    x = torch.tensor([tok.encode(TEXT)[:60]])
    with torch.no_grad():
        # the gains fold into the matrices on the way out, so the numbers agree to rounding, not bit for bit
        assert (back(x)[0][..., :tok.vocab_size] - model.eval()(x)[0][..., :tok.vocab_size]).abs().max() < 1e-5
        prompt = x[:, :8]
        assert (back.generate(prompt, 60, temperature=0.0, vocab_limit=tok.vocab_size).tolist()
                == model.generate(prompt, 60, temperature=0.0, vocab_limit=tok.vocab_size).tolist())


@pytest.mark.parametrize("field,value,match", [("model_type", "llama", "model_type 'llama'"),
                                               ("attention_bias", True, "attention_bias"),
                                               ("hidden_act", "silu", "hidden_act"),
                                               ("rope_parameters", {"rope_type": "yarn"}, "rope_type"),
                                               ("intermediate_size", 100, "intermediate_size"),
                                               ("head_dim", 8, "head_dim")])
def test_unsupported_nanochat_fields_refused_by_name(tmp_path, field, value, match):
    import json

    from model import GPT
    from runtime.errors import CheckpointError

    cfg = transformers.NanoChatConfig(vocab_size=50, hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32)
    transformers.NanoChatForCausalLM(cfg).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    meta[field] = value
    (tmp_path / "config.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(CheckpointError, match=match) as e:
        GPT.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_push_to_unreachable_hub_is_one_line_exit_2_and_the_folder_stays(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from conftest import ROOT
    from data.tokenizer import CharTokenizer
    from model import GPTConfig, save_model

    tok = CharTokenizer(TEXT)
    run, out = tmp_path / "run", tmp_path / "hf"
    save_model(random_model(GPTConfig.modern(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                                             n_embd=16)), run, {"tokenizer": tok.save(run)})
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_garbage",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "export.py", f"--out_dir={run}", f"--to={out}", "--push_to_hub=u/n"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "could not push to the hub repo 'u/n'" in proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert transformers.AutoModelForCausalLM.from_pretrained(out) is not None  # the local folder is whole
