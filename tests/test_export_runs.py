"""Runs trained here by train.py, exported by export.py, against transformers: logits, 100 greedy tokens,
and sample.py --temperature 0's text rebuilt from AutoTokenizer + the HF model."""

from __future__ import annotations

import json

import pytest

from conftest import shared_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

RUNS = {"classic": ["--model=classic"], "modern": ["--model=modern"],
        "modern_gqa": ["--model=modern", "--n_kv_head=1"]}
ITERS = 40
PROMPT = "ROMEO:\nBut soft"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{name: (run folder, exported HF folder)}: tiny runs on tinyshakespeare, a few seconds each."""
    import export
    import train

    text = shared_file("data/tinyshakespeare.txt")
    root = tmp_path_factory.mktemp("export_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, extra in RUNS.items():
            run, hf = root / name, root / f"{name}_hf"
            argv = [f"--input={text}", "--dataset=tinyshakespeare", f"--data_dir={root / 'data'}",
                    f"--out_dir={run}", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=128",
                    "--batch_size=8", f"--max_iters={ITERS}", f"--eval_interval={ITERS}", "--eval_iters=2",
                    "--warmup_iters=5", "--sample_tokens=0", "--device=cpu", "--dtype=float32", *extra]
            assert train.main(argv) == 0
            assert export.main([f"--out_dir={run}", f"--to={hf}"]) == 0
            out[name] = (run, hf)
    finally:
        torch.set_num_threads(threads)
    return out


def ours_and_theirs(run, hf_folder):
    from model import GPT

    return (GPT.from_pretrained(run / "best" if (run / "best").is_dir() else run).eval(),
            transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval(),
            transformers.AutoTokenizer.from_pretrained(hf_folder))


@pytest.mark.parametrize("name", list(RUNS))
def test_logits_and_100_greedy_tokens_match(runs, name):
    run, folder = runs[name]
    ours, hf, htok = ours_and_theirs(run, folder)
    arch = {"classic": "GPT2LMHeadModel"}.get(name, "NanoChatForCausalLM")
    assert type(hf).__name__ == arch
    V = len(htok)
    x = torch.tensor([htok("First Citizen:\nBefore we proceed any further, hear me speak.")["input_ids"]])
    with torch.no_grad():
        assert (ours(x)[0][..., :V] - hf(x).logits).abs().max() < 1e-4
        prompt = x[:, :10]
        mine = ours.generate(prompt, 100, temperature=0.0, vocab_limit=V)[0].tolist()
        theirs = hf.generate(prompt, max_new_tokens=100, do_sample=False, attention_mask=torch.ones_like(prompt),
                             eos_token_id=None)[0].tolist()
    assert len(theirs) == 110 and mine == theirs


@pytest.mark.parametrize("name", list(RUNS))
def test_autotokenizer_and_hf_model_reproduce_sample_py(runs, name, capsys):
    from sample import main as sample_main

    run, folder = runs[name]
    capsys.readouterr()
    assert sample_main([f"--out_dir={run}", "--prompt", PROMPT, "--temperature=0", "--max_new_tokens=100"]) == 0
    written = capsys.readouterr().out
    _, hf, htok = ours_and_theirs(run, folder)
    ids = torch.tensor([htok(PROMPT)["input_ids"]])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=100, do_sample=False, attention_mask=torch.ones_like(ids),
                          eos_token_id=None)[0].tolist()
    assert written == htok.decode(out) + "\n"


def test_model_card_names_tokens_trained(runs):
    run, folder = runs["modern_gqa"]
    meta = json.loads((run / "config.json").read_text(encoding="utf-8"))
    tokens = ITERS * 8 * 128  # iterations x batch x block: one process, no accumulation
    assert meta["resolved"]["tokens_per_iter"] * meta["iter"] == tokens
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert f"- tokens trained: {tokens:,}\n" in card and f"- iterations: {ITERS}\n" in card
    assert "library_name: transformers" in card and "--dataset=tinyshakespeare" in card
    assert f"- final val loss: {meta['val_loss']:.4f}" in card and "- val bits per byte:" in card
