"""sample.py end to end: every check runs the real program, ``python sample.py ...``, in a subprocess.

The checkpoints are tiny models trained for a few seconds in this process (a session fixture),
saved the way train.py saves them. Subprocesses run with OMP_NUM_THREADS=1: on a small, busy
machine torch's thread pool makes a tiny model hundreds of times slower, not faster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT as REPO
from conftest import needs_cpu_compiler

SEPARATOR = "\n---------------\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "C"}
ENV.pop("QUILLGPT_DEBUG", None)
ENV.pop("QUILLGPT_GPT2_RANKS", None)  # a test that needs GPT-2's ranks passes the conftest fixture's file

CHAR_TEXT = ("to be or not to be, that is the question.\nwhether tis nobler in the mind to suffer\n"
             "the slings and arrows of outrageous fortune,\nor to take arms against a sea of troubles.\n") * 20
# three-byte CJK and four-byte emoji: with only a few merges, characters are split across tokens
UTF8_TEXT = "猫が好きです。🙂🐍 naïve café — 日本語のテキスト 🎉✨\n" * 40


def sample(*args: str, input: bytes | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python sample.py *args`` from the repo root; stdout/stderr as raw bytes."""
    return subprocess.run([sys.executable, "sample.py", *args], cwd=REPO, env={**ENV, **(env or {})}, input=input,
                          capture_output=True, timeout=timeout)


def sample_many(*runs: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several ``sample(*args)`` at once (each process mostly waits on importing torch)."""
    cmds = [[sys.executable, "sample.py", *args] for args in runs]
    procs = [subprocess.Popen(c, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
    results = []
    for cmd, p in zip(cmds, procs):
        out, errs = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(cmd, p.returncode, out, errs))
    return results


def text(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode("utf-8")


def err(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.decode("utf-8")


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, err(proc)
    return proc


# ---------------------------------------------------------------------------- fixtures


def train_tiny(tok, corpus: str, steps: int, seed: int = 0):
    """A 2-layer GPT fitted to ``corpus`` for a few dozen Adam steps (plain torch, no train.py)."""
    import torch

    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=48))
    data = torch.tensor(tok.encode(corpus))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ix = torch.randint(len(data) - 33, (16,), generator=gen).tolist()
        x = torch.stack([data[i:i + 32] for i in ix])
        y = torch.stack([data[i + 1:i + 33] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> dict[str, Path]:
    """Run folders: ``char`` (trained model in best/, an untrained one as latest) and ``bpe`` (latest only)."""
    torch = pytest.importorskip("torch")
    from data.tokenizer import CharTokenizer, train_bpe
    from model import GPT, save_model

    root = tmp_path_factory.mktemp("sample_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        char = CharTokenizer(sorted(set(CHAR_TEXT)))
        trained = train_tiny(char, CHAR_TEXT, steps=60)
        run = root / "char"
        save_model(trained, run / "best", {"tokenizer": char.save(run / "best"), "iter": 120, "val_loss": 0.9})
        torch.manual_seed(1)
        save_model(GPT(trained.config), run, {"tokenizer": char.save(run), "iter": 130, "val_loss": 3.0})

        bpe = train_bpe([UTF8_TEXT], vocab_size=270)
        split = [t for t in bpe.encode(UTF8_TEXT) if not _is_utf8(bpe.decode_bytes([t]))]
        assert split, "the fixture must split some characters across tokens"
        model = train_tiny(bpe, UTF8_TEXT, steps=150)
        save_model(model, root / "bpe", {"tokenizer": bpe.save(root / "bpe")})
    finally:
        torch.set_num_threads(threads)
    return {"char": run, "bpe": root / "bpe", "root": root}


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def split_characters(tok, ids: list[int]) -> list[str]:
    """The whole characters of ``ids``' text whose UTF-8 bytes lie in two or more tokens."""
    data, cuts, at = b"", set(), 0
    for t in ids:
        data += tok.decode_bytes([t])
        cuts.add(len(data))  # a token boundary after this many bytes
    text = data.decode("utf-8", errors="ignore")  # a cut-off last character is dropped
    split = []
    for ch in text:
        n = len(ch.encode("utf-8"))
        if n > 1 and any(at < c < at + n for c in cuts):
            split.append(ch)
        at += n
    return split


def greedy_reference(folder: Path, prompt: str, n: int) -> str:
    """Greedy continuation computed independently: full forward (no KV cache) + argmax, n times."""
    tok, ids = greedy_tokens(folder, prompt, n)
    return tok.decode(ids)


def greedy_tokens(folder: Path, prompt: str, n: int) -> tuple:
    """(tokenizer, the n greedy token ids after ``prompt``), by full forwards and argmax."""
    import torch

    from data.tokenizer import load_tokenizer
    from model.checkpoint import load_model

    model, meta = load_model(folder)
    model.eval()
    tok = load_tokenizer(meta["tokenizer"], folder)
    ids = tok.encode(prompt)
    assert len(ids) + n <= model.config.block_size, "stay inside the context: no window policy involved"
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(x)
            x = torch.cat([x, logits[:, -1, :].argmax(dim=-1, keepdim=True)], dim=1)
    return tok, x[0, len(ids):].tolist()


# ---------------------------------------------------------------------------- the program


def test_help_lists_every_option_with_its_type_and_default():
    proc = ok(sample("--help"))
    assert proc.stderr == b""  # help is the answer asked for: stdout, exit 0
    out = text(proc)
    assert out.startswith("usage: sample.py ")
    lines = out.splitlines()
    options = [i for i, line in enumerate(lines) if re.fullmatch(r"  --\w+ \(.+, default .+\)", line)]
    assert len(options) >= 20
    assert all(lines[i + 1].startswith("      ") and len(lines[i + 1].strip()) > 20 for i in options)  # each has help
    assert "alias: --start" in out  # nanoGPT's name for --prompt
    # what the heads must say, written out here, so a broken formatter cannot pass by agreeing with itself
    for head in ("--max_new_tokens (int, default 500)", "--temperature (float, default 0.8)",
                 "--seed (int or none, default None)", "--stop (list of str, default [])",
                 "--stream (bool, default True)", "--out_dir (str, default 'out')",
                 "--init_from (str, default 'resume')", "--compile (str, default 'false')",
                 "--checkpoint (str, default 'auto')"):
        assert f"  {head}" in lines, head
    compile_help = lines[lines.index("  --compile (str, default 'false')") + 1]
    assert "one of: auto, true, false" in compile_help and "--compile = true, --no-compile = false" in compile_help
    assert not re.search(r"\d+(\.\d+)?x |\d+-\d+ s\b", out)  # no speed figures: they belong to docs/BENCHMARKS.md


def test_seed_reproduces_every_sample_and_stdout_holds_only_text(ckpt):
    args = ("--out_dir", str(ckpt["char"]), "--prompt", "to be", "--num_samples", "3", "--max_new_tokens", "60",
            "--temperature", "1.0")
    a, again, other = map(ok, sample_many((*args, "--seed", "7"), (*args, "--seed=7"), (*args, "--seed=8")))
    assert a.stdout == again.stdout
    assert a.stdout != other.stdout
    samples = text(a).removesuffix("\n").split(SEPARATOR)
    assert len(samples) == 3 and len(set(samples)) == 3  # rows of one batch are independent draws
    assert all(s.startswith("to be") and len(s) == len("to be") + 60 for s in samples)
    # diagnostics on stderr only: which checkpoint (best by default), device, parameters, speed
    assert "sample:" not in text(a) and "tokens/s" not in text(a)
    assert "best" in err(a) and "iter 120" in err(a) and "device cpu" in err(a) and "parameters" in err(a)
    assert re.search(r"[\d.]+ tokens/s", err(a))


@pytest.mark.parametrize("extra", [(), ("--compile",)], ids=["eager", "compiled"])
def test_temperature_zero_is_the_argmax_chain(ckpt, extra):
    if extra:
        needs_cpu_compiler()
    proc = ok(sample("--out_dir", str(ckpt["char"]), "--prompt", "whether", "--temperature", "0",
                     "--max_new_tokens", "24", *extra))
    assert text(proc) == "whether" + greedy_reference(ckpt["char"] / "best", "whether", 24) + "\n"


def test_stop_string_ends_the_sample_unprinted(ckpt):
    continuation = greedy_reference(ckpt["char"] / "best", "to be", 24)
    stop = continuation[8:11]
    cut = continuation[:continuation.index(stop)]
    proc = ok(sample("--out_dir", str(ckpt["char"]), "--prompt", "to be", "--temperature", "0", "--num_samples", "2",
                     "--max_new_tokens", "200", "--stop", stop, "--stop", "never-seen"))
    assert text(proc) == ("to be" + cut + "\n") + "---------------\n" + ("to be" + cut + "\n")
    steps = int(re.search(r"(\d+) steps", err(proc)).group(1))
    assert steps < 200  # generation ended early once every sample had stopped


def test_multibyte_utf8_streams_whole_and_equals_unstreamed(ckpt):
    greedy = ("--out_dir", str(ckpt["bpe"]), "--prompt", "猫", "--temperature", "0", "--max_new_tokens", "28")
    sampled = ("--out_dir", str(ckpt["bpe"]), "--prompt", "猫", "--temperature", "0.7", "--top_k", "5", "--seed", "3",
               "--num_samples", "3", "--max_new_tokens", "60", "--stop", "✨")
    greedy_run, streamed, whole = map(ok, sample_many(greedy, sampled, (*sampled, "--no-stream")))
    # characters split across tokens come out whole: emoji, CJK, accents, never U+FFFD
    out = text(greedy_run)
    tok, ids = greedy_tokens(ckpt["bpe"], "猫", 28)
    reference = tok.decode(ids)  # tokenizer.decode: a cut-off last character is U+FFFD
    assert out == "猫" + reference.removesuffix("\ufffd") + "\n"
    assert "\ufffd" not in out
    # what the greedy text is depends on the CPU's floating point; that it crosses token boundaries
    # inside characters does not: some multi-byte character of the output spans several tokens
    assert split_characters(tok, ids), (out, [tok.decode_bytes([t]) for t in ids])
    # several rows, streamed in order while generated, equal the whole-row decode printed at the end
    assert streamed.stdout == whole.stdout
    assert text(streamed).count(SEPARATOR) == 2 and "✨" not in text(streamed)


def test_prompt_from_file_with_nanogpt_start_alias(ckpt, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("or to take", encoding="utf-8")
    proc = ok(sample("--out_dir", str(ckpt["char"]), f"--start=FILE:{prompt}", "--temperature=0",
                     "--max_new_tokens=10"))
    assert text(proc) == "or to take" + greedy_reference(ckpt["char"] / "best", "or to take", 10) + "\n"


def test_prompt_from_stdin(ckpt):
    proc = ok(sample("--out_dir", str(ckpt["char"]), "--prompt", "-", "--max_new_tokens=10", "--seed=1",
                     input="the slings".encode("utf-8")))
    assert text(proc).startswith("the slings") and len(text(proc)) == len("the slings") + 10 + 1


def test_long_prompt_keeps_its_tail_with_a_warning(ckpt):
    prompt = CHAR_TEXT[:100]  # block_size is 32
    proc = ok(sample("--out_dir", str(ckpt["char"]), "--checkpoint=latest", "--prompt", prompt,
                     "--max_new_tokens=70", "--seed=2", "--top_p=0.9", "--min_p=0.05", "--repetition_penalty=1.2"))
    assert "warning" in err(proc) and "last 32" in err(proc)
    assert "latest" in err(proc) and "iter 130" in err(proc)
    # the whole prompt is printed, then 70 tokens: generation runs on past the context window
    assert text(proc).startswith(prompt) and len(text(proc)) == len(prompt) + 70 + 1


def test_ctrl_c_keeps_printed_text_and_exits_130(ckpt):
    proc = subprocess.Popen([sys.executable, "sample.py", "--out_dir", str(ckpt["char"]), "--max_new_tokens=1000000",
                             "--seed=1"], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.read(1)  # generation has started
        assert first
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"interrupted" in stderr
    assert len(first + rest) > 1 and rest.endswith(b"\n")


def hf_gpt2_folder(folder: Path) -> Path:
    """A tiny random GPT-2 saved as Hugging Face saves it (Conv1D weights, tied head, config.json)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from model import GPT
    from model.checkpoint import _CONV1D, config_from_hf

    hf = {"vocab_size": 50257, "n_positions": 64, "n_embd": 16, "n_layer": 1, "n_head": 2,
          "activation_function": "gelu_new"}
    torch.manual_seed(0)
    model = GPT(config_from_hf(hf))
    tensors = {k.removeprefix("transformer."): (v.t() if k.endswith(_CONV1D) else v).contiguous()
               for k, v in model.state_dict().items() if k != "lm_head.weight"}  # HF layout: Conv1D, tied head
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf), encoding="utf-8")
    return folder


def test_init_from_local_hugging_face_gpt2_folder_uses_gpt2_tokenizer(tmp_path, gpt2_ranks):
    folder = hf_gpt2_folder(tmp_path)
    proc = ok(sample("--init_from", str(folder), "--prompt", "Hello, world", "--max_new_tokens=5", "--seed=0",
                     env={"QUILLGPT_GPT2_RANKS": str(gpt2_ranks)}))
    assert text(proc).startswith("Hello, world")
    assert "gpt2 tokenizer (50257 tokens)" in err(proc)


@pytest.mark.parametrize("preset", ["modern", "classic"])
def test_init_from_exported_hf_folder_writes_as_the_run(tmp_path, preset):
    """A run exported by export.py (NanoChat or GPT-2) samples through its own tokenizer.json as the run itself."""
    import torch

    import export
    from data.tokenizer import train_bpe
    from model import GPT, GPTConfig, save_model

    bpe = train_bpe([UTF8_TEXT], vocab_size=270)
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset(preset, block_size=64, vocab_size=bpe.vocab_size, n_layer=2, n_head=2, n_embd=32,
                                 embed_norm=preset == "modern"))
    with torch.no_grad():  # a spread of logits, so the greedy chain is not one repeated token
        for p in model.parameters():
            p.normal_(0, 0.2)
    run, folder = tmp_path / "run", tmp_path / "hf"
    save_model(model, run, {"tokenizer": bpe.save(run)})
    assert export.main([f"--out_dir={run}", f"--to={folder}"]) == 0
    args = ("--prompt", "猫が", "--temperature", "0", "--max_new_tokens", "40")
    ours, back = sample_many(("--init_from", str(run), *args), ("--init_from", str(folder), *args))
    assert ok(back).stdout == ok(ours).stdout and len(text(ours)) > len("猫が") + 1
    assert "Hugging Face" in err(back) and f"({bpe.vocab_size} tokens)" in err(back)


def test_init_from_nanochat_folder_without_tokenizer_is_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.NanoChatConfig(vocab_size=50, hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32)
    transformers.NanoChatForCausalLM(cfg).save_pretrained(tmp_path)
    proc = sample("--init_from", str(tmp_path), "--prompt", "hi")
    assert proc.returncode == 2 and proc.stdout == b""
    assert err(proc).count("\n") == 1 and "no tokenizer.json beside the NanoChat weights" in err(proc)


# ---------------------------------------------------------------------------- --attention


def page_data(path: Path) -> dict:
    """The JSON the attention page's script reads."""
    page = path.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def model_maps(folder: Path, ids: list[int]):
    """(L, H, T, T) attention maps of ``ids``, computed here from the saved model."""
    import torch

    from model.checkpoint import from_pretrained

    return from_pretrained(str(folder)).attention_maps(torch.tensor([ids]))[:, 0].numpy()


def assert_page_matches(data: dict, maps) -> None:
    import numpy as np

    L, H, T, _ = maps.shape
    assert (data["n_layer"], data["n_head"], len(data["tokens"])) == (L, H, T)
    for layer in range(L):
        for head in range(H):
            for i in (0, T // 2, T - 1):
                row = np.array(data["attn"][layer][head][i]) / data["scale"]
                np.testing.assert_allclose(row, maps[layer, head, i, :i + 1], atol=0.5 / data["scale"])


def test_attention_html_and_png_draw_sample_one_and_change_no_text(ckpt, tmp_path):
    from PIL import Image

    from data.tokenizer import load_tokenizer

    base = ("--out_dir", str(ckpt["char"]), "--prompt", "to be", "--max_new_tokens=24", "--seed=4",
            "--temperature=1.2", "--top_k=8", "--num_samples=2")
    plain, html, png = map(ok, sample_many(base, (*base, f"--attention={tmp_path / 'a.html'}"),
                                           (*base, f"--attention={tmp_path / 'a.png'}")))
    assert html.stdout == plain.stdout == png.stdout  # recording the choices changes no draw
    first = text(html).split(SEPARATOR)[0].removesuffix("\n")
    data = page_data(tmp_path / "a.html")
    assert "".join(data["texts"]) == first and data["first_generated"] == len("to be")  # sample 1, every token
    folder = ckpt["char"] / "best"
    tok = load_tokenizer(json.loads((folder / "config.json").read_text(encoding="utf-8"))["tokenizer"], folder)
    assert data["ids"] == tok.encode(first)
    assert_page_matches(data, model_maps(folder, data["ids"]))
    cands = data["candidates"]
    assert all(c is None for c in cands[:5]) and all(c["chosen"] == t for c, t in zip(cands[5:], data["ids"][5:]))
    assert all(sum(c["p"]) <= 1.0 + 1e-6 and len(c["ids"]) == 5 for c in cands[5:])
    assert data["settings"] == {"temperature": 1.2, "top_k": 8, "top_p": 1.0, "min_p": None}
    assert "attention of sample 1 (29 tokens, 2 layers x 2 heads) written to" in err(html)
    img = Image.open(tmp_path / "a.png")
    assert img.format == "PNG" and img.width > 500 and len(img.convert("RGB").getcolors(1 << 20)) > 50


def test_attention_page_of_bpe_and_gpt2_tokens(ckpt, tmp_path, gpt2_ranks):
    gpt2 = hf_gpt2_folder(tmp_path)
    bpe, hf = map(ok, sample_many(
        ("--out_dir", str(ckpt["bpe"]), "--prompt", "猫が", "--max_new_tokens=12", "--seed=1",
         f"--attention={tmp_path / 'bpe.html'}"),
        ("--init_from", str(gpt2), "--gpt2_ranks", str(gpt2_ranks), "--prompt", "Hello, world",
         "--max_new_tokens=6", "--seed=0", "--temperature=0", f"--attention={tmp_path / 'gpt2.html'}")))
    data = page_data(tmp_path / "bpe.html")
    assert "".join(data["tokens"]).startswith("\\xe7")  # 猫 is cut across byte tokens: shown as bytes
    assert_page_matches(data, model_maps(ckpt["bpe"], data["ids"]))
    data = page_data(tmp_path / "gpt2.html")
    assert data["tokens"][:3] == ["Hello", ",", "·world"] and data["first_generated"] == 3
    assert_page_matches(data, model_maps(gpt2, data["ids"]))
    # greedy: the drawn token is the top candidate, with probability 1 in the distribution sampled from
    assert all(c["chosen"] == c["ids"][0] and c["p"][0] == 1.0 for c in data["candidates"][3:])


@pytest.mark.parametrize("where, message", [("a.svg", "must end in .png"), ("missing/a.html", "no such folder")])
def test_attention_bad_path_is_one_line_exit_2_after_the_samples(ckpt, tmp_path, where, message):
    proc = sample("--out_dir", str(ckpt["char"]), "--prompt", "to be", "--max_new_tokens=20", "--seed=2",
                  f"--attention={tmp_path / where}")
    assert proc.returncode == 2, err(proc)
    assert text(proc).startswith("to be") and len(text(proc)) == len("to be") + 21  # the sample was printed
    errors = [line for line in err(proc).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "--attention=" in errors[0]
    assert err(proc).rstrip().endswith(errors[0]) and "Traceback" not in err(proc)
    assert not (tmp_path / where).exists()


# ---------------------------------------------------------------------------- mistakes: one line, exit 2


def _corrupt(ckpt: dict[str, Path], kind: str) -> Path:
    """A copy of the char run's best checkpoint, broken in one way."""
    import shutil

    folder = ckpt["root"] / f"broken_{kind}"
    if not folder.exists():
        shutil.copytree(ckpt["char"] / "best", folder)
        if kind == "truncated":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        elif kind == "mismatch":
            meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            meta["model"]["n_embd"] = 64
            (folder / "config.json").write_text(json.dumps(meta), encoding="utf-8")
        elif kind == "no_weights":
            (folder / "model.safetensors").unlink()
    return folder


BAD_INPUTS = {
    # the sampling controls' one check is model.sampling.check_sampling_args (names the option, no "--")
    "negative temperature": (["--temperature=-0.5"], "temperature must be >= 0"),
    "top_p zero": (["--top_p=0"], "top_p must be in (0, 1]"),
    "top_p above one": (["--top_p=1.5"], "top_p must be in (0, 1]"),
    "negative top_k": (["--top_k=-1"], "top_k must be >= 0"),
    "min_p above one": (["--min_p=2"], "min_p must be in [0, 1]"),
    "zero repetition penalty": (["--repetition_penalty=0"], "repetition_penalty must be > 0"),
    "no new tokens": (["--max_new_tokens=0"], "--max_new_tokens must be >= 1"),
    "no samples": (["--num_samples=0"], "--num_samples must be >= 1"),
    "missing run folder": (["--out_dir=does/not/exist"], "run folder not found: does/not/exist"),
    "missing best checkpoint": (["--out_dir={broken_no_weights}", "--checkpoint=best"], "no best checkpoint"),
    "missing latest checkpoint": (["--out_dir={broken_no_weights}"], "no latest checkpoint"),
    "truncated checkpoint": (["--out_dir={broken_truncated}"], "truncated or corrupt"),
    "checkpoint not matching config": (["--out_dir={broken_mismatch}"], "does not match its config"),
    "prompt outside char vocab": (["--prompt=to bé ok 🙂"], "not in the char vocabulary: 'é', '🙂'"),
    "unreadable prompt file": (["--prompt=FILE:/no/such/prompt.txt"], "cannot read the prompt file"),
    "unknown option": (["--temprature=1"], "did you mean --temperature"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(ckpt, case):
    args, message = BAD_INPUTS[case]
    folders = {f"broken_{k}": _corrupt(ckpt, k) for k in ("truncated", "mismatch", "no_weights")}
    args = [a.format(**folders) for a in args]
    if not any(a.startswith("--out_dir") for a in args):
        args.insert(0, f"--out_dir={ckpt['char']}")
    proc = sample(*args)
    assert proc.returncode == 2, err(proc)
    assert "Traceback" not in err(proc) and proc.stdout == b""
    lines = err(proc).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_compile_without_a_cpp_compiler_is_one_line_and_exit_2(ckpt, tmp_path):
    env = {**ENV, "PATH": str(tmp_path)}  # an empty PATH: no g++ or clang++ to find
    env.pop("CXX", None)
    proc = subprocess.run([sys.executable, "sample.py", f"--out_dir={ckpt['char']}", "--compile"], cwd=REPO,
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 2, err(proc)
    lines = err(proc).strip().splitlines()
    assert len(lines) == 1 and "needs a C++ compiler" in lines[0] and "Traceback" not in err(proc), lines


# ---------------------------------------------------------------------------- spellings shared with train.py


def test_init_from_resume_samples_the_out_dir_run_as_out_dir_alone_does(ckpt):
    base = ("--prompt", "to be", "--max_new_tokens=20", "--seed=3")
    plain, resume, empty, latest = map(ok, sample_many(
        (f"--out_dir={ckpt['char']}", *base),
        ("--init_from=resume", f"--out_dir={ckpt['char']}", *base),
        ("--init_from=", f"--out_dir={ckpt['char']}", *base),
        ("--init_from", "resume", "--out_dir", str(ckpt["char"]), "--checkpoint=latest", *base)))
    assert plain.stdout == resume.stdout == empty.stdout  # the run's best checkpoint, read as a run, not a hub name
    assert "best" in err(resume) and "iter 120" in err(resume) and "hub" not in err(resume)
    assert "latest" in err(latest) and "iter 130" in err(latest)
    assert text(resume).startswith("to be") and len(text(resume)) == len("to be") + 20 + 1


def test_init_from_scratch_is_refused_in_one_line():
    proc = sample("--init_from=scratch")
    assert proc.returncode == 2 and proc.stdout == b""
    lines = err(proc).strip().splitlines()
    assert len(lines) == 1 and "--init_from=scratch: sampling needs trained weights" in lines[0]


def test_compile_takes_auto_true_false_and_the_bare_flags(ckpt, tmp_path):
    greedy = ("--out_dir", str(ckpt["char"]), "--prompt", "whether", "--temperature=0", "--max_new_tokens=12")
    want = "whether" + greedy_reference(ckpt["char"] / "best", "whether", 12) + "\n"
    runs = sample_many((*greedy,), (*greedy, "--compile=auto"), (*greedy, "--compile", "false"),
                       (*greedy, "--no-compile"), (*greedy, "--compile=off"))
    for proc in runs:  # auto is off on the CPU: none of these compiles
        assert text(ok(proc)) == want and "compiling" not in err(proc)
    env = {**ENV, "PATH": str(tmp_path)}  # no C++ compiler: a run that does compile says so and stops
    env.pop("CXX", None)
    for spelling in (["--compile=true"], ["--compile"], ["--compile", "yes"], ["--compile", "--seed=1"]):
        proc = subprocess.run([sys.executable, "sample.py", *greedy, *spelling], cwd=REPO, env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 2 and "needs a C++ compiler" in err(proc), (spelling, err(proc))
    proc = sample(*greedy, "--compile=maybe")
    assert proc.returncode == 2 and "--compile: 'maybe' is not one of auto, true, false" in err(proc)


def test_device_takes_train_py_spellings():
    proc = sample("--device=cuda:0", "--init_from=./nowhere")  # accepted as a name; the folder is what fails
    assert proc.returncode == 2 and "no such folder" in err(proc) and "--device" not in err(proc)
    proc = sample("--device=tpu")
    assert proc.returncode == 2 and "--device: 'tpu' is not one of auto, cpu, cuda, cuda:N or mps" in err(proc)
