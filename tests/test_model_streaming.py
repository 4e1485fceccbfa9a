"""model/streaming.py: stop strings, UTF-8-safe row decoding, ordered printing, and the loop that drives them.

The loop is checked against an independent reference: greedy decoding by full forwards and argmax,
decoded by the tokenizer itself.
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

from model import GPT, GPTConfig  # noqa: E402
from model.streaming import SEPARATOR, encode_prompt, stream_samples, unescape_stop  # noqa: E402

UTF8_TEXT = "猫が好きです。🙂🐍 naïve café — 日本語のテキスト 🎉✨\n" * 40
CHARS = sorted(set("to be or not to be, that is the question.\n"))


def char_model(seed: int = 0):
    from data.tokenizer import CharTokenizer

    tok = CharTokenizer(CHARS)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16)).eval()
    return tok, model


def greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ``ids`` by full forwards (no cache), the reference for the streamed loop."""
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, model(x)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[0, len(ids):].tolist()


def run(model, tok, prompt: str, **kw):
    out = io.BytesIO()
    ids, text = encode_prompt(tok, prompt)
    kw = {"num_samples": 1, "max_new_tokens": 12, "sampling": {"temperature": 0.0}, **kw}
    report = stream_samples(model, tok, ids, text, out, **kw)
    return out.getvalue().decode("utf-8"), report


# ---------------------------------------------------------------------------- pure helpers


def test_row_decoder_holds_back_stop_prefixes_and_joins_split_characters():
    from data.tokenizer import train_bpe
    from model.streaming import RowDecoder, first_stop, held_back, render_row

    assert first_stop("xxabcx", ["abc", "b"]) == (3, 4)  # "b" completes first
    assert first_stop("xxabcx", ["abc", "bc"]) == (2, 5)  # same end: the earlier start wins
    assert held_back("hello ab", ["abc"]) == 2 and held_back("hello", ["abc"]) == 0

    tok = train_bpe([UTF8_TEXT], vocab_size=270)
    ids = tok.encode("猫が好き🙂END tail")
    row = RowDecoder(tok, stops=["END"], stop_id=None)
    pieces = [row.feed(t) for t in ids]
    assert row.finished and "".join(pieces) == "猫が好き🙂"
    assert all("\ufffd" not in p for p in pieces)
    assert render_row(tok, ids, ["END"], None) == "猫が好き🙂"
    row = RowDecoder(tok, stops=["ENDING"], stop_id=None)  # a prefix that never completes is text after all
    out = "".join(row.feed(t) for t in tok.encode("x END")) + row.finish()
    assert out == "x END" and row.finished
    cut = tok.encode("ok 🙂")[:-1]  # the token budget ran out inside the emoji: its bytes are dropped
    row = RowDecoder(tok, stops=[], stop_id=None)
    assert "".join(row.feed(t) for t in cut) + row.finish() == "ok " == render_row(tok, cut, [], None)


def test_printer_keeps_sample_order_while_rows_finish_out_of_order():
    from model.streaming import Printer

    out = io.BytesIO()
    p = Printer(out, 3, prompt="P:")
    p.emit(1, "b1")  # sample 2 is buffered while sample 1 is live
    p.emit(0, "a1")
    assert out.getvalue() == "P:a1".encode()
    p.emit(1, "b2")
    p.finish(1)
    p.emit(2, "c1")
    p.finish(0)  # sample 1 done: sample 2 (already complete) follows, then sample 3 goes live
    assert out.getvalue() == "P:a1\n---------------\nP:b1b2\n---------------\nP:c1".encode()
    p.emit(2, "c2")
    p.finish(2)
    assert out.getvalue().decode().split("\n---------------\n") == ["P:a1", "P:b1b2", "P:c1c2\n"]


def test_unescape_stop_reads_three_escapes_only():
    assert unescape_stop("\\n\\n") == "\n\n"
    assert unescape_stop("a\\tb\\\\n") == "a\tb\\n"  # an escaped backslash, then a plain n
    assert unescape_stop("\\x41 \\") == "\\x41 \\"  # anything else stays as written


def test_empty_prompt_starts_a_document():
    from data.tokenizer import CharTokenizer, train_bpe

    assert encode_prompt(CharTokenizer(CHARS), "") == ([CHARS.index("\n")], "\n")
    assert encode_prompt(CharTokenizer(list("ab")), "") == ([0], "")  # no newline: first character, unprinted
    bpe = train_bpe([UTF8_TEXT], vocab_size=270)
    assert encode_prompt(bpe, "") == ([bpe.eot], "")


# ---------------------------------------------------------------------------- the loop


def test_streamed_batch_is_the_greedy_reference_in_order():
    tok, model = char_model()
    ids = tok.encode("to be")
    want = "to be" + tok.decode(greedy(model, ids, 12)) + "\n"
    text, report = run(model, tok, "to be", num_samples=3)
    assert text == SEPARATOR.join([want] * 3)
    assert report.code == 0 and report.steps == 12 and report.batch == 3
    assert report.sample_one == greedy(model, ids, 12)
    assert report.first_token <= report.seconds and report.compile_seconds is None
    assert "12 steps x 3 sample(s) = 36 tokens in" in report.speed()


def test_stop_string_cuts_every_row_and_ends_early_unstreamed_alike():
    tok, model = char_model()
    continuation = tok.decode(greedy(model, tok.encode("to be"), 24))
    stop = continuation[5:7]
    cut = continuation[:continuation.index(stop)]
    streamed, report = run(model, tok, "to be", num_samples=2, max_new_tokens=200, stops=[stop, "never"])
    assert streamed == SEPARATOR.join(["to be" + cut + "\n"] * 2)
    assert report.steps < 200  # every row stopped: the generation ended
    whole, _ = run(model, tok, "to be", num_samples=2, max_new_tokens=200, stops=[stop, "never"], stream=False)
    assert whole == streamed


def test_seeded_sampling_repeats_and_rows_differ():
    tok, model = char_model()
    kw = dict(num_samples=3, max_new_tokens=30, sampling={"temperature": 1.5}, seed=5)
    a, _ = run(model, tok, "to", **kw)
    b, _ = run(model, tok, "to", **kw)
    c, _ = run(model, tok, "to", **{**kw, "seed": 6})
    assert a == b != c
    assert len(set(a.split(SEPARATOR))) == 3


def test_ctrl_c_keeps_what_was_printed_ends_the_line_and_reports_130():
    tok, model = char_model()
    seen = []

    def interrupt(logits, chosen):  # the user presses Ctrl-C during the fifth step
        seen.append(chosen)
        if len(seen) == 5:
            raise KeyboardInterrupt

    text, report = run(model, tok, "to be", max_new_tokens=50, on_step=interrupt)
    assert report.code == 130 and report.steps == 4
    assert text == "to be" + tok.decode(greedy(model, tok.encode("to be"), 4)) + "\n"


def test_prompt_longer_than_the_context_keeps_its_tail():
    tok, model = char_model()
    prompt = ("to be or not to be, " * 4)[:70]  # block_size is 32
    text, _ = run(model, tok, prompt, max_new_tokens=5)
    tail = prompt[-32:]  # a char tokenizer: one token per character
    from_tail, _ = run(model, tok, tail, max_new_tokens=5)
    assert text == prompt + from_tail.removeprefix(tail)  # the whole prompt printed, its tail continued
    assert from_tail != tail + "\n"
