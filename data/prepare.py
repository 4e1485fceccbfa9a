"""Prepare a corpus for training: text -> tokenizer -> train.bin / val.bin / meta.json.

    python data/prepare.py                                        # Shakespeare's works, characters
    python data/prepare.py --dataset=tinyshakespeare --tokenizer=gpt2
    python data/prepare.py --dataset=mytexts --input='notes/*.md' --tokenizer=bpe --vocab_size=4096
    python data/prepare.py --dataset=roneneldan/TinyStories --tokenizer=gpt2 --max_tokens=50_000_000

The result goes to <data_dir>/<dataset>/<tokenizer> (bpe: bpe<vocab_size>). The folder is
built under a temp name and renamed into place when complete, so a killed run never leaves a
folder that looks finished; the next run starts over. A complete folder is reused unless --force.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from runtime.atomic import atomic_dir, atomic_write_json, remove_stale_dirs
from data.options import CACHE_ENV, DataOptions
from data.sources import Corpus, UnknownDataset, open_corpus
from data.tokenfile import capped, token_dtype, with_separator, write_splits
from data.tokenizer import CharTokenizer, TiktokenTokenizer, Tokenizer, get_gpt2_encoding, train_bpe
from runtime.errors import DataError, UsageError
from runtime.options import opt, parse, run_main
from runtime.paths import member, writable_dir_problem

META = "meta.json"


@dataclass
class PrepareOptions(DataOptions):
    """The data options (data/options.py, shared with train.py), plus --force."""

    force: bool = opt(False, "rebuild even if a complete prepared folder exists")

    def __post_init__(self) -> None:
        """The shared data rules (DataOptions), then the ones that need this module."""
        super().__post_init__()
        for name in ("dataset", "data_dir", "text_column", "hf_split"):
            if not getattr(self, name).strip():
                raise UsageError(f"--{name} must not be empty")
        if folder_name(self) in (".", ".."):
            raise UsageError(f"--dataset={self.dataset!r} is not a usable folder name; give a name such as mytexts")
        if self.tokenizer == "bpe" and not 257 <= self.vocab_size <= 2**32:
            raise UsageError(f"--vocab_size={self.vocab_size}: a byte-level BPE needs 257 (256 bytes + <|endoftext|>) "
                             "to 2**32 tokens; 4096 to 65536 is typical")
        if self.bpe_max_chars < 1:
            raise UsageError(f"--bpe_max_chars must be >= 1, got {self.bpe_max_chars}")


def folder_name(opts: PrepareOptions) -> str:
    """The dataset's folder name: hub ids become owner__name(-config); nothing but [A-Za-z0-9._-]."""
    name = opts.dataset + (f"-{opts.hf_config}" if opts.hf_config and "/" in opts.dataset else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "__"))


def dataset_dir(opts: PrepareOptions) -> Path:
    """<data_dir>/<dataset>/<tokenizer>, always inside data_dir (PrepareOptions refuses '.' and '..')."""
    tok = f"bpe{opts.vocab_size}" if opts.tokenizer == "bpe" else opts.tokenizer
    return Path(opts.data_dir) / folder_name(opts) / tok


def load_meta(folder: str | Path) -> dict:
    """The meta.json of a prepared folder, checked: DataError if it is missing, not ours or malformed."""
    path = member(folder, META)
    if path is None:
        raise DataError(f"{Path(folder) / META} is a link out of its folder; re-run data/prepare.py with --force")
    if not path.is_file():
        raise DataError(f"{folder} is not a prepared data folder (no {META}); run data/prepare.py first")
    fix = "rebuild it with data/prepare.py --force (same options)"
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path} is unreadable or corrupt ({type(e).__name__}); {fix}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; {fix}")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise DataError(f"{path}: vocab_size is {vocab!r}, not a positive whole number; {fix}")
    if not isinstance(meta.get("tokenizer"), dict):
        raise DataError(f"{path} has no tokenizer spec; {fix}")
    for name in ("train.bin", "val.bin", META):
        if member(folder, name) is None:
            raise DataError(f"{Path(folder) / name} is a link out of its folder; {fix}")
    if meta.get("dtype") != token_dtype(vocab).name:
        raise DataError(f"{path}: token dtype {meta.get('dtype')!r} does not fit vocab_size {vocab} "
                        f"(expected {token_dtype(vocab).name}); {fix}")
    return meta


def check_target(folder: Path) -> None:
    """UsageError unless ``folder`` can be (re)built: never replace something that is not a prepared folder."""
    problem = writable_dir_problem(folder.parent)
    if problem:
        raise UsageError(f"cannot prepare data in {folder}: {problem}; choose another --data_dir")
    if os.path.islink(folder):
        raise UsageError(f"{folder} is a link; prepared data is not written through links: remove the link "
                         "or choose another --data_dir")
    if folder.exists():
        if not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a prepared data folder; move it or choose another --data_dir")
        if not (folder / META).is_file() and any(folder.iterdir()):
            raise UsageError(f"{folder} exists but is not a prepared data folder (no {META}), so it is not replaced; "
                             "move it away or choose another --data_dir")


def _recipe(opts: PrepareOptions) -> dict:
    """The options that decide a folder's content; a reused folder must have been made with these."""
    keys = ["dataset", "input", "tokenizer", "val_fraction", "max_tokens", "text_column", "hf_config", "hf_split"]
    keys += ["vocab_size", "bpe_max_chars"] if opts.tokenizer == "bpe" else []
    return {k: getattr(opts, k) for k in keys}


def _split_caps(max_tokens: int | None, val_fraction: float) -> dict[str, int] | None:
    if max_tokens is None:
        return None
    val = max(1, round(max_tokens * val_fraction))
    return {"train": max_tokens - val, "val": val}


def _cache_dir(opts: PrepareOptions) -> Path:
    return Path(opts.cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "quillgpt")


def build_tokenizer(opts: PrepareOptions, corpus: Corpus) -> Tokenizer:
    """char: every character of the whole corpus (train + val, as nanoGPT); bpe: trained on train only."""
    if opts.tokenizer == "gpt2":
        return TiktokenTokenizer("gpt2", get_gpt2_encoding(opts.gpt2_ranks))
    if opts.tokenizer == "char":
        chars: set[str] = set()
        pieces = with_separator(corpus.pieces(), corpus.documents)
        # a streamed hub corpus is read twice for char: once here, once to encode it
        stream = capped(pieces, _split_caps(opts.max_tokens, opts.val_fraction))
        for _, text in tqdm(stream, desc="char vocabulary", unit="doc", disable=None):
            chars.update(text)
        if not chars:
            raise DataError(f"{corpus.source}: the corpus is empty; give an --input with some text")
        return CharTokenizer(chars)
    print(f"training a {opts.vocab_size}-token BPE on the train split", file=sys.stderr)
    return train_bpe((text for split, text in corpus.pieces() if split == "train"), opts.vocab_size,
                     max_chars=opts.bpe_max_chars)


def _build(opts: PrepareOptions, corpus: Corpus, folder: Path) -> None:
    tokenizer = build_tokenizer(opts, corpus)
    spec = tokenizer.save(folder)
    num_proc = opts.num_proc or os.cpu_count() or 1
    stats = write_splits(tokenizer, corpus.pieces(), corpus.documents, folder,
                         _split_caps(opts.max_tokens, opts.val_fraction), num_proc)
    if stats["train"]["tokens"] == 0:
        raise DataError(f"{corpus.source}: the corpus is empty; give an --input with some text")
    if stats["val"]["tokens"] == 0:
        raise DataError(f"{corpus.source}: the val split is empty ({corpus.split_rule}); "
                         "give more text or documents, or a larger --val_fraction")
    meta = {
        "dataset": corpus.name,
        "source": corpus.source,
        "split": corpus.split_rule,
        "source_sha256": stats["source"]["sha256"],
        "tokenizer": spec,
        "vocab_size": tokenizer.vocab_size,
        "eot": tokenizer.eot,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "train_tokens": stats["train"]["tokens"],
        "val_tokens": stats["val"]["tokens"],
        "train_sha256": stats["train"]["sha256"],
        "val_sha256": stats["val"]["sha256"],
        "recipe": _recipe(opts),
    }
    atomic_write_json(folder / META, meta)  # written last: its presence marks a finished build


def _reusable(opts: PrepareOptions, folder: Path) -> bool:
    """A complete folder is reused if it agrees with every option the caller set away from its default.

    Options left at their defaults match anything, so train.py (which passes only dataset and
    tokenizer) can use a folder prepared with --input, --max_tokens and so on.
    """
    if opts.force or not (folder / META).is_file():
        return False  # check_target decides whether an existing folder may be replaced
    recorded = load_meta(folder).get("recipe", {})
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareOptions)}
    differ = {k: v for k, v in _recipe(opts).items() if v != defaults[k] and v != recorded.get(k)}
    if differ:
        shown = ", ".join(f"--{k}={recorded.get(k)} there, {v} now" for k, v in differ.items())
        raise DataError(f"{folder} was prepared with different options ({shown}); "
                         "pass --force to rebuild it or choose another --data_dir")
    return True


def cannot_write(error: OSError, where: Path) -> DataError:
    """The one line for a write that failed while preparing ``where`` (disk full, read-only, permissions)."""
    return DataError(f"cannot write {error.filename or where}: {error.strerror or error}; nothing was replaced "
                     "(free some disk space or choose another --data_dir, then run again)")


def prepare(opts: PrepareOptions) -> Path:
    """Build the prepared folder for ``opts`` (atomically) unless a complete one exists; return it."""
    folder = dataset_dir(opts)
    if _reusable(opts, folder):
        remove_stale_dirs(folder)  # a killed --force rebuild's unfinished folder
        print(f"already prepared: {folder} (pass --force to rebuild)", file=sys.stderr)
        return folder
    check_target(folder)
    # opened before the temp folder exists, so a bad --dataset or --input leaves nothing behind
    try:
        corpus = open_corpus(opts.dataset, opts.input, _cache_dir(opts), opts.val_fraction, opts.text_column,
                             opts.hf_config, opts.hf_split)
    except UnknownDataset as e:
        raise UnknownDataset(f"{e}{already_prepared(opts)}") from None
    print(f"preparing {folder} from {corpus.source}", file=sys.stderr)
    made_parent = not folder.parent.exists()
    try:
        with atomic_dir(folder) as tmp:
            _build(opts, corpus, tmp)
    except BaseException as e:
        if made_parent:
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # only if empty: don't leave a bare <dataset>/ behind a failed first build
        if isinstance(e, OSError):  # disk full, read-only: the old folder (if any) is untouched
            raise cannot_write(e, folder) from None
        raise
    meta = load_meta(folder)
    print(f"wrote {folder}: vocab {meta['vocab_size']}, train {meta['train_tokens']:,} tokens, "
          f"val {meta['val_tokens']:,} tokens", file=sys.stderr)
    return folder


def _options_for(folder: Path) -> str:
    """The tokenizer options that select a prepared folder: '--tokenizer=bpe --vocab_size=4096'."""
    try:
        recipe = load_meta(folder).get("recipe", {})
    except (DataError, ValueError):
        return "unreadable meta.json"
    tok = recipe.get("tokenizer", folder.name)
    return f"--tokenizer={tok}" + (f" --vocab_size={recipe.get('vocab_size')}" if tok == "bpe" else "")


def already_prepared(opts: PrepareOptions) -> str:
    """What is prepared under --data_dir, to append to an "unknown dataset" error: this name's
    folders (a corpus once prepared from --input needs no --input again, only its tokenizer
    options), else every prepared dataset; empty if there is none."""
    home = dataset_dir(opts).parent
    mine = sorted(m.parent for m in home.glob(f"*/{META}"))
    if mine:
        return f"; prepared under {home}: " + ", ".join(f"{f.name} ({_options_for(f)})" for f in mine)
    names = sorted({m.parent.parent.name for m in Path(opts.data_dir).glob(f"*/*/{META}")})
    return f"; prepared in {opts.data_dir}: {', '.join(names)}" if names else ""


def ensure_prepared(opts: PrepareOptions) -> Path:
    """Like prepare(), but silent when the folder is already there (train.py calls this)."""
    folder = dataset_dir(opts)
    if not _reusable(opts, folder):
        return prepare(opts)
    remove_stale_dirs(folder)  # a killed --force rebuild's unfinished folder
    return folder


def _lock_is_stale(lock: Path) -> bool:
    """A lock left by a killed builder on this machine (its process is gone); another machine's is never judged."""
    try:
        host, pid = lock.read_text(encoding="utf-8").split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False  # unreadable, or being written right now: wait
    return False


def prepare_exclusively(opts: PrepareOptions, poll: float = 2.0, timeout: float | None = None,
                        on_wait: Callable[[str], None] | None = None) -> Path:
    """ensure_prepared() for one of several processes (torchrun ranks, nodes sharing data_dir): no collective.

    The process that creates ``.<name>.lock`` beside the folder builds it; the others poll until
    its meta.json (written last) appears, calling ``on_wait(message)`` once. A lock whose builder
    died on this machine is taken over. DataError after ``timeout`` seconds (None: wait; under
    torchrun a builder that fails ends the whole job).
    """
    folder = dataset_dir(opts)
    lock = folder.parent / f".{folder.name}.lock"
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while not _reusable(opts, folder):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_is_stale(lock):
                lock.unlink(missing_ok=True)
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise DataError(f"gave up after {timeout:.0f} s waiting for another process to prepare {folder}; "
                                f"if none is, delete {lock}") from None
            if not told and on_wait is not None:
                on_wait(f"waiting for another process to prepare {folder} (if none is, delete {lock})")
                told = True
            time.sleep(poll)
            continue
        except OSError as e:  # disk full, read-only, permissions: the folder could not be built either
            raise cannot_write(e, lock) from None
        try:
            try:
                os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
            except OSError as e:
                raise cannot_write(e, lock) from None
            finally:
                os.close(fd)
            return ensure_prepared(opts)
        finally:
            lock.unlink(missing_ok=True)
    if lock.is_file() and _lock_is_stale(lock):  # a builder killed after another process finished the folder
        with contextlib.suppress(OSError):
            lock.unlink()
    return folder


def main(argv: list[str] | None = None) -> int:
    opts = parse(PrepareOptions, argv, prog="data/prepare.py", description=__doc__.split("\n\n")[0],
                 config_files=False)
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:  # SIGTERM unwinds like Ctrl-C: the temp folder goes
        received.append(signum)
        raise KeyboardInterrupt

    installed = threading.current_thread() is threading.main_thread()  # handlers only work there
    previous = signal.signal(signal.SIGTERM, interrupt) if installed else None
    try:
        print(prepare(opts))
    except KeyboardInterrupt:
        print("data/prepare.py: interrupted; the unfinished folder was removed and nothing else changed",
              file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    run_main(main)
