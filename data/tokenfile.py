"""Encode a corpus stream into flat token files (train.bin, val.bin), optionally over processes.

A token file is the raw ids back to back in native-endian uint16 (vocab <= 65,536) or uint32,
no header: the loader memory-maps it and the size alone gives the token count. Documents end
with the tokenizer's end-of-text id (or a blank line for the char tokenizer, which has none),
so the model learns where one text stops and the next starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import multiprocessing as mp
import multiprocessing.pool
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from tqdm import tqdm

from data.sources import Piece
from data.tokenizer import Tokenizer
from runtime.atomic import naming

DOC_SEPARATOR_TEXT = "\n\n"  # what ends a document when the tokenizer has no EOT (char)
CHUNK_CHARS = 1 << 20  # text per task sent to a worker: big enough to amortize IPC

T = TypeVar("T", str, list)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def capped(stream: Iterable[tuple[str, T]], caps: dict[str, int] | None) -> Iterator[tuple[str, T]]:
    """Pass (split, item) pairs through, cutting each split at its cap and stopping once all are full.

    Items are token lists when writing and texts when building a char vocabulary; for the char
    tokenizer both have the same length, so both passes see the very same text.
    """
    if caps is None:
        yield from stream
        return
    used = dict.fromkeys(caps, 0)
    for split, item in stream:
        item = item[: max(0, caps[split] - used[split])]  # a full split passes empty items through
        used[split] += len(item)
        yield split, item
        if all(used[s] >= caps[s] for s in caps):
            return


def with_separator(pieces: Iterable[Piece], documents: bool) -> Iterator[Piece]:
    """Texts as the char vocabulary must see them (a blank line after each document)."""
    for split, text in pieces:
        yield split, text + DOC_SEPARATOR_TEXT if documents else text


# ---------------------------------------------------------------------------- encoding over processes

# Set once per worker process by the pool initializer, so the tokenizer (50k GPT-2 ranks) is
# sent to each worker once instead of with every task. The parent process never sets it.
_worker_tokenizer: Tokenizer | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent goes, however the parent goes (SIGKILL,
    a crash, an exit that never got to terminate the pool): an orphaned worker would otherwise live
    on holding the parent's stderr, and whoever reads that pipe would wait for ever."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent went before the request was in place
        os._exit(1)


def _init_worker(tokenizer: Tokenizer, parent: int) -> None:
    global _worker_tokenizer
    _die_with_parent(parent)
    _worker_tokenizer = tokenizer
    # a forked worker inherits the parent's handlers; the parent alone decides what a signal means
    # (Ctrl-C reaches every process of the group): ignore SIGINT, and let SIGTERM (pool.terminate) just end it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # the parent blocked them while forking us (see _pool)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _pool(num_proc: int, tokenizer: Tokenizer) -> "mp.pool.Pool":
    """A worker pool, started with SIGINT/SIGTERM held back: a signal that lands while the pool forks
    would interrupt the fork handlers (where Python can only print and ignore it); held, it arrives
    right after, in the caller, like anywhere else."""
    initargs = (tokenizer, os.getpid())
    if not hasattr(signal, "pthread_sigmask"):
        return mp.get_context().Pool(num_proc, initializer=_init_worker, initargs=initargs)
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        return mp.get_context().Pool(num_proc, initializer=_init_worker, initargs=initargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _encode_chunk(args: tuple[list[Piece], bool]) -> list[tuple[str, list[int]]]:
    pieces, documents = args
    return encode_pieces(_worker_tokenizer, pieces, documents)


def encode_pieces(tokenizer: Tokenizer, pieces: Sequence[Piece], documents: bool) -> list[tuple[str, list[int]]]:
    """Token ids of each piece, with the document separator appended in document mode."""
    sep = ([tokenizer.eot] if tokenizer.eot is not None else tokenizer.encode(DOC_SEPARATOR_TEXT)) if documents else []
    return [(split, tokenizer.encode(text) + sep) for split, text in pieces]


def _chunks(pieces: Iterable[Piece], documents: bool) -> Iterator[tuple[list[Piece], bool]]:
    chunk: list[Piece] = []
    size = 0
    for p in pieces:
        chunk.append(p)
        size += len(p[1])
        if size >= CHUNK_CHARS:
            yield chunk, documents
            chunk, size = [], 0
    if chunk:
        yield chunk, documents


def encode_stream(tokenizer: Tokenizer, pieces: Iterable[Piece], documents: bool,
                  num_proc: int = 1) -> Iterator[tuple[str, list[int]]]:
    """Encode pieces in order, on ``num_proc`` processes when > 1.

    Tasks are submitted in bounded waves rather than with one ``imap`` over the whole stream:
    Pool.imap reads its input as fast as it can, which on an endless hub stream means unbounded memory.
    """
    chunks = _chunks(pieces, documents)
    if num_proc <= 1:
        for chunk, docs in chunks:
            yield from encode_pieces(tokenizer, chunk, docs)
        return
    with _pool(num_proc, tokenizer) as pool:
        while wave := list(itertools.islice(chunks, 2 * num_proc)):
            for encoded in pool.imap(_encode_chunk, wave):
                yield from encoded


# ---------------------------------------------------------------------------- writing


class TokenWriter:
    """Appends ids to a token file, counting and hashing the bytes as they are written."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self._f: IO[bytes] = open(self.path, "wb")
        self._sha = hashlib.sha256()
        self.tokens = 0

    def write(self, ids: list[int]) -> None:
        data = np.asarray(ids, dtype=self.dtype).tobytes()
        with naming(self.path):
            self._f.write(data)
        self._sha.update(data)
        self.tokens += len(ids)

    def close(self) -> dict:
        with naming(self.path):
            self._f.close()
        return {"tokens": self.tokens, "sha256": self._sha.hexdigest()}


def write_splits(tokenizer: Tokenizer, pieces: Iterable[Piece], documents: bool, folder: Path,
                 caps: dict[str, int] | None = None, num_proc: int = 1) -> dict[str, dict]:
    """Encode the corpus into ``folder/train.bin`` and ``folder/val.bin``.

    Returns token counts and sha256 of both files, and under "source" the sha256 of the UTF-8
    text that was encoded, in stream order (for a single file: the file's own sha256).
    """
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: TokenWriter(Path(folder) / f"{s}.bin", dtype) for s in ("train", "val")}
    # texts read but not yet written, in order: workers read ahead, and only the text that
    # actually reached a token file belongs in the source checksum
    pending: deque[str] = deque()

    def remember(stream: Iterable[Piece]) -> Iterator[Piece]:
        for piece in stream:
            pending.append(piece[1])
            yield piece

    source = hashlib.sha256()
    total = sum(caps.values()) if caps else None
    encoded = encode_stream(tokenizer, remember(pieces), documents, num_proc)
    try:
        # closing(): on an interrupt the pool is shut down here and now, not whenever the
        # suspended generator happens to be collected
        with tqdm(total=total, unit="tok", unit_scale=True, desc="tokenizing", disable=None) as bar, \
                contextlib.closing(encoded):
            for split, ids in capped(encoded, caps):
                text = pending.popleft()
                if ids:
                    source.update(text.encode("utf-8"))
                    writers[split].write(ids)
                    bar.update(len(ids))
    finally:
        stats = {s: w.close() for s, w in writers.items()}
    stats["source"] = {"sha256": source.hexdigest()}
    return stats
