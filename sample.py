"""Write text with a trained quillgpt model (or OpenAI's GPT-2), streamed as it is generated.

    python sample.py --temperature 0.8                      # the best checkpoint of ./out
    python sample.py --out_dir=out --checkpoint=latest --prompt "ROMEO:" --num_samples 3
    python sample.py --init_from=resume --out_dir=out       # the same run, as train.py spells it
    python sample.py --init_from=gpt2 --prompt FILE:prompt.txt --stop "\\n\\n"
    python sample.py --prompt "ROMEO:" --attention=attn.html   # then open attn.html: what each token attends to
    echo "Once upon a time" | python sample.py --init_from=gpt2 --prompt -

Samples are generated as one batch; sample 1 streams live and the others follow in order
(each printed as soon as the ones before it are done). stdout holds only text (each sample's
prompt and continuation, then a newline; samples apart by a "---------------" line), stderr
the diagnostics. Ctrl-C keeps what was printed and exits with code 130 (128 + SIGINT: a script
can tell the text was cut short).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from runtime.cpu import SMALL_MODEL
from runtime.device import DEVICE_NAMES, DTYPES, check_device_name
from runtime.errors import DeviceError, UsageError
from runtime.options import check_seed, opt, parse, read_text, run_main

if TYPE_CHECKING:  # torch and what needs it are imported after the options are parsed: --help answers at once
    from data.tokenizer import Tokenizer
    from model.checkpoint import Source


@dataclass
class SampleOptions:
    out_dir: str = opt("out", "run folder written by train.py to sample from")
    checkpoint: str = opt("auto", "which checkpoint of --out_dir: best (lowest val loss, OUT_DIR/best), latest "
                                  "(OUT_DIR itself), or auto = best if saved, else latest",
                          choices=("auto", "best", "latest"))
    init_from: str = opt("resume", "resume = the --checkpoint of --out_dir; else a quillgpt run folder, a local "
                                   "Hugging Face GPT-2/NanoChat folder (export.py's) or a hub name (gpt2, gpt2-medium, "
                                   "gpt2-large, gpt2-xl); the folder's tokenizer.json, else the gpt2 tokenizer")
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
                                  "it and carries on")
    stream: bool = opt(True, "print text as it is generated; --no-stream prints each sample when all are done")
    device: str = opt("auto", f"where to run: {DEVICE_NAMES} (auto = cuda, else mps, else cpu)")
    dtype: str = opt("auto", "compute precision: auto = bfloat16 on a GPU that has it natively, float16 on "
                             "older GPUs, float32 on CPU and MPS", choices=DTYPES)
    threads: int = opt(0, f"CPU threads for torch; 0 = auto: start with 1 under {SMALL_MODEL // 1_000_000}M "
                          "parameters (tiny eager matmuls lose to thread hand-offs), else torch's default or "
                          "$OMP_NUM_THREADS, and let a governor time the decode steps and move the count to whatever "
                          "is fastest now (fewer while other processes load the machine); with --compile, torch's "
                          "default; N = exactly N")
    compile: str = opt("false", "torch.compile the decode step (fixed shapes, one graph per batch size): auto (on "
                                "for CUDA, off for CPU), true, false; compiling takes seconds once per process, so "
                                "it pays off for long generations", choices=("auto", "true", "false"),
                       flag=("true", "false"))
    attention: str = opt("", "after sampling, draw sample 1 (prompt + generated text) to this file: PATH.png = "
                             "a layer x head grid of attention heatmaps (last 64 tokens); PATH.html = an offline "
                             "page: hover a token to see what it attends to, per layer and head, and each "
                             "generated token's top-5 candidates as sampled; empty = off")


DESCRIPTION = "\n\n".join(__doc__.split("\n\n")[0:3:2])  # what it does, and where the text goes


def log(msg: str) -> None:
    """A diagnostic line on stderr (stdout is reserved for the generated text)."""
    print(f"sample: {msg}", file=sys.stderr, flush=True)


def check_options(o: SampleOptions) -> None:
    """Reject out-of-range values before anything slow happens (model.sampling owns the sampling rules)."""
    from model.sampling import check_sampling_args

    for name, least in (("max_new_tokens", 1), ("num_samples", 1), ("threads", 0)):
        if getattr(o, name) < least:
            raise UsageError(f"--{name} must be >= {least}{' (0 = auto)' if name == 'threads' else ''}, "
                             f"got {getattr(o, name)}")
    if any(s == "" for s in o.stop):
        raise UsageError("--stop needs a non-empty string")
    if o.init_from == "scratch":
        raise UsageError("--init_from=scratch: sampling needs trained weights; give resume (--out_dir's run), "
                         "a run folder, a Hugging Face GPT-2/NanoChat folder or a hub name such as gpt2")
    try:
        check_device_name(o.device)
    except DeviceError:
        raise UsageError(f"--device: {o.device!r} is not one of {DEVICE_NAMES}") from None
    check_seed(o.seed)
    try:
        check_sampling_args(o.temperature, o.top_k, o.top_p, o.min_p, o.repetition_penalty)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from model.checkpoint import resolve_source, source_tokenizer
    from model.streaming import encode_prompt

    o = parse(SampleOptions, argv, prog="sample.py", description=DESCRIPTION, config_files=False)
    check_options(o)
    if sys.stdout is None:  # started with stdout closed (`>&-`): the text would go nowhere
        raise UsageError("stdout is closed, so the text would be lost; redirect it instead "
                         "(python sample.py > out.txt, or > /dev/null)")
    source = resolve_source(o.out_dir, o.checkpoint) if o.init_from in ("resume", "") else resolve_source(o.init_from)
    tok = source_tokenizer(source, o.gpt2_ranks)
    ids, prompt_text = encode_prompt(tok, read_text(o.prompt, notice=log))
    seed = o.seed if o.seed is not None else secrets.randbelow(2**31)
    try:
        return run(o, source, tok, ids, prompt_text, seed)
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing was printed yet
        log("interrupted")
        return 130


def run(o: SampleOptions, source: "Source", tok: "Tokenizer", ids: list[int], prompt_text: str, seed: int) -> int:
    """Load the model onto the device, generate, print, and draw --attention (the part that needs torch)."""
    import torch

    from model.checkpoint import from_pretrained, source_config
    from model.generate import check_can_compile, check_generation_fits, prepare_for_decoding
    from model.streaming import stream_samples, unescape_stop
    from runtime.cpu import choose_threads, thread_moves, thread_note
    from runtime.device import resolve_device, resolve_dtype
    from viz.picture import draw_sample, path_problem
    from viz.record import NextTokenRecorder

    device = torch.device(resolve_device(o.device))
    compile = o.compile == "true" or (o.compile == "auto" and device.type == "cuda")
    if compile:  # fail before loading anything, as a usage error
        check_can_compile(device)
    dtype = resolve_dtype(o.dtype, device)
    config = source_config(source)  # None for a hub name: checked once downloaded
    model = None if config is not None else from_pretrained(source)
    check_generation_fits(config or model.config, tok.vocab_size, o.num_samples, len(ids), o.max_new_tokens, dtype,
                          str(device), keep_tokens=not o.stream,
                          fix="lower --num_samples or --max_new_tokens, or use a machine with more memory")
    model = model or from_pretrained(source)
    autocast_dtype = prepare_for_decoding(model, device, dtype)  # CUDA: weights cast, no autocast
    governor = choose_threads(o.threads, model.num_params(), compile) if device.type == "cpu" else None
    block = model.config.block_size
    log(f"checkpoint {source.label}: {model.num_params() / 1e6:.2f}M parameters, context {block}, "
        f"{tok.kind} tokenizer ({tok.vocab_size} tokens)")
    threads = f" ({thread_note(governor)})" if device.type == "cpu" else ""
    log(f"device {device.type}{threads}, {str(dtype).removeprefix('torch.')}, seed {seed}"
        + ("" if o.seed is not None else f" (pass --seed={seed} to repeat)"))
    sampling = dict(temperature=o.temperature, top_k=o.top_k or None, top_p=o.top_p, min_p=o.min_p or None)
    # --attention: a bad path is reported after the samples are printed (they are not lost), as a usage error
    problem = path_problem(o.attention) if o.attention else None
    recorder = NextTokenRecorder(**sampling) if o.attention and problem is None else None
    if len(ids) > block:
        log(f"warning: the prompt is {len(ids)} tokens but the model's context is {block}; "
            f"it sees only the last {block} (the whole prompt is still printed)")
    try:
        report = stream_samples(
            model, tok, ids, prompt_text, sys.stdout.buffer, num_samples=o.num_samples,
            max_new_tokens=o.max_new_tokens, sampling=sampling,
            repetition_penalty=None if o.repetition_penalty == 1.0 else o.repetition_penalty,
            stops=[unescape_stop(s) for s in o.stop], stop_at_eot=o.stop_at_eot, stream=o.stream, seed=seed,
            autocast_dtype=autocast_dtype, compile=compile, on_step=recorder,
            governor=governor)
    except BrokenPipeError:  # `python sample.py | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if report.code != 0:
        log(f"interrupted after {report.steps} tokens per sample")
        return report.code
    log(report.speed() + thread_moves(governor))
    if not o.attention:
        return 0
    if problem is not None:
        raise UsageError(problem)
    t0 = time.perf_counter()
    view = draw_sample(o.attention, model, tok, ids + report.sample_one, len(ids), recorder.steps,
                       recorder.settings(), title=f"Attention: sample 1 of {source.label}")
    log(f"attention of sample 1 ({len(view.ids)} tokens, {model.config.n_layer} layers x {model.config.n_head} "
        f"heads) written to {o.attention} in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
