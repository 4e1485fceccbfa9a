"""Write text with a trained quillgpt model (or OpenAI's GPT-2), streamed as it is generated.

    python sample.py --temperature 0.8                      # the best checkpoint of ./out
    python sample.py --out_dir=out --checkpoint=latest --prompt "ROMEO:" --num_samples 3
    python sample.py --init_from=gpt2 --prompt FILE:prompt.txt --stop "\\n\\n"
    python sample.py --prompt "ROMEO:" --attention=attn.html   # then open attn.html: what each token attends to
    echo "Once upon a time" | python sample.py --init_from=gpt2 --prompt -

stdout carries only text: each sample is its prompt and continuation followed by a newline,
and samples are separated by a ``---------------`` line, so ``python sample.py > out.txt``
writes clean text. Everything else (checkpoint, device, parameters, seed, speed) goes to stderr.

Several samples (``--num_samples``) are generated together as one batch. Output stays in
sample order: sample 1 is printed live; the others are kept until every sample before them
has finished, then printed at once and, if still running, continued live. Streaming is
UTF-8 safe: each row's bytes go through an incremental decoder, so a character split across
tokens is printed once, whole.

Ctrl-C stops generation, keeps what was printed, ends the line and exits with code 130
(128 + SIGINT, so a script can tell the text was cut short).

torch is imported only after the options are parsed, so ``--help`` answers at once.
"""

from __future__ import annotations

import codecs
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Sequence

from runtime.device import DTYPES
from runtime.errors import DataError, QuillError, UsageError
from runtime.options import check_seed, opt, parse, run_main

if TYPE_CHECKING:  # imported lazily at run time (see the module docstring)
    import torch

    from data.tokenizer import Tokenizer
    from runtime.cpu import ThreadGovernor

SEPARATOR = "---------------\n"


@dataclass
class SampleOptions:
    out_dir: str = opt("out", "run folder written by train.py to sample from")
    checkpoint: str = opt("auto", "which checkpoint of --out_dir: best (lowest val loss, OUT_DIR/best), latest "
                                  "(OUT_DIR itself), or auto = best if saved, else latest",
                          choices=("auto", "best", "latest"))
    init_from: str = opt("", "instead of --out_dir: a quillgpt run folder, a local Hugging Face GPT-2 folder or a "
                             "hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl); GPT-2 models use the gpt2 tokenizer")
    gpt2_ranks: str | None = opt(None, "a local gpt2.tiktoken rank file, to use the GPT-2 tokenizer offline; "
                                       "none = $QUILLGPT_GPT2_RANKS, else tiktoken's download")
    prompt: str = opt("", "text to continue; FILE:path reads a UTF-8 file, - reads stdin; empty = a newline "
                          "(char tokenizer) or <|endoftext|> (bpe/gpt2; not printed)", aliases=("start",))
    max_new_tokens: int = opt(500, "tokens to generate per sample (>= 1)")
    temperature: float = opt(0.8, "softmax temperature; 0 = greedy (argmax), < 1 safer, > 1 wilder")
    top_k: int = opt(200, "sample only from the k most likely tokens; 0 = off")
    top_p: float = opt(1.0, "nucleus sampling: the smallest set of tokens holding this probability, in (0, 1]; 1 = off")
    min_p: float = opt(0.0, "drop tokens less likely than min_p x the most likely one, in [0, 1]; 0 = off")
    repetition_penalty: float = opt(1.0, "CTRL penalty on tokens already in the context (> 0); 1 = off")
    num_samples: int = opt(1, "samples to write, generated together as one batch (>= 1)")
    seed: int | None = opt(None, "random seed, 0 to 2**63-1; the same seed gives the same text, every sample "
                                 "included; none = a fresh seed, shown on stderr")
    stop: list[str] = opt([], "a sample ends at the first occurrence of this string, which is not printed; "
                              "repeat for several; \\n, \\t and \\\\ are read as escapes")
    stop_at_eot: bool = opt(True, "a sample ends at <|endoftext|> (bpe/gpt2 tokenizers); --no-stop_at_eot prints "
                                  "it and carries on, as nanoGPT does")
    stream: bool = opt(True, "print text as it is generated; --no-stream prints each sample when all are done")
    device: str = opt("auto", "where to run: auto = cuda, else mps, else cpu", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = opt("auto", "compute precision: auto = bfloat16 on a GPU that has it natively, float16 on "
                             "older GPUs, float32 on CPU and MPS", choices=DTYPES)
    threads: int = opt(0, "CPU threads for torch; 0 = auto: start with 1 for models under 20M parameters (tiny "
                          "eager matmuls only lose to thread hand-offs), else torch's default or $OMP_NUM_THREADS, "
                          "and let a governor time the decode steps and move the count to whatever is fastest now "
                          "(fewer while other processes load the machine); with --compile, torch's default; "
                          "N = exactly N")
    compile: bool = opt(False, "torch.compile the decode step (fixed shapes, one graph per batch size): 3-10 s "
                               "once per process, then 2-3x the tokens/s at batch 1 on CPU; pays off for long "
                               "generations")
    attention: str = opt("", "after sampling, draw sample 1 (prompt + generated text) to this file: PATH.png = "
                             "a layer x head grid of attention heatmaps (last 64 tokens); PATH.html = an offline "
                             "page: hover a token to see what it attends to, per layer and head, and each "
                             "generated token's top-5 candidates as sampled; empty = off")


DESCRIPTION = __doc__.split("\n\n")[0] + """

Samples are generated as one batch; sample 1 streams live and the others follow in order
(each printed as soon as the ones before it are done). stdout holds only text, stderr the
diagnostics. Ctrl-C keeps what was printed and exits with code 130."""


def log(msg: str) -> None:
    """A diagnostic line on stderr (stdout is reserved for the generated text)."""
    print(f"sample: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- checking options


def check_options(o: SampleOptions) -> None:
    """Reject out-of-range values before anything slow happens; the sampling controls are checked
    by model.sampling.check_sampling_args, their one rule."""
    from model.sampling import check_sampling_args

    if o.max_new_tokens < 1:
        raise UsageError(f"--max_new_tokens must be >= 1, got {o.max_new_tokens}")
    if o.num_samples < 1:
        raise UsageError(f"--num_samples must be >= 1, got {o.num_samples}")
    if o.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = auto), got {o.threads}")
    if any(s == "" for s in o.stop):
        raise UsageError("--stop needs a non-empty string")
    check_seed(o.seed)
    try:
        check_sampling_args(o.temperature, o.top_k, o.top_p, o.min_p, o.repetition_penalty)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def unescape(s: str) -> str:
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


# ---------------------------------------------------------------------------- checkpoint and tokenizer


@dataclass
class Source:
    """Where the model comes from: a quillgpt run folder, or anything from_pretrained takes."""

    folder: Path | None  # a quillgpt checkpoint folder (config.json + model.safetensors)
    pretrained: str | None  # otherwise: a local Hugging Face GPT-2 folder or a hub name
    meta: dict[str, Any]  # the quillgpt config.json ({} for GPT-2)
    label: str


def resolve_source(o: SampleOptions) -> Source:
    """Pick the checkpoint from --init_from / --out_dir / --checkpoint (model.checkpoint owns the rules)."""
    from model import checkpoint

    if o.init_from:
        path = Path(o.init_from)
        if path.is_dir():
            meta = checkpoint.read_config(path)
            if "model" in meta:  # our own run folder
                if not checkpoint.is_checkpoint(path):
                    raise UsageError(f"--init_from={path}: its {checkpoint.WEIGHTS_FILE} is missing (a run stopped "
                                     "before its first save?); give a folder with a saved model")
                return Source(path, None, meta, str(path))
            try:  # a config.json that is neither ours nor GPT-2's is refused before anything is downloaded
                checkpoint.config_from_hf(meta)
            except QuillError as e:
                raise UsageError(f"--init_from={path}: its config.json has no 'model' section (quillgpt) and is not "
                                 f"a GPT-2 config either ({e})") from None
            if not (path / checkpoint.WEIGHTS_FILE).is_file():
                raise UsageError(f"--init_from={path}: no {checkpoint.WEIGHTS_FILE} beside its GPT-2 config.json")
            return Source(None, o.init_from, {}, f"{path} (Hugging Face GPT-2 folder)")
        if checkpoint.looks_local(o.init_from):
            raise UsageError(f"--init_from: no such folder: {o.init_from} (give a run folder, a Hugging Face "
                             "GPT-2 folder or a hub name such as gpt2)")
        return Source(None, o.init_from, {}, f"{o.init_from} (GPT-2 from the Hugging Face hub)")
    folder, which = checkpoint.checkpoint_folder(o.out_dir, o.checkpoint)
    meta = checkpoint.read_config(folder)
    if "model" not in meta:
        raise UsageError(f"{folder / checkpoint.CONFIG_FILE} has no 'model' section: not a quillgpt checkpoint")
    facts = [which]
    if isinstance(meta.get("iter"), int):
        facts.append(f"iter {meta['iter']}")
    if isinstance(meta.get("val_loss"), (int, float)):
        facts.append(f"val loss {meta['val_loss']:.4f}")
    return Source(folder, None, meta, f"{folder} ({', '.join(facts)})")


def load_tokenizer_for(source: Source, gpt2_ranks: str | None = None) -> "Tokenizer":
    """The run's own tokenizer (spec in config.json), or GPT-2's for GPT-2 weights."""
    from data.tokenizer import load_tokenizer
    from model.checkpoint import tokenizer_home

    if source.folder is None:
        return load_tokenizer({"kind": "gpt2"}, ".", gpt2_ranks=gpt2_ranks)
    spec, home = tokenizer_home(source.folder, source.meta)
    return load_tokenizer(spec, home, gpt2_ranks=gpt2_ranks)


# ---------------------------------------------------------------------------- prompt


def read_prompt(spec: str) -> str:
    """The prompt text: literal, ``FILE:path`` (UTF-8) or ``-`` (stdin)."""
    if spec == "-":
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise UsageError("--prompt -: stdin is closed; pipe the prompt in, or give --prompt=TEXT or FILE:path")
        if sys.stdin.isatty():
            log("reading the prompt from stdin; end it with Ctrl-D")
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"--prompt -: stdin is not UTF-8 text ({e})") from None
    if spec.startswith("FILE:"):
        path = Path(spec[len("FILE:"):]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UsageError(f"--prompt FILE:{path}: cannot read the prompt file ({reason}); "
                             "give FILE:path to a readable UTF-8 text file") from None
    return spec


def encode_prompt(tok: "Tokenizer", text: str) -> tuple[list[int], str]:
    """(prompt ids, text to print before the continuation). An empty prompt starts like nanoGPT."""
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


# ---------------------------------------------------------------------------- stop strings and output


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


# ---------------------------------------------------------------------------- model


def source_config(source: Source) -> Any:
    """The GPTConfig a source will build, read without building it (None for a hub name: not downloaded yet)."""
    from model import checkpoint

    if source.folder is not None:
        return checkpoint.model_config(source.meta, source.folder / checkpoint.CONFIG_FILE)
    if Path(source.pretrained).is_dir():
        return checkpoint.config_from_hf(checkpoint.read_config(source.pretrained))
    return None


def check_fits(o: SampleOptions, config: Any, tok: "Tokenizer", prompt_len: int, device: "torch.device",
               dtype: "torch.dtype") -> None:
    """Refuse, before the model exists, a tokenizer that is not the model's or a job the device cannot hold."""
    from model.generate import generation_bytes
    from runtime.memory import ensure_fits

    if tok.vocab_size > config.vocab_size:
        raise UsageError(f"the checkpoint's tokenizer has {tok.vocab_size} tokens but its model only "
                         f"{config.vocab_size}: the run folder mixes files from different runs")
    need = config.model_bytes() + generation_bytes(config, o.num_samples, prompt_len, o.max_new_tokens,
                                                   dtype.itemsize)
    if not o.stream:  # every token is kept until the end
        need += 8 * o.num_samples * o.max_new_tokens
    ensure_fits(need, str(device), f"{o.num_samples} sample(s) of {o.max_new_tokens:,} tokens with this model "
                f"({config.num_params() / 1e6:,.1f}M parameters)",
                "lower --num_samples or --max_new_tokens, or use a machine with more memory")


def load_source_model(source: Source) -> "torch.nn.Module":
    """The GPT in float32 on the CPU, from a run folder or from_pretrained."""
    from model.checkpoint import from_pretrained, load_model

    if source.folder is not None:
        return load_model(source.folder)[0]
    return from_pretrained(source.pretrained)


SMALL_MODEL = 20_000_000  # parameters; below this, one CPU thread generates at least as fast as several


def choose_threads(requested: int, n_params: int, compiled: bool) -> "ThreadGovernor | None":
    """--threads: an explicit count (returns None), or auto: a governor over the decode steps that
    starts at 1 thread for a small model (unless $OMP_NUM_THREADS says otherwise), else at torch's
    default, and moves the count with the machine's load (runtime/cpu.py).

    A compiled decode step keeps torch's default and no governor: its fused loops are built
    for a fixed thread count, and they do use every core.
    """
    import torch

    from runtime.cpu import OtherLoad, ThreadGovernor

    if requested > 0:
        torch.set_num_threads(requested)
        return None
    top = torch.get_num_threads()
    if compiled or top == 1:
        return None
    small = n_params < SMALL_MODEL and "OMP_NUM_THREADS" not in os.environ
    return ThreadGovernor(top, start=1 if small else top, load=OtherLoad().cores)


# ---------------------------------------------------------------------------- main


def sampling_settings(o: SampleOptions) -> dict[str, Any]:
    """The sampler's controls as generate_stream takes them (0 or 1 = off), for the sampler and its recorder."""
    return dict(temperature=o.temperature, top_k=o.top_k or None, top_p=o.top_p, min_p=o.min_p or None)


def write_samples(o: SampleOptions, model: "torch.nn.Module", tok: "Tokenizer", ids: list[int], prompt_text: str,
                  device: "torch.device", autocast_dtype: "torch.dtype", seed: int, out: BinaryIO,
                  on_step: Any = None, governor: "ThreadGovernor | None" = None) -> tuple[int, list[int]]:
    """Run the batch, print the samples, report speed on stderr; returns the exit code and sample 1's tokens
    (up to and including the one that ended it). ``on_step`` is generate_stream's per-step hook.

    ``autocast_dtype``: float32 for none (weights already in the compute dtype, or fp32 throughout).
    ``governor`` (CPU, --threads=0) is told the time of every decode step.
    """
    import torch

    from model.generate import generate_stream
    from runtime.device import autocast

    block = model.config.block_size
    if len(ids) > block:
        log(f"warning: the prompt is {len(ids)} tokens but the model's context is {block}; "
            f"it sees only the last {block} (the whole prompt is still printed)")
        ids = ids[-block:]
    B = o.num_samples
    idx = torch.tensor([ids] * B, dtype=torch.long, device=device)
    stops = [unescape(s) for s in o.stop]
    stop_id = tok.eot if (o.stop_at_eot and tok.kind != "char") else None
    rows = [RowDecoder(tok, stops, stop_id) for _ in range(B)]
    history: list[list[int]] = [[] for _ in range(B)]  # for --no-stream
    printer = Printer(out, B, prompt_text)
    generator = torch.Generator(device=device).manual_seed(seed)
    stream = generate_stream(model, idx, o.max_new_tokens, **sampling_settings(o),
                             repetition_penalty=None if o.repetition_penalty == 1.0 else o.repetition_penalty,
                             generator=generator, compile=o.compile, on_step=on_step,
                             vocab_limit=tok.vocab_size)  # never ids the tokenizer cannot decode (padded head rows)
    sample_one: list[int] = []  # sample 1's tokens, for --attention
    steps = 0
    t0 = last = time.perf_counter()
    marks: list[float] = []  # arrival of tokens 1 and 2: the prefill, then the first decode step (which compiles)
    try:
        with autocast(device, autocast_dtype):
            for nxt in stream:
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
                    if o.stream:
                        printer.emit(r, text)
                        if rows[r].finished:
                            printer.finish(r)
                    else:
                        history[r].append(token)
                if all(row.finished for row in rows):
                    break
    except KeyboardInterrupt:
        printer.interrupt()
        log(f"interrupted after {steps} tokens per sample")
        return 130, sample_one
    finally:
        stream.close()
    for r in range(B):
        if o.stream:
            printer.emit(r, rows[r].finish())
        else:
            printer.emit(r, render_row(tok, history[r], stops, stop_id))
        printer.finish(r)
    end = time.perf_counter()
    warm = min(len(marks), 2 if o.compile else 1)  # steps before the steady rate starts
    first = (marks[0] if marks else end) - t0
    compiling = f", compiling the decode step took {marks[1] - marks[0]:.2f} s" if warm == 2 else ""
    rate = (steps - warm) * B / (end - marks[warm - 1]) if steps > warm else float("nan")
    log(f"{steps} steps x {B} sample(s) = {steps * B} tokens in {end - t0:.2f} s; first token after {first:.3f} s"
        f"{compiling}, then {rate:.1f} tokens/s{thread_moves(governor)}")
    return 0, sample_one


def thread_moves(governor: "ThreadGovernor | None") -> str:
    """'; threads 1 -> 2 at 3.1 s (trial (load gone)), ...': what the governor did, if anything."""
    if governor is None or len(governor.history) < 2:
        return ""
    moves = [f"{threads} at {at:.1f} s ({why})" for at, threads, why in governor.history[1:]]
    return f"; threads {governor.history[0][1]} -> " + ", ".join(moves)


def write_attention(o: SampleOptions, model: "torch.nn.Module", tok: "Tokenizer", ids: list[int], sample_one: list[int],
                    recorder: Any, source: Source) -> None:
    """--attention: sample 1's maps and sampler choices, drawn to o.attention (.png or .html)."""
    from viz.picture import attention_view, window_tokens, write_picture

    cfg = model.config
    fmt = Path(o.attention).suffix.lower()
    t0 = time.perf_counter()
    view = attention_view(model, tok, ids + sample_one, len(ids), recorder.steps, recorder.settings(),
                          title=f"Attention: sample 1 of {source.label}",
                          max_tokens=window_tokens(cfg.n_layer, cfg.n_head, cfg.block_size, fmt))
    try:
        write_picture(o.attention, view)
    except OSError as e:
        raise UsageError(f"--attention={o.attention}: cannot write the file ({e.strerror or e}); "
                         "pick another path") from None
    log(f"attention of sample 1 ({len(view.ids)} tokens, {cfg.n_layer} layers x {cfg.n_head} heads) written to "
        f"{o.attention} in {time.perf_counter() - t0:.2f} s")


def main(argv: Sequence[str] | None = None) -> int:
    o = parse(SampleOptions, argv, prog="sample.py", description=DESCRIPTION, config_files=False)
    check_options(o)
    if sys.stdout is None:  # started with stdout closed (`>&-`): the text would go nowhere
        raise UsageError("stdout is closed, so the text would be lost; redirect it instead "
                         "(python sample.py > out.txt, or > /dev/null)")
    source = resolve_source(o)
    tok = load_tokenizer_for(source, o.gpt2_ranks)
    ids, prompt_text = encode_prompt(tok, read_prompt(o.prompt))
    seed = o.seed if o.seed is not None else secrets.randbelow(2**31)
    try:
        return run(o, source, tok, ids, prompt_text, seed)
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing was printed yet
        log("interrupted")
        return 130


def run(o: SampleOptions, source: Source, tok: "Tokenizer", ids: list[int], prompt_text: str, seed: int) -> int:
    """Load the model onto the device and generate (the part that needs torch)."""
    import torch

    from model.generate import cast_weights, decode_precision
    from runtime.device import resolve_device, resolve_dtype

    device = torch.device(resolve_device(o.device))
    if o.compile:  # fail before loading anything, as a usage error
        from model.generate import check_can_compile

        check_can_compile(device)
    dtype = resolve_dtype(o.dtype, device)
    config = source_config(source)
    if config is not None:
        check_fits(o, config, tok, len(ids), device, dtype)
    model = load_source_model(source)
    if config is None:
        check_fits(o, model.config, tok, len(ids), device, dtype)
    model.eval().to(device)
    weights_dtype, use_autocast = decode_precision(device.type, dtype)
    if weights_dtype != torch.float32:  # CUDA: weights in the compute dtype, no autocast (see model/generate.py)
        cast_weights(model, weights_dtype)
    governor = choose_threads(o.threads, model.num_params(), o.compile) if device.type == "cpu" else None
    log(f"checkpoint {source.label}: {model.num_params() / 1e6:.2f}M parameters, context {model.config.block_size}, "
        f"{tok.kind} tokenizer ({tok.vocab_size} tokens)")
    n_threads = torch.get_num_threads()
    threads = f" ({n_threads} thread{'s' if n_threads > 1 else ''})" if device.type == "cpu" else ""
    if governor is not None:
        threads = f" ({n_threads} thread{'s' if n_threads > 1 else ''} at first, up to {governor.top}: governed)"
    log(f"device {device.type}{threads}, {str(dtype).removeprefix('torch.')}, seed {seed}"
        + ("" if o.seed is not None else f" (pass --seed={seed} to repeat)"))
    # --attention: a bad path is reported after the samples are printed (they are not lost), as a usage error
    problem = recorder = None
    if o.attention:
        from viz.picture import path_problem
        from viz.record import NextTokenRecorder

        problem = path_problem(o.attention)
        recorder = NextTokenRecorder(**sampling_settings(o)) if problem is None else None
    try:
        code, sample_one = write_samples(o, model, tok, ids, prompt_text, device,
                                         dtype if use_autocast else torch.float32, seed, sys.stdout.buffer, recorder,
                                         governor)
    except BrokenPipeError:  # `python sample.py | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if code != 0 or not o.attention:
        return code
    if problem is not None:
        raise UsageError(problem)
    write_attention(o, model, tok, ids, sample_one, recorder, source)
    return 0


if __name__ == "__main__":
    run_main(main)
