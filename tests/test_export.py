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
