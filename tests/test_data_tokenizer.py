"""Tokenizers: round trips, GPT-2 reference ids, BPE training, save/load, error messages."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tiktoken.load
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_file
from data.tokenizer import (CharTokenizer, TiktokenTokenizer, get_gpt2_encoding, load_ranks, load_tokenizer,
                            train_bpe)
from runtime.errors import DataError

ENGLISH = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
           "must be in want of a wife. However little known the feelings or views of such a man may be "
           "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
           "surrounding families, that he is considered the rightful property of some one or other "
           "of their daughters.\n") * 20
ALPHABET = "abcXYZ \n\t.,!'é水😀"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([ENGLISH, "héllo wörld 水 😀 " * 10], 300)


@pytest.fixture(scope="module")
def gpt2():
    return TiktokenTokenizer("gpt2", get_gpt2_encoding(str(shared_file("data/gpt2.tiktoken"))))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=ALPHABET))
def test_char_round_trip(text):
    tok = CharTokenizer(ALPHABET)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_any_unicode(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_gpt2_round_trip_any_unicode(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_reference_ids(gpt2):
    assert gpt2.vocab_size == 50257 and gpt2.eot == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("First Citizen:\nBefore we proceed any further, hear me speak.") == \
        [5962, 22307, 25, 198, 8421, 356, 5120, 597, 2252, 11, 3285, 502, 2740, 13]
    # the special token's text in a corpus is ordinary text, never a stray EOT
    assert 50256 not in gpt2.encode("<|endoftext|>")


def test_gpt2_ranks_from_env_never_downloads(gpt2_ranks, monkeypatch):
    monkeypatch.setenv("QUILLGPT_GPT2_RANKS", str(gpt2_ranks))
    tok = load_tokenizer({"kind": "gpt2"}, ".")
    assert tok.encode("Hello world") == [15496, 995]


def test_gpt2_bad_ranks_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        get_gpt2_encoding(str(tmp_path / "missing.tiktoken"))
    small = tmp_path / "small.tiktoken"
    small.write_text("YQ== 0\n", encoding="utf-8")
    with pytest.raises(DataError, match="GPT-2 has 50256"):
        get_gpt2_encoding(str(small))


def test_decode_accepts_tensors_and_arrays(bpe):
    ids = bpe.encode("hello there")
    assert bpe.decode(torch.tensor(ids)) == bpe.decode(np.array(ids, dtype=np.uint16)) == "hello there"


def test_decode_bytes_keeps_split_characters(gpt2):
    ids = gpt2.encode("水")  # one character, several byte-level tokens
    assert len(ids) > 1
    assert b"".join(gpt2.decode_bytes([i]) for i in ids) == "水".encode("utf-8")


def test_char_out_of_vocab_lists_characters():
    tok = CharTokenizer("abc")
    with pytest.raises(DataError) as e:
        tok.encode("abzzq!z")
    msg = str(e.value)
    assert "3 character(s)" in msg and "'!', 'q', 'z'" in msg and "\n" not in msg


def test_bpe_exact_vocab_size_and_special_token(bpe):
    assert bpe.vocab_size == 300 and bpe.eot == 299
    assert bpe.decode([bpe.eot]) == "<|endoftext|>"


def test_bpe_too_small_vocab_or_text():
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(["abc"], 200)
    with pytest.raises(DataError, match="smaller --vocab_size or more text"):
        train_bpe(["ab"], 1000)


def test_bpe_compresses_better_than_char(tinyshakespeare):
    text = tinyshakespeare.read_text(encoding="utf-8")
    train, val = text[:300_000], text[-50_000:]
    bpe = train_bpe([train], 1024)
    char = CharTokenizer(text)
    n_bytes = len(val.encode("utf-8"))
    bpe_tpb, char_tpb = len(bpe.encode(val)) / n_bytes, len(char.encode(val)) / n_bytes
    assert bpe_tpb < 0.5 * char_tpb, (bpe_tpb, char_tpb)


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_save_load_round_trip(kind, tmp_path, bpe, monkeypatch):
    if kind == "gpt2":
        monkeypatch.setenv("QUILLGPT_GPT2_RANKS", str(shared_file("data/gpt2.tiktoken")))
    tok = {"char": lambda: CharTokenizer(ENGLISH), "bpe": lambda: bpe,
           "gpt2": lambda: TiktokenTokenizer("gpt2", get_gpt2_encoding())}[kind]()
    spec = tok.save(tmp_path)
    assert spec["kind"] == kind
    again = load_tokenizer(spec, tmp_path)
    assert again.vocab_size == tok.vocab_size and again.eot == tok.eot
    assert again.encode(ENGLISH[:300]) == tok.encode(ENGLISH[:300])


def test_bpe_file_is_tiktoken_format(bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would otherwise cache by path
    spec = bpe.save(tmp_path)
    path = tmp_path / spec["file"]
    assert tiktoken.load.load_tiktoken_bpe(str(path)) == load_ranks(path) == bpe.ranks


def test_char_vocab_file_is_json(tmp_path):
    spec = CharTokenizer("ba水").save(tmp_path)
    digest = hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    assert spec == {"kind": "char", "file": "tokenizer.json", "sha256": digest}
    assert (tmp_path / "tokenizer.json").read_text(encoding="utf-8").count("水") == 1


def test_unknown_kind(tmp_path):
    with pytest.raises(DataError, match="char, bpe, gpt2"):
        load_tokenizer({"kind": "sentencepiece"}, tmp_path)


def test_token_bytes_are_each_ids_utf8_length(bpe, gpt2):
    """Bits per byte divides by these: each id decoded alone, specials (<|endoftext|>) 0."""
    assert CharTokenizer("aé水😀").token_bytes() == [1, 2, 3, 4]
    for tok in (bpe, gpt2):
        lengths = tok.token_bytes()
        assert len(lengths) == tok.vocab_size and lengths[tok.eot] == 0
        text = "héllo wörld 水 😀 naïve"
        ids = tok.encode(text)
        assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))
        assert all(lengths[i] == len(tok.decode_bytes([i])) for i in range(0, tok.vocab_size, 97) if i != tok.eot)
