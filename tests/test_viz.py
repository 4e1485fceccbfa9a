"""viz/: token labels, the sampler recorder, the HTML page's contents, the PNG grid, --attention paths.

The page is checked as text here (every token, the tensor's numbers, nothing outside itself, no
injection); tests/test_viz_browser.py checks it in a real browser.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_model
from data.tokenizer import CharTokenizer, train_bpe
from model import GPTConfig
from viz.attention_html import SCALE, attention_page
from viz.attention_png import attention_grid_png
from viz.picture import attention_view, path_problem, window_tokens, write_picture
from viz.record import NextTokenRecorder
from viz.tokens import token_labels, visible

HOSTILE = "</script><script>alert(1)</script><!-- & <img src=x onerror=alert(2)>"
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ROMEO:\n\t" + HOSTILE))


def page_json(page: str) -> dict:
    """The data the page's script reads, parsed back from its <script type="application/json"> tag."""
    m = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def sampled() -> dict:
    """A random classic model, a char tokenizer full of markup characters, and one recorded generation."""
    tok = CharTokenizer(CHARS)
    model = random_model(GPTConfig.classic(block_size=96, vocab_size=tok.vocab_size, n_layer=2, n_head=3, n_embd=24),
                         seed=3, std=0.3)
    ids = tok.encode("ROMEO:\n" + HOSTILE)
    rec = NextTokenRecorder(temperature=0.9, top_k=6, top_p=0.9)
    out = model.generate(torch.tensor([ids]), 20, seed=1, on_step=rec, temperature=0.9, top_k=6, top_p=0.9)
    return dict(tok=tok, model=model, ids=ids, out=out[0].tolist(), rec=rec)


# ---------------------------------------------------------------------------- tokens


def is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_visible_labels_show_whitespace_and_cut_characters() -> None:
    assert visible("a b\nc\td\x01") == "a·b↵c→d\\x01"
    bpe = train_bpe(["猫が好き 🙂 猫が好き 🙂 " * 20], vocab_size=262)
    ids = bpe.encode("猫 🙂")
    labels = token_labels(bpe, ids)
    assert "".join(labels).count("·") == 1
    # a character split across tokens shows its bytes as \xNN, never a replacement character
    cut = [t for t in ids if not is_utf8(bpe.decode_bytes([t]))]
    assert cut, "the fixture must split a character across tokens"
    assert all(re.search(r"\\x[0-9a-f]{2}", label) for t, label in zip(ids, labels) if t in cut)
    assert "\ufffd" not in "".join(labels)
    assert token_labels(bpe, [bpe.eot]) == ["<|endoftext|>"]
    assert token_labels(bpe, [bpe.vocab_size + 3]) == [f"<{bpe.vocab_size + 3}>"]


# ---------------------------------------------------------------------------- recorder


def test_recorder_keeps_the_sampled_distribution_and_the_draw(sampled: dict) -> None:
    from model.sampling import filtered_probs

    rec, model, out, n0 = sampled["rec"], sampled["model"], sampled["out"], len(sampled["ids"])
    assert len(rec.steps) == 20
    for i, step in enumerate(rec.steps):
        with torch.no_grad():
            logits = model(torch.tensor([out[:n0 + i]]))[0][:, -1]
        raw = torch.softmax(logits[0], -1)
        filt = filtered_probs(logits, 0.9, 6, 0.9)[0]
        filt = filt / filt.sum()
        assert step["ids"] == torch.topk(raw, 5).indices.tolist()
        np.testing.assert_allclose(step["p_model"], raw[step["ids"]].numpy(), atol=1e-6)
        np.testing.assert_allclose(step["p"], filt[step["ids"]].numpy(), atol=1e-6)
        assert step["chosen"] == out[n0 + i] and step["chosen_p"] > 0
        assert step["chosen_rank"] == int((raw > raw[step["chosen"]]).sum()) + 1
    # top-p 0.9 of a peaked model cuts some of the top 5 somewhere: the page can show "cut"
    assert any(p == 0 for step in rec.steps for p in step["p"])


def test_recorder_greedy_is_one_hot() -> None:
    rec = NextTokenRecorder(temperature=0.0)
    logits = torch.tensor([[0.1, 2.0, 1.0, -1.0, 0.5, 0.0]])
    rec(logits, torch.tensor([1]))
    step = rec.steps[0]
    assert step["ids"] == [1, 2, 4, 0, 5] and step["p"] == [1.0, 0.0, 0.0, 0.0, 0.0] and step["chosen_rank"] == 1


# ---------------------------------------------------------------------------- HTML


def test_page_holds_every_token_and_the_tensors_numbers(sampled: dict) -> None:
    tok, model, out, ids, rec = (sampled[k] for k in ("tok", "model", "out", "ids", "rec"))
    view = attention_view(model, tok, out, len(ids), rec.steps, rec.settings(), title=HOSTILE)
    page = attention_page(view)
    data = page_json(page)
    maps = model.attention_maps(torch.tensor([out]))[:, 0].numpy()  # the tensor, computed again
    assert data["texts"] == [tok.decode([t]) for t in out]
    assert data["tokens"] == token_labels(tok, out) and data["ids"] == out
    assert data["first_generated"] == len(ids) and data["n_layer"] == 2 and data["n_head"] == 3
    T = len(out)
    for layer in range(2):
        for head in range(3):
            rows = data["attn"][layer][head]
            assert [len(r) for r in rows] == list(range(1, T + 1))  # lower triangle: the future is not stored
            for i in range(T):
                np.testing.assert_allclose(np.array(rows[i]) / SCALE, maps[layer, head, i, :i + 1], atol=0.5 / SCALE)
    cands = data["candidates"]
    assert cands[:len(ids)] == [None] * len(ids)
    for i, step in enumerate(rec.steps):
        c = cands[len(ids) + i]
        assert c["ids"] == step["ids"] and c["chosen"] == out[len(ids) + i]
        assert c["labels"] == token_labels(tok, step["ids"])
    assert data["settings"] == {"temperature": 0.9, "top_k": 6, "top_p": 0.9, "min_p": None}


def test_page_references_nothing_outside_itself_and_escapes_every_token(sampled: dict) -> None:
    tok, model, out, ids, rec = (sampled[k] for k in ("tok", "model", "out", "ids", "rec"))
    view = attention_view(model, tok, out, len(ids), rec.steps, rec.settings(), title="ROMEO")
    page = attention_page(view)
    lowered = page.lower()
    for outside in ("http:", "https:", "ftp:", "src=", "href=", "url(", "@import", "fetch(", "xmlhttprequest",
                    "<link", "<iframe", "<img", "<object", "<embed", "import(", "websocket", "eventsource"):
        assert outside not in lowered, outside
    assert not re.search(r"""["'(=]\s*//""", page)  # no protocol-relative address either
    # a hostile title and hostile tokens: exactly the page's own two scripts; nothing opened a tag or comment
    view.title = HOSTILE
    page = attention_page(view)
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<!--" not in page and "<img" not in page and HOSTILE not in page
    assert "&lt;/script&gt;" in page.split("<body>")[1].split("</header>")[0]  # the title, escaped


def test_html_window_keeps_big_models_pages_light() -> None:
    assert window_tokens(2, 3, 96, ".html") == 96
    assert window_tokens(4, 4, 1024, ".png") == 256
    t = window_tokens(12, 12, 1024, ".html")  # GPT-2 small
    assert 100 < t < 256 and 12 * 12 * t * (t + 1) // 2 <= 1_500_000


def test_long_texts_keep_their_last_tokens_and_candidates(sampled: dict) -> None:
    tok, model, out, ids, rec = (sampled[k] for k in ("tok", "model", "out", "ids", "rec"))
    view = attention_view(model, tok, out, len(ids), rec.steps, rec.settings(), max_tokens=30)
    assert view.ids == out[-30:] and view.cut == len(out) - 30
    assert view.first_generated == len(ids) - view.cut
    assert view.candidates[view.first_generated]["chosen"] == out[len(ids)]
    # the maps are the model's own over the window (the context it saw starts there)
    torch.testing.assert_close(torch.from_numpy(view.maps), model.attention_maps(torch.tensor([out[-30:]]))[:, 0])


# ---------------------------------------------------------------------------- PNG and paths


def test_png_grid_is_a_picture_of_every_layer_and_head(sampled: dict, tmp_path: Path) -> None:
    from PIL import Image

    tok, model, out, ids = (sampled[k] for k in ("tok", "model", "out", "ids"))
    view = attention_view(model, tok, out, len(ids), title="grid")
    write_picture(tmp_path / "a.png", view)
    img = Image.open(tmp_path / "a.png")
    assert img.format == "PNG" and img.width > 600 and img.height > 400
    assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 50  # heatmaps, not a blank canvas
    assert list(tmp_path.iterdir()) == [tmp_path / "a.png"]  # written atomically: no temp file left
    many = np.random.default_rng(0).dirichlet(np.ones(80), size=(1, 1, 80)).astype(np.float32)
    small = Image.open(io.BytesIO(attention_grid_png(many, [str(i) for i in range(80)])))
    assert small.width < img.width * 2  # 80 tokens are cropped to the last 64


def test_path_problems_are_named(tmp_path: Path) -> None:
    assert path_problem(str(tmp_path / "a.html")) is None and path_problem(str(tmp_path / "A.PNG")) is None
    assert "must end in .png" in path_problem(str(tmp_path / "a.svg"))
    assert "no such folder" in path_problem(str(tmp_path / "missing" / "a.png"))
    (tmp_path / "d.png").mkdir()
    assert "is a folder" in path_problem(str(tmp_path / "d.png"))
