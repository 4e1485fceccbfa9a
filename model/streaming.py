"""Streaming text out of ``generate_stream``: incremental UTF-8, stop strings, samples in order.

The pieces, smallest first: ``first_stop`` / ``held_back`` (where a stop string ends, and how
much text must wait because it could still become one), ``RowDecoder`` (one sample's tokens to
printable text), ``Printer`` (several samples to one byte stream, in sample order: the current
one live, later ones buffered until their turn) and ``stream_samples``, which drives a batch
through all of them and reports how it went. ``render_row`` is the all-at-once equivalent of a
``RowDecoder``, for output that is not streamed.

A character whose UTF-8 bytes lie in two tokens is printed once, whole; a stop string is never
printed, not even its first characters, because text that could begin one is held back until
it either completes (the sample ends there) or cannot any more.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Sequence

import torch

from runtime.device import autocast
from runtime.errors import DataError, UsageError

from .generate import generate_stream

if TYPE_CHECKING:
    from data.tokenizer import Tokenizer
    from runtime.cpu import ThreadGovernor

SEPARATOR = "---------------\n"  # between samples on the output stream


def unescape_stop(s: str) -> str:
    """Read \\n, \\t and \\\\ in a --stop string as newline, tab and backslash; leave other text alone."""
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[s[i + 1]])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def encode_prompt(tok: "Tokenizer", text: str) -> tuple[list[int], str]:
    """(prompt ids, text to print before the continuation). An empty prompt starts a new document:
    a newline (char tokenizer) or <|endoftext|> (not printed)."""
    if not text:
        if tok.kind == "char":
            if "\n" in getattr(tok, "chars", ["\n"]):
                return tok.encode("\n"), "\n"
            return [0], ""  # a vocabulary without newline: start from its first character, unprinted
        if tok.eot is not None:
            return [tok.eot], ""  # <|endoftext|> means "a new document starts": not printed
        raise UsageError("this tokenizer has no <|endoftext|> token; give a --prompt")
    try:
        ids = tok.encode(text)
    except DataError as e:
        raise UsageError(f"--prompt: {e}") from None
    if not ids:  # cannot happen for non-empty text with these tokenizers; kept as a guard
        raise UsageError("--prompt encodes to no tokens; give some text")
    return ids, text


def first_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """(start, end) of the stop string that completes first in ``text`` (earliest end, then earliest start)."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or (i + len(s), i) < (best[1], best[0])):
            best = (i, i + len(s))
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string (so must wait)."""
    longest = max((len(s) for s in stops), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(s.startswith(tail) for s in stops):
            return k
    return 0


class RowDecoder:
    """One sample's tokens -> printable text: incremental UTF-8, stop strings held back until decided."""

    def __init__(self, tok: "Tokenizer", stops: Sequence[str], stop_id: int | None) -> None:
        self.tok = tok
        self.stops = list(stops)
        self.stop_id = stop_id
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = ""  # decoded text not yet released: it might begin a stop string
        self.finished = False

    def feed(self, token: int) -> str:
        """Take one token; return the text that is now safe to print (sets ``finished`` at a stop)."""
        if self.finished:
            return ""
        if token == self.stop_id:
            return self.finish()
        self.pending += self.utf8.decode(decode_token_bytes(self.tok, token))
        hit = first_stop(self.pending, self.stops)
        if hit is not None:
            out, self.pending, self.finished = self.pending[:hit[0]], "", True
            return out
        keep = held_back(self.pending, self.stops)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep:]
        return out

    def finish(self) -> str:
        """End the row: whatever was held back is text after all (a stop string never completed).

        The bytes of a character cut short by the token budget are dropped, not printed as U+FFFD.
        """
        if self.finished:
            return ""
        self.finished = True
        out, self.pending = self.pending, ""
        return out


def decode_token_bytes(tok: "Tokenizer", token: int) -> bytes:
    """A token's bytes; ids past the tokenizer's vocabulary (padding rows of the head) print nothing."""
    return tok.decode_bytes([token]) if 0 <= token < tok.vocab_size else b""


def render_row(tok: "Tokenizer", tokens: Sequence[int], stops: Sequence[str], stop_id: int | None) -> str:
    """The whole continuation at once (the --no-stream path): cut at the stop token, decode, cut at a stop string."""
    tokens = list(tokens)
    if stop_id is not None and stop_id in tokens:
        tokens = tokens[:tokens.index(stop_id)]
    data = b"".join(decode_token_bytes(tok, t) for t in tokens)
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data)  # not final: drop a cut-off tail
    hit = first_stop(text, stops)
    return text if hit is None else text[:hit[0]]


class Printer:
    """Writes samples to stdout in order: the current sample live, later ones buffered until their turn.

    Each sample is written as prompt + continuation + newline; samples are separated by
    ``SEPARATOR``. A sample's prompt is written together with its first text, so the first
    byte on stdout marks the first generated token.
    """

    def __init__(self, out: BinaryIO, n_rows: int, prompt: str) -> None:
        self.out = out
        self.prompt = prompt
        self.buffers: list[list[str]] = [[] for _ in range(n_rows)]
        self.done = [False] * n_rows
        self.current = 0
        self.started = False  # the current sample's prompt has been written

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text.encode("utf-8"))

    def _start_current(self) -> None:
        if not self.started:
            self._write((SEPARATOR if self.current > 0 else "") + self.prompt)
            self.started = True

    def emit(self, row: int, text: str) -> None:
        """Text for ``row``: printed now if it is the current sample, else kept for later."""
        if not text:
            return
        if row == self.current:
            self._start_current()
            self._write(text)
            self.out.flush()
        else:
            self.buffers[row].append(text)

    def finish(self, row: int) -> None:
        """``row`` is complete; if it was current, move on through every later sample that is ready."""
        self.done[row] = True
        while self.current < len(self.done) and self.done[self.current]:
            self._start_current()
            self._write("".join(self.buffers[self.current]) + "\n")
            self.buffers[self.current] = []
            self.current += 1
            self.started = False
            if self.current < len(self.done) and self.buffers[self.current]:
                self._start_current()  # a running sample with text waiting: show it now, continue live
                self._write("".join(self.buffers[self.current]))
                self.buffers[self.current] = []
        self.out.flush()

    def interrupt(self) -> None:
        """Ctrl-C: end the line of whatever was being printed."""
        if self.started:
            self._write("\n")
        self.out.flush()


@dataclass
class StreamReport:
    """How a batch went: the exit code (0, or 130 after Ctrl-C), sample 1's tokens (up to and
    including the one that ended it) and the timings behind the speed line."""

    code: int
    sample_one: list[int]
    steps: int  # tokens per sample
    batch: int
    seconds: float  # first call to the end of the last sample
    first_token: float  # seconds until the prefill's token arrived
    compile_seconds: float | None  # the first decode step, when it compiled the graph
    rate: float  # tokens/s over the steady steps (nan when there were none)

    def speed(self) -> str:
        """'60 steps x 3 sample(s) = 180 tokens in 0.41 s; first token after 0.052 s, then 512.3 tokens/s'."""
        compiling = "" if self.compile_seconds is None else \
            f", compiling the decode step took {self.compile_seconds:.2f} s"
        return (f"{self.steps} steps x {self.batch} sample(s) = {self.steps * self.batch} tokens in "
                f"{self.seconds:.2f} s; first token after {self.first_token:.3f} s{compiling}, "
                f"then {self.rate:.1f} tokens/s")


def stream_samples(model: torch.nn.Module, tok: "Tokenizer", ids: list[int], prompt_text: str, out: BinaryIO, *,
                   num_samples: int, max_new_tokens: int, sampling: dict[str, Any],
                   repetition_penalty: float | None = None, stops: Sequence[str] = (), stop_at_eot: bool = True,
                   stream: bool = True, seed: int = 0, autocast_dtype: torch.dtype = torch.float32,
                   compile: bool = False, on_step: Callable | None = None,
                   governor: "ThreadGovernor | None" = None) -> StreamReport:
    """Generate ``num_samples`` continuations of ``ids`` as one batch and write them to ``out``.

    Each sample is ``prompt_text`` + its continuation + a newline, samples separated by
    ``SEPARATOR``. With ``stream`` text is written as it is generated (sample 1 live, the others
    in order, see ``Printer``); without, each sample once all are done. A sample ends at the first
    of ``stops`` (not written), at <|endoftext|> when ``stop_at_eot`` (bpe/gpt2 tokenizers), or
    after ``max_new_tokens``. ``sampling``: generate_stream's temperature/top_k/top_p/min_p.
    ``autocast_dtype``: float32 for none. ``governor`` is told the time of every decode step.
    Ctrl-C ends the line being written and returns code 130 with what was printed kept.
    A prompt longer than the model's context is cut to its last ``block_size`` tokens.
    """
    device = next(model.parameters()).device
    ids = ids[-model.config.block_size:]
    B = num_samples
    idx = torch.tensor([ids] * B, dtype=torch.long, device=device)
    stop_id = tok.eot if (stop_at_eot and tok.kind != "char") else None
    rows = [RowDecoder(tok, stops, stop_id) for _ in range(B)]
    history: list[list[int]] = [[] for _ in range(B)]  # unstreamed tokens
    printer = Printer(out, B, prompt_text)
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = generate_stream(model, idx, max_new_tokens, **sampling, repetition_penalty=repetition_penalty,
                             generator=generator, compile=compile, on_step=on_step,
                             vocab_limit=tok.vocab_size)  # never ids the tokenizer cannot decode (padded head rows)
    sample_one: list[int] = []
    steps = 0
    t0 = last = time.perf_counter()
    marks: list[float] = []  # arrival of tokens 1 and 2: the prefill, then the first decode step (which compiles)
    code = 0
    try:
        with autocast(device, autocast_dtype):
            for nxt in tokens:
                steps += 1
                now = time.perf_counter()
                if governor is not None and marks:  # one decode step (plus printing) since the last token
                    governor.step_done(now - last)
                last = now
                if len(marks) < 2:
                    marks.append(now)
                for r, token in enumerate(nxt.tolist()):
                    if rows[r].finished:
                        continue
                    if r == 0:
                        sample_one.append(token)
                    text = rows[r].feed(token)
                    if stream:
                        printer.emit(r, text)
                        if rows[r].finished:
                            printer.finish(r)
                    else:
                        history[r].append(token)
                if all(row.finished for row in rows):
                    break
    except KeyboardInterrupt:
        printer.interrupt()
        code = 130
    finally:
        tokens.close()
    if code == 0:
        for r in range(B):
            printer.emit(r, rows[r].finish() if stream else render_row(tok, history[r], stops, stop_id))
            printer.finish(r)
    end = time.perf_counter()
    warm = min(len(marks), 2 if compile else 1)  # steps before the steady rate starts
    rate = (steps - warm) * B / (end - marks[warm - 1]) if steps > warm else float("nan")
    return StreamReport(code, sample_one, steps, B, end - t0, (marks[0] if marks else end) - t0,
                        marks[1] - marks[0] if warm == 2 else None, rate)
