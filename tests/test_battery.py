"""The bad-input battery: train.py, sample.py and data/prepare.py, tried as a hostile and a clumsy user would.

Every case runs the program's ``main(argv)`` in-process through ``run_main`` (the command-line
path minus the interpreter start) and must end the same way: exit code 2, exactly one stderr
line, starting with ``error:`` and naming the problem, no traceback, and not one byte, file,
link or folder changed anywhere in the world the case ran in (data folders, run folders, cwd).

The world is built once per module: a tiny corpus prepared twice (two vocabularies), one short
training run, and many copies of it each broken in one way (missing or mistyped fields, hostile
pickles, links out of the folder, tokenizers from another corpus, configs asking for hundreds
of GB...). ``test_the_battery_is_big_enough`` keeps the table at 100+ distinct cases.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import ROOT

import sample
import train
from data import prepare
from runtime.options import run_main

POEM = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
        "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n") * 20
OTHER = "0123456789 zyxwvutsrqponmlk JIHGFEDCBA !?#%&*+=<>\n" * 40  # another vocabulary
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=8", "--eval_iters=2",
        "--sample_tokens=0", "--device=cpu", "--dtype=float32", "--log_interval=1", "--threads=1",
        "--warmup_iters=2"]
PROGRAMS = {"train": train.main, "sample": sample.main, "prepare": prepare.main}


class Exploit:
    """A pickle that would run a shell command if anything unpickled it without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------- the world


def _state(run: Path) -> dict:
    return torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    """Change a JSON file in place (``edit`` mutates the object; what it returns is ignored)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _edit_state(key: str, value: object = None, delete: bool = False) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        state = _state(run)
        if delete:
            del state[key]
        else:
            state[key] = value
        torch.save(state, run / "train_state.pt")
    return edit


def _nested(path: list[str], value: object) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        state = _state(run)
        d = state
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        torch.save(state, run / "train_state.pt")
    return edit


def _both_configs(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        for cfg in (run / "config.json", run / "best" / "config.json"):
            _edit_json(cfg, edit)
    return apply


def _write(name: str, data: bytes | str, *, best_too: bool = True) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        for folder in (run, run / "best") if best_too else (run,):
            p = folder / name
            p.unlink(missing_ok=True)
            p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return apply


def _link_out(name: str, target: Path, in_best: bool = False) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        p = (run / "best" if in_best else run) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        p.symlink_to(target)
    return apply


def _legacy_tokenizer(data: str) -> Callable[[Path], None]:
    """A run saved before specs recorded a sha256, whose tokenizer.json holds ``data``."""
    def apply(run: Path) -> None:
        for folder in (run, run / "best"):
            _edit_json(folder / "config.json", lambda c: c["tokenizer"].pop("sha256"))
            (folder / "tokenizer.json").write_text(data, encoding="utf-8")
        state = _state(run)
        state["tokenizer"].pop("sha256")
        torch.save(state, run / "train_state.pt")
    return apply


def _huge(c: dict) -> None:
    c["model"].update(n_layer=48, n_embd=16384, n_head=128)  # ~155B parameters: hundreds of GB in float32


def _run_variants(W: Path) -> dict[str, Callable[[Path], None]]:
    run = W / "run"
    other_tok = (W / "data" / "other" / "char" / "tokenizer.json").read_bytes()
    other_model = W / "other_run" / "model.safetensors"
    return {
        # train_state.pt, the file a resume trusts most
        "st_missing_rng": _edit_state("rng", delete=True),
        "st_iter_str": _edit_state("iter", "4"),
        "st_iter_negative": _edit_state("iter", -3),
        "st_cfg_list": _edit_state("train_config", [1, 2]),
        "st_model_cfg_str": _edit_state("model_config", "big"),
        "st_optimizers_junk": _edit_state("optimizers", [{"state": 5}, {"param_groups": 1}]),
        "st_loader_junk": _edit_state("loader", {"step": "x"}),
        "st_rng_junk": _nested(["rng", "torch"], torch.zeros(3, dtype=torch.uint8)),
        "st_bad_lr": _nested(["train_config", "learning_rate"], "abc"),
        "st_negative_lr": _nested(["train_config", "learning_rate"], -1.0),
        "st_truncated": lambda r: (r / "train_state.pt").write_bytes((run / "train_state.pt").read_bytes()[:1000]),
        "st_tensor": lambda r: torch.save(torch.zeros(3), r / "train_state.pt"),
        "st_pickle": lambda r: (r / "train_state.pt").write_bytes(
            pickle.dumps({"format": 1, "model": Exploit(W / "pwned")})),
        "st_zip_pickle": lambda r: torch.save({"format": 1, "model": Exploit(W / "pwned")}, r / "train_state.pt"),
        "st_link": _link_out("train_state.pt", W / "outside" / "train_state.pt"),
        "st_legacy_cfg_list": lambda r: (_edit_state("tokenizer", delete=True)(r),
                                         (r / "config.json").write_text("[1]", encoding="utf-8")),
        "st_tok_escape": _nested(["tokenizer", "file"], "../../poem.txt"),
        # config.json and weights, what sample.py reads
        "cfg_list": _write("config.json", "[1]"),
        "cfg_not_json": _write("config.json", "{not json"),
        "cfg_no_model": _both_configs(lambda c: c.pop("model")),
        "cfg_bad_types": _both_configs(lambda c: c["model"].update(n_layer="two")),
        "cfg_unknown_field": _both_configs(lambda c: c["model"].update(n_experts=8)),
        "cfg_huge": _both_configs(_huge),
        "cfg_tok_escape": _both_configs(lambda c: c["tokenizer"].update(file="../../../poem.txt")),
        "cfg_tok_absolute": _both_configs(lambda c: c["tokenizer"].update(file=str(W / "poem.txt"))),
        "cfg_tok_unknown": _both_configs(lambda c: c["tokenizer"].update(kind="sentencepiece")),
        "cfg_tok_missing": _both_configs(lambda c: c.pop("tokenizer")),
        "tok_swapped": _write("tokenizer.json", other_tok),
        "tok_not_json": _legacy_tokenizer("not json"),
        "tok_list": _legacy_tokenizer("[1, 2]"),
        "tok_multichar": _legacy_tokenizer('{"chars": ["ab", "c"]}'),
        "tok_gone": lambda r: [(f / "tokenizer.json").unlink() for f in (r, r / "best")],
        "w_truncated": lambda r: [(f / "model.safetensors").write_bytes(b"\x08" + b"\0" * 30) for f in (r, r / "best")],
        "w_mismatch": lambda r: [shutil.copy(other_model, f / "model.safetensors") for f in (r, r / "best")],
        "w_link": _link_out("model.safetensors", W / "outside" / "model.safetensors", in_best=True),
        "best_link": _link_out("best", W / "outside" / "best"),
        "metrics_link": _link_out("metrics.jsonl", W / "outside" / "metrics.jsonl"),
        "no_best": lambda r: shutil.rmtree(r / "best"),
    }


def _build_world(W: Path) -> None:
    (W / "poem.txt").write_text(POEM, encoding="utf-8")
    (W / "other.txt").write_text(OTHER, encoding="utf-8")
    (W / "empty.txt").write_text("", encoding="utf-8")
    (W / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (W / "emptydir").mkdir()
    (W / "mixed").mkdir()
    (W / "mixed" / "a.txt").write_text("hello", encoding="utf-8")
    (W / "mixed" / "b.jsonl").write_text('{"text": "hi"}\n', encoding="utf-8")
    (W / "bad_ranks.tiktoken").write_text("this is not a rank file\n", encoding="utf-8")
    for name, text in (("poem", "poem.txt"), ("other", "other.txt")):
        assert prepare.main([f"--dataset={name}", f"--input={W / text}", f"--data_dir={W / 'data'}"]) == 0
    base = ["--dataset=poem", f"--input={W / 'poem.txt'}", "--data_dir=data", *TINY]
    train.train(train.load_config([*base, f"--out_dir={W / 'run'}", "--max_iters=4", "--eval_interval=2"]),
                log_to_console=False)
    train.train(train.load_config([*base, f"--out_dir={W / 'other_run'}", "--n_embd=16", "--max_iters=1",
                                   "--eval_interval=1"]), log_to_console=False)
    run = W / "run"
    # outside: files a hostile folder could point at (links lead here)
    outside = W / "outside"
    outside.mkdir()
    for name in ("train_state.pt", "model.safetensors", "metrics.jsonl"):
        shutil.copy(run / name, outside / name)
    shutil.copytree(run / "best", outside / "best")
    for name, edit in _run_variants(W).items():
        shutil.copytree(run, W / name, symlinks=True)
        edit(W / name)
    # folders that are not (yet) runs
    (W / "empty_dir").mkdir()
    never = W / "never_saved"  # killed before its first checkpoint
    never.mkdir()
    shutil.copy(run / "tokenizer.json", never)
    shutil.copy(run / "metrics.jsonl", never)
    half = W / "half_saved"  # killed inside its first checkpoint: state and weights, no config.json yet
    half.mkdir()
    for name in ("train_state.pt", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        shutil.copy(run / name, half)
    for name, config in (("empty_cfg", {}), ("list_cfg", [1]), ("hf_bad_act", {"activation_function": "swish"})):
        (W / name).mkdir()
        (W / name / "config.json").write_text(json.dumps(config), encoding="utf-8")
        shutil.copy(run / "model.safetensors", W / name)
    # data folders, broken
    for name in ("data_bad_meta", "data_dtype", "data_bad_tokens", "data_link", "data_no_vocab"):
        shutil.copytree(W / "data", W / name, symlinks=True)
    char = "poem/char"
    (W / "data_bad_meta" / char / "meta.json").write_text("{", encoding="utf-8")
    _edit_json(W / "data_dtype" / char / "meta.json", lambda m: m.update(dtype="float64"))
    _edit_json(W / "data_no_vocab" / char / "meta.json", lambda m: m.pop("vocab_size"))
    np.full(4000, 60000, dtype=np.uint16).tofile(W / "data_bad_tokens" / char / "train.bin")  # ids past the vocab
    (W / "data_link" / char / "train.bin").unlink()
    (W / "data_link" / char / "train.bin").symlink_to(W / "data" / char / "train.bin")
    (W / "userdata" / "poem" / "char").mkdir(parents=True)  # the user's own folder, not a prepared one
    (W / "userdata" / "poem" / "char" / "mine.txt").write_text("my notes", encoding="utf-8")
    (W / "filedata" / "poem").mkdir(parents=True)
    (W / "filedata" / "poem" / "char").write_text("a file where a folder would go", encoding="utf-8")
    (W / "linkdata" / "poem").mkdir(parents=True)
    (W / "linkdata" / "poem" / "char").symlink_to(W / "data" / char)
    (W / "bad.toml").write_text("learning_rate = [", encoding="utf-8")
    (W / "unknown.toml").write_text("learning_rat = 1e-3\n", encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    W = tmp_path_factory.mktemp("battery")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = os.getcwd()
    os.chdir(W)
    try:
        _build_world(W)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return W


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: (kind, size, mtime, crc32) for files, the target for links, 'dir' for folders."""
    snap: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir",)
            else:
                st = p.stat()
                snap[rel] = ("file", st.st_size, st.st_mtime_ns, zlib.crc32(p.read_bytes()))
    return snap


# ---------------------------------------------------------------------------- the cases

NEW = ["--dataset=poem", "--input={W}/poem.txt", "--data_dir={W}/data", *TINY, "--out_dir={W}/new"]
RESUME = ["--init_from=resume", "--max_iters=8"]
SAMPLE = ["--max_new_tokens=3", "--seed=1"]
PREP = ["--dataset=poem", "--input={W}/poem.txt"]
T, S, P = "train", "sample", "prepare"

CASES: list[tuple[str, str, list[str], str]] = [
    # ---- train.py: option values that make no sense
    ("lr zero", T, [*NEW, "--learning_rate=0"], "--learning_rate must be > 0"),
    ("lr negative", T, [*NEW, "--learning_rate=-1"], "--learning_rate must be > 0"),
    ("lr nan", T, [*NEW, "--learning_rate=nan"], "finite number"),
    ("lr inf", T, [*NEW, "--learning_rate=inf"], "finite number"),
    ("muon lr zero", T, [*NEW, "--muon_lr=0"], "--muon_lr must be > 0"),
    ("beta1 above 1", T, [*NEW, "--beta1=1.5"], "--beta1 must be in [0, 1)"),
    ("beta2 equal 1", T, [*NEW, "--beta2=1"], "--beta2 must be in [0, 1)"),
    ("beta1 negative", T, [*NEW, "--beta1=-0.1"], "--beta1 must be in [0, 1)"),
    ("muon momentum 1", T, [*NEW, "--muon_momentum=1"], "--muon_momentum must be in [0, 1)"),
    ("weight decay negative", T, [*NEW, "--weight_decay=-0.1"], "--weight_decay must be >= 0"),
    ("grad clip negative", T, [*NEW, "--grad_clip=-1"], "--grad_clip must be >= 0"),
    ("min lr negative", T, [*NEW, "--min_lr=-1e-4"], "--min_lr must be >= 0"),
    ("seed negative", T, [*NEW, "--seed=-1"], "--seed=-1 is out of range"),
    ("seed 1e30", T, [*NEW, "--seed=1e30"], "is out of range"),
    ("seed 2**63", T, [*NEW, "--seed=9223372036854775808"], "is out of range"),
    ("device tpu", T, [*NEW, "--device=tpu"], "unknown device 'tpu'"),
    ("device cuda:x", T, [*NEW, "--device=cuda:x"], "unknown device"),
    ("device cuda absent", T, [*NEW, "--device=cuda"], "sees no CUDA GPU"),
    ("dtype float64", T, [*NEW, "--dtype=float64"], "--dtype: 'float64' is not one of"),
    ("compile maybe", T, [*NEW, "--compile=maybe"], "--compile: expected auto, true or false"),
    ("batch size zero", T, [*NEW, "--batch_size=0"], "--batch_size must be >= 1"),
    ("batch size 1e9", T, [*NEW, "--batch_size=1000000000"], "of memory but this machine has"),
    ("block size 1e8", T, [*NEW, "--block_size=100000000"], "of memory but this machine has"),
    ("n_embd 262144", T, [*NEW, "--n_embd=262144"], "of memory but this machine has"),
    ("sample tokens 1e13", T, [*NEW, "--sample_tokens=10000000000000"], "of memory but this machine has"),
    ("n_layer zero", T, [*NEW, "--n_layer=0"], "--n_layer must be >= 1"),
    ("n_head not dividing", T, [*NEW, "--n_head=3"], "divisible by n_head"),
    ("n_kv_head not dividing", T, [*NEW, "--n_kv_head=3"], "divisible by n_kv_head"),
    ("n_kv_head zero", T, [*NEW, "--n_kv_head=0"], "--n_kv_head must be >= 1"),
    ("dropout 1", T, [*NEW, "--dropout=1"], "--dropout must be in [0, 1)"),
    ("dropout negative", T, [*NEW, "--dropout=-0.5"], "--dropout must be in [0, 1)"),
    ("eval interval zero", T, [*NEW, "--eval_interval=0"], "--eval_interval must be >= 1"),
    ("eval iters zero", T, [*NEW, "--eval_iters=0"], "--eval_iters must be >= 1"),
    ("log interval zero", T, [*NEW, "--log_interval=0"], "--log_interval must be >= 1"),
    ("max iters negative", T, [*NEW, "--max_iters=-1"], "--max_iters must be >= 0"),
    ("warmup negative", T, [*NEW, "--warmup_iters=-5"], "--warmup_iters must be >= 0"),
    ("sample tokens negative", T, [*NEW, "--sample_tokens=-1"], "--sample_tokens must be >= 0"),
    ("threads negative", T, [*NEW, "--threads=-2"], "--threads must be >= 0"),
    ("eval batch zero", T, [*NEW, "--eval_batch_size=0"], "--eval_batch_size must be >= 1"),
    ("lr decay negative", T, [*NEW, "--lr_decay_iters=-1"], "--lr_decay_iters must be >= 0"),
    ("cooldown zero", T, [*NEW, "--cooldown_frac=0"], "--cooldown_frac must be in (0, 1]"),
    ("cooldown above 1", T, [*NEW, "--cooldown_frac=1.5"], "--cooldown_frac must be in (0, 1]"),
    ("softcap negative", T, [*NEW, "--logit_softcap=-1"], "--logit_softcap must be >= 0"),
    ("peak flops zero", T, [*NEW, "--peak_flops=0"], "--peak_flops must be > 0"),
    ("tokenizer unknown", T, [*NEW, "--tokenizer=sentencepiece"], "--tokenizer: 'sentencepiece' is not one of"),
    ("bpe vocab 100", T, [*NEW, "--tokenizer=bpe", "--vocab_size=100"], "--vocab_size=100: a byte-level BPE"),
    ("max tokens 1", T, [*NEW, "--max_tokens=1"], "--max_tokens=1 is too small"),
    ("optimizer sgd", T, [*NEW, "--optimizer=sgd"], "--optimizer: 'sgd' is not one of"),
    ("schedule linear", T, [*NEW, "--lr_schedule=linear"], "--lr_schedule: 'linear' is not one of"),
    ("data mode shuffle", T, [*NEW, "--data_mode=shuffle"], "--data_mode: 'shuffle' is not one of"),
    ("model llama", T, [*NEW, "--model=llama"], "--model: 'llama' is not one of"),
    ("pos emb alibi", T, [*NEW, "--pos_emb=alibi"], "--pos_emb: 'alibi' is not one of"),
    ("wandb mode loud", T, [*NEW, "--wandb_mode=loud"], "--wandb_mode: 'loud' is not one of"),
    ("bool maybe", T, [*NEW, "--keep_best=maybe"], "--keep_best: expected bool"),
    ("int twelve", T, [*NEW, "--batch_size=twelve"], "--batch_size: expected int, got 'twelve'"),
    ("int 1.5", T, [*NEW, "--batch_size=1.5"], "--batch_size: expected int"),
    ("int 1e400", T, [*NEW, "--eval_interval=1e400"], "--eval_interval: expected int"),
    ("unknown option", T, [*NEW, "--n_layerz=2"], "unknown option --n_layerz; did you mean --n_layer?"),
    ("positional junk", T, [*NEW, "junk"], "unexpected argument 'junk'"),
    ("missing toml", T, [*NEW, "{W}/missing.toml"], "config file not found"),
    ("broken toml", T, [*NEW, "{W}/bad.toml"], "not valid TOML"),
    ("toml unknown key", T, [*NEW, "{W}/unknown.toml"], "unknown option 'learning_rat'"),
    ("value missing", T, [*NEW, "--batch_size"], "--batch_size needs a value"),
    ("overwrite with resume", T, [*NEW, "--init_from=resume", "--overwrite"], "cannot be combined"),
    # ---- train.py: folders
    ("out_dir empty", T, [*NEW, "--out_dir="], "--out_dir must not be empty"),
    ("out_dir is a file", T, [*NEW, "--out_dir={W}/poem.txt"], "is a file, not a folder"),
    ("out_dir under a file", T, [*NEW, "--out_dir={W}/poem.txt/sub"], "so no folder can be made inside it"),
    ("out_dir a broken link", T, [*NEW, "--out_dir={W}/outside/nowhere/x"], None),  # made a broken link below
    ("out_dir holds a run", T, [*NEW, "--out_dir={W}/run"], "already holds a run"),
    ("out_dir holds metrics only", T, [*NEW, "--out_dir={W}/never_saved"], "already holds a run (metrics.jsonl)"),
    ("data_dir is a file", T, [*NEW, "--data_dir={W}/poem.txt"], "is a file, so no folder can be made inside it"),
    ("data_dir empty", T, [*NEW, "--data_dir="], "--data_dir must not be empty"),
    ("dataset dotdot", T, [*NEW, "--dataset=.."], "is not a usable folder name"),
    ("dataset empty", T, [*NEW, "--dataset="], "--dataset must not be empty"),
    ("input missing", T, [*NEW, "--dataset=nope", "--input={W}/missing.txt"], "input not found"),
    ("data meta corrupt", T, [*NEW, "--data_dir={W}/data_bad_meta"], "meta.json is unreadable or corrupt"),
    ("data dtype hostile", T, [*NEW, "--data_dir={W}/data_dtype"], "token dtype 'float64'"),
    ("data meta no vocab", T, [*NEW, "--data_dir={W}/data_no_vocab"], "vocab_size is None"),
    ("data token link", T, [*NEW, "--data_dir={W}/data_link"], "train.bin is a link out of its folder"),
    ("data user folder", T, [*NEW, "--data_dir={W}/userdata"], "is not a prepared data folder (no meta.json)"),
    ("data target a file", T, [*NEW, "--data_dir={W}/filedata"], "is a file, not a prepared data folder"),
    ("block bigger than val", T, [*NEW, "--block_size=1000"], "too few for one window"),
    ("init_from empty cfg", T, [*NEW, "--init_from={W}/empty_cfg"], "not a usable GPT-2 config.json"),
    ("init_from list cfg", T, [*NEW, "--init_from={W}/list_cfg"], "is not a JSON object"),
    ("init_from missing", T, [*NEW, "--init_from=./nowhere"], "no such folder"),
    ("init_from huge", T, [*NEW, "--init_from={W}/cfg_huge"], "of memory but this machine has"),
    ("init_from bad act", T, [*NEW, "--init_from={W}/hf_bad_act"], "unsupported GPT-2 activation_function"),
    # ---- train.py --init_from=resume: the run folder is untrusted input
    ("resume no folder", T, [*RESUME, "--out_dir={W}/nothing"], "run folder {W}/nothing does not exist"),
    ("resume empty folder", T, [*RESUME, "--out_dir={W}/empty_dir"], "no train_state.pt in"),
    ("resume never saved", T, [*RESUME, "--out_dir={W}/never_saved"], "before its first train state was saved"),
    ("resume missing rng", T, [*RESUME, "--out_dir={W}/st_missing_rng"], "'rng' is missing"),
    ("resume iter str", T, [*RESUME, "--out_dir={W}/st_iter_str"], "'iter' is a str"),
    ("resume iter negative", T, [*RESUME, "--out_dir={W}/st_iter_negative"], "is negative"),
    ("resume cfg list", T, [*RESUME, "--out_dir={W}/st_cfg_list"], "the saved options are not a table"),
    ("resume model cfg str", T, [*RESUME, "--out_dir={W}/st_model_cfg_str"], "'model_config' is a str"),
    ("resume optimizers junk", T, [*RESUME, "--out_dir={W}/st_optimizers_junk"], "cannot restore the optimizer"),
    ("resume loader junk", T, [*RESUME, "--out_dir={W}/st_loader_junk"], "saved position 'x'"),
    ("resume rng junk", T, [*RESUME, "--out_dir={W}/st_rng_junk"], "cannot restore the RNG state"),
    ("resume saved lr str", T, [*RESUME, "--out_dir={W}/st_bad_lr"], "saved option learning_rate='abc'"),
    ("resume saved lr negative", T, [*RESUME, "--out_dir={W}/st_negative_lr"], "saved options do not make a valid"),
    ("resume truncated", T, [*RESUME, "--out_dir={W}/st_truncated"], "truncated or corrupt"),
    ("resume not a dict", T, [*RESUME, "--out_dir={W}/st_tensor"], "is not a quillgpt train_state"),
    ("resume raw pickle exploit", T, [*RESUME, "--out_dir={W}/st_pickle"], "it is a bare pickle stream"),
    ("resume zip pickle exploit", T, [*RESUME, "--out_dir={W}/st_zip_pickle"], "holds pickled objects or code"),
    ("resume state link", T, [*RESUME, "--out_dir={W}/st_link"], "train_state.pt is a link out of its run folder"),
    ("resume legacy cfg list", T, [*RESUME, "--out_dir={W}/st_legacy_cfg_list"], "is not a JSON object"),
    ("resume tokenizer escape", T, [*RESUME, "--out_dir={W}/st_tok_escape"], "which is not a file inside"),
    ("resume tokenizer swapped", T, [*RESUME, "--out_dir={W}/tok_swapped"], "sha256 differs"),
    ("resume metrics link", T, [*RESUME, "--out_dir={W}/metrics_link"], "metrics.jsonl is a link out"),
    ("resume best link", T, [*RESUME, "--out_dir={W}/best_link"], "best is a link out"),
    ("resume other corpus", T, [*RESUME, "--out_dir={W}/run", "--dataset=other", "--input={W}/other.txt"],
     "that data uses a different tokenizer"),
    ("resume other arch", T, [*RESUME, "--out_dir={W}/run", "--n_embd=64"], "with a different architecture"),
    ("resume other block", T, [*RESUME, "--out_dir={W}/run", "--block_size=32"], "with a different architecture"),
    ("resume other optimizer", T, [*RESUME, "--out_dir={W}/run", "--optimizer=adamw"], "a different --optimizer"),
    ("resume bad token ids", T, [*RESUME, "--out_dir={W}/run", "--data_dir={W}/data_bad_tokens"],
     "outside the vocabulary"),
    ("resume other data mode", T, [*RESUME, "--out_dir={W}/run", "--data_mode=sequential"], "mode changed"),
    # ---- sample.py
    ("s seed negative", S, [*SAMPLE, "--out_dir={W}/run", "--seed=-1"], "--seed=-1 is out of range"),
    ("s seed 1e30", S, [*SAMPLE, "--out_dir={W}/run", "--seed=1e30"], "is out of range"),
    ("s seed 2**64", S, [*SAMPLE, "--out_dir={W}/run", "--seed=18446744073709551616"], "is out of range"),
    ("s temperature negative", S, [*SAMPLE, "--out_dir={W}/run", "--temperature=-1"], "--temperature must be >= 0"),
    ("s temperature nan", S, [*SAMPLE, "--out_dir={W}/run", "--temperature=nan"], "finite number"),
    ("s temperature inf", S, [*SAMPLE, "--out_dir={W}/run", "--temperature=inf"], "finite number"),
    ("s top_k negative", S, [*SAMPLE, "--out_dir={W}/run", "--top_k=-1"], "--top_k must be >= 0"),
    ("s top_p zero", S, [*SAMPLE, "--out_dir={W}/run", "--top_p=0"], "--top_p must be in (0, 1]"),
    ("s top_p above 1", S, [*SAMPLE, "--out_dir={W}/run", "--top_p=1.5"], "--top_p must be in (0, 1]"),
    ("s min_p 2", S, [*SAMPLE, "--out_dir={W}/run", "--min_p=2"], "--min_p must be in [0, 1]"),
    ("s penalty zero", S, [*SAMPLE, "--out_dir={W}/run", "--repetition_penalty=0"], "--repetition_penalty must be > 0"),
    ("s penalty negative", S, [*SAMPLE, "--out_dir={W}/run", "--repetition_penalty=-2"], "must be > 0"),
    ("s max new zero", S, [*SAMPLE, "--out_dir={W}/run", "--max_new_tokens=0"], "--max_new_tokens must be >= 1"),
    ("s max new 1e12", S, [*SAMPLE, "--out_dir={W}/run", "--max_new_tokens=1000000000000"], "of memory but this"),
    ("s num samples zero", S, [*SAMPLE, "--out_dir={W}/run", "--num_samples=0"], "--num_samples must be >= 1"),
    ("s num samples 1e10", S, [*SAMPLE, "--out_dir={W}/run", "--num_samples=10000000000"], "of memory but this"),
    ("s threads negative", S, [*SAMPLE, "--out_dir={W}/run", "--threads=-1"], "--threads must be >= 0"),
    ("s stop empty", S, [*SAMPLE, "--out_dir={W}/run", "--stop="], "--stop needs a non-empty string"),
    ("s checkpoint worst", S, [*SAMPLE, "--out_dir={W}/run", "--checkpoint=worst"], "is not one of auto, best"),
    ("s device tpu", S, [*SAMPLE, "--out_dir={W}/run", "--device=tpu"], "--device: 'tpu' is not one of"),
    ("s dtype int8", S, [*SAMPLE, "--out_dir={W}/run", "--dtype=int8"], "--dtype: 'int8' is not one of"),
    ("s unknown option", S, [*SAMPLE, "--out_dir={W}/run", "--temprature=1"], "did you mean --temperature?"),
    ("s int abc", S, [*SAMPLE, "--out_dir={W}/run", "--max_new_tokens=abc"], "expected int, got 'abc'"),
    ("s no run folder", S, [*SAMPLE, "--out_dir={W}/nothing"], "run folder not found"),
    ("s empty folder", S, [*SAMPLE, "--out_dir={W}/empty_dir"], "no latest checkpoint"),
    ("s never saved", S, [*SAMPLE, "--out_dir={W}/never_saved"], "no latest checkpoint in {W}/never_saved yet"),
    ("s half saved", S, [*SAMPLE, "--out_dir={W}/half_saved"], "no latest checkpoint in {W}/half_saved yet"),
    ("s no best", S, [*SAMPLE, "--out_dir={W}/no_best", "--checkpoint=best"], "use --checkpoint=latest"),
    ("s config list", S, [*SAMPLE, "--out_dir={W}/cfg_list"], "is not a JSON object"),
    ("s config not json", S, [*SAMPLE, "--out_dir={W}/cfg_not_json"], "is unreadable or corrupt"),
    ("s config no model", S, [*SAMPLE, "--out_dir={W}/cfg_no_model"], "has no 'model' section"),
    ("s config bad types", S, [*SAMPLE, "--out_dir={W}/cfg_bad_types"], "n_layer must be a positive integer"),
    ("s config unknown field", S, [*SAMPLE, "--out_dir={W}/cfg_unknown_field"], "unknown GPTConfig fields"),
    ("s config 155B params", S, [*SAMPLE, "--out_dir={W}/cfg_huge"], "of memory but this machine has"),
    ("s tokenizer escape", S, [*SAMPLE, "--out_dir={W}/cfg_tok_escape"], "which is not a file inside"),
    ("s tokenizer absolute", S, [*SAMPLE, "--out_dir={W}/cfg_tok_absolute"], "which is not a file inside"),
    ("s tokenizer unknown kind", S, [*SAMPLE, "--out_dir={W}/cfg_tok_unknown"], "unknown tokenizer kind"),
    ("s tokenizer spec missing", S, [*SAMPLE, "--out_dir={W}/cfg_tok_missing"], "has no 'tokenizer' spec"),
    ("s tokenizer swapped", S, [*SAMPLE, "--out_dir={W}/tok_swapped"], "sha256 differs"),
    ("s tokenizer not json", S, [*SAMPLE, "--out_dir={W}/tok_not_json"], "is not a char vocabulary"),
    ("s tokenizer list", S, [*SAMPLE, "--out_dir={W}/tok_list"], "is not a char vocabulary"),
    ("s tokenizer multichar", S, [*SAMPLE, "--out_dir={W}/tok_multichar"], "single characters only"),
    ("s tokenizer gone", S, [*SAMPLE, "--out_dir={W}/tok_gone"], "tokenizer file not found"),
    ("s weights truncated", S, [*SAMPLE, "--out_dir={W}/w_truncated"], "truncated or corrupt"),
    ("s weights mismatch", S, [*SAMPLE, "--out_dir={W}/w_mismatch"], "does not match its config"),
    ("s weights link", S, [*SAMPLE, "--out_dir={W}/w_link"], "model.safetensors is a link out"),
    ("s best link", S, [*SAMPLE, "--out_dir={W}/best_link"], "best is a link out"),
    ("s init_from empty cfg", S, [*SAMPLE, "--init_from={W}/empty_cfg"], "is not a GPT-2 config either"),
    ("s init_from list cfg", S, [*SAMPLE, "--init_from={W}/list_cfg"], "is not a JSON object"),
    ("s init_from never saved", S, [*SAMPLE, "--init_from={W}/never_saved"], "no config.json in"),
    ("s init_from missing", S, [*SAMPLE, "--init_from=./nowhere"], "no such folder"),
    ("s gpt2 ranks missing", S, [*SAMPLE, "--init_from=gpt2", "--gpt2_ranks={W}/missing.tiktoken"],
     "tokenizer ranks file not found"),
    ("s gpt2 ranks junk", S, [*SAMPLE, "--init_from=gpt2", "--gpt2_ranks={W}/bad_ranks.tiktoken"],
     "not a tiktoken rank line"),
    ("s prompt file missing", S, [*SAMPLE, "--out_dir={W}/run", "--prompt=FILE:{W}/missing.txt"],
     "cannot read the prompt file"),
    ("s prompt file binary", S, [*SAMPLE, "--out_dir={W}/run", "--prompt=FILE:{W}/binary.bin"],
     "cannot read the prompt file"),
    ("s prompt outside vocab", S, [*SAMPLE, "--out_dir={W}/run", "--prompt=café 🙂"], "not in the char vocabulary"),
    ("s stdin closed", S, [*SAMPLE, "--out_dir={W}/run", "--prompt=-"], "stdin is closed"),
    ("s stdout closed", S, [*SAMPLE, "--out_dir={W}/run"], "stdout is closed"),
    # ---- data/prepare.py
    ("p tokenizer unknown", P, [*PREP, "--tokenizer=sentencepiece", "--data_dir={W}/p"], "is not one of char"),
    ("p val fraction 0", P, [*PREP, "--val_fraction=0", "--data_dir={W}/p"], "must be between 0 and 1"),
    ("p val fraction 1", P, [*PREP, "--val_fraction=1", "--data_dir={W}/p"], "must be between 0 and 1"),
    ("p val fraction nan", P, [*PREP, "--val_fraction=nan", "--data_dir={W}/p"], "finite number"),
    ("p max tokens 1", P, [*PREP, "--max_tokens=1", "--data_dir={W}/p"], "--max_tokens=1 is too small"),
    ("p num proc negative", P, [*PREP, "--num_proc=-1", "--data_dir={W}/p"], "--num_proc=-1 must be >= 0"),
    ("p bpe vocab 100", P, [*PREP, "--tokenizer=bpe", "--vocab_size=100", "--data_dir={W}/p"], "a byte-level BPE"),
    ("p bpe vocab 2**33", P, [*PREP, "--tokenizer=bpe", "--vocab_size=8589934592", "--data_dir={W}/p"],
     "a byte-level BPE"),
    ("p bpe max chars 0", P, [*PREP, "--bpe_max_chars=0", "--data_dir={W}/p"], "--bpe_max_chars must be >= 1"),
    ("p dataset dotdot", P, ["--dataset=..", "--input={W}/poem.txt", "--data_dir={W}/p"], "not a usable folder name"),
    ("p dataset dot", P, ["--dataset=.", "--input={W}/poem.txt", "--data_dir={W}/p"], "not a usable folder name"),
    ("p dataset empty", P, ["--dataset=", "--input={W}/poem.txt", "--data_dir={W}/p"], "must not be empty"),
    ("p text column empty", P, [*PREP, "--text_column=", "--data_dir={W}/p"], "--text_column must not be empty"),
    ("p data_dir empty", P, [*PREP, "--data_dir="], "--data_dir must not be empty"),
    ("p data_dir a file", P, [*PREP, "--data_dir={W}/poem.txt"], "so no folder can be made inside it"),
    ("p data_dir under a file", P, [*PREP, "--data_dir={W}/poem.txt/x"], "so no folder can be made inside it"),
    ("p user folder kept", P, [*PREP, "--data_dir={W}/userdata"], "is not a prepared data folder (no meta.json)"),
    ("p target a file", P, [*PREP, "--data_dir={W}/filedata"], "is a file, not a prepared data folder"),
    ("p target a link", P, [*PREP, "--data_dir={W}/linkdata", "--force"], "is a link"),
    ("p prepared differently", P, [*PREP, "--data_dir={W}/data", "--max_tokens=100"], "different options"),
    ("p meta corrupt", P, [*PREP, "--data_dir={W}/data_bad_meta"], "meta.json is unreadable or corrupt"),
    ("p input missing", P, ["--dataset=x", "--input={W}/missing.txt", "--data_dir={W}/p"], "input not found"),
    ("p input empty", P, ["--dataset=x", "--input={W}/empty.txt", "--data_dir={W}/p"], "the text is empty"),
    ("p input binary", P, ["--dataset=x", "--input={W}/binary.bin", "--data_dir={W}/p"], "not UTF-8 text"),
    ("p input empty dir", P, ["--dataset=x", "--input={W}/emptydir", "--data_dir={W}/p"], "no .txt/.md"),
    ("p input glob none", P, ["--dataset=x", "--input={W}/none/*.txt", "--data_dir={W}/p"], "no .txt/.md"),
    ("p input mixed", P, ["--dataset=x", "--input={W}/mixed", "--data_dir={W}/p"], "mixes plain text and record"),
    ("p unknown dataset", P, ["--dataset=nosuch", "--data_dir={W}/p"], "unknown dataset 'nosuch'"),
    ("p shakespeare not tar", P, ["--dataset=shakespeare", "--input={W}/poem.txt", "--data_dir={W}/p"],
     "not a readable tarball"),
    ("p unknown option", P, [*PREP, "--vocab=12"], "unknown option --vocab"),
    ("p config not taken", P, [*PREP, "--config=x.toml"], "unknown option --config"),
    ("p positional", P, [*PREP, "extra"], "unexpected argument 'extra'"),
]


def _setup_case(name: str, W: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The few cases that need more than arguments."""
    if name == "s stdin closed":
        monkeypatch.setattr(sys, "stdin", None)  # what Python sets when started with `<&-`
    elif name == "s stdout closed":
        monkeypatch.setattr(sys, "stdout", None)  # `>&-`


def test_the_battery_is_big_enough() -> None:
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)), "case names are unique"
    assert len({(prog, tuple(args)) for _, prog, args, _ in CASES}) == len(CASES), "every case is distinct"
    assert len(CASES) >= 100
    assert {prog for _, prog, _, _ in CASES} == set(PROGRAMS)


@pytest.mark.parametrize("name, prog, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_changes_nothing(world: Path, name: str, prog: str, argv: list[str],
                                                                expected: str | None, capsys, monkeypatch) -> None:
    W = world
    if name == "out_dir a broken link":
        link = W / "outside" / "nowhere"
        if not link.is_symlink():
            link.symlink_to(W / "no-such-target")
        expected = "is a broken link"
    monkeypatch.chdir(W)
    monkeypatch.delenv("QUILLGPT_DEBUG", raising=False)
    argv = [a.replace("{W}", str(W)) for a in argv]
    before = snapshot(W)
    _setup_case(name, W, monkeypatch)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: PROGRAMS[prog](argv))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2, (e.value.code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected.replace("{W}", str(W)) in lines[0], lines[0]
    after = snapshot(W)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, changed
    assert not (W / "pwned").exists()  # the hostile pickle never ran


# ---------------------------------------------------------------------------- what needs a real process


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
ENV.pop("QUILLGPT_DEBUG", None)


@pytest.mark.parametrize("script", ["train.py", "sample.py", "data/prepare.py"])
def test_help_into_a_closed_pipe_is_not_an_error(script: str) -> None:
    """`python X --help | head -1`: the reader leaves after one line; no BrokenPipeError, exit 0."""
    proc = subprocess.Popen([sys.executable, str(ROOT / script), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    first = proc.stdout.readline()
    proc.stdout.close()  # like head -1 exiting
    _, stderr = proc.communicate(timeout=60)
    assert first.startswith(b"usage: ")
    assert proc.returncode == 0 and b"Traceback" not in stderr and b"BrokenPipe" not in stderr, stderr


@pytest.mark.parametrize("fd, args, message", [
    (0, ["--prompt=-"], b"stdin is closed"),
    (1, [], b"stdout is closed"),
])
def test_sample_with_a_closed_standard_stream(world: Path, fd: int, args: list[str], message: bytes) -> None:
    """Started with stdin (`<&-`) or stdout (`>&-`) closed: one line on stderr, exit 2."""
    proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"--out_dir={world / 'run'}", *args],
                          capture_output=fd != 1, stderr=subprocess.PIPE if fd == 1 else None,
                          env=ENV, cwd=world, timeout=120, preexec_fn=lambda: os.close(fd))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_checkpoint(world: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """Writes fail (EFBIG from a file-size limit: a full disk without needing one) while a resumed run saves:
    exit 2 with one line, and the run folder's checkpoint is the one it had."""
    resource = pytest.importorskip("resource")
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    keep = {n: (run / n).read_bytes() for n in ("train_state.pt", "model.safetensors", "config.json")}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 20_000  # metrics and the tokenizer fit; a checkpoint does not
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then write() fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_main(lambda: train.main(["--init_from=resume", f"--out_dir={run}", "--max_iters=6",
                                         f"--data_dir={world / 'data'}"]))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and "the previous file was kept" in lines[0], err
    assert "Traceback" not in err
    assert {n: (run / n).read_bytes() for n in keep} == keep
    assert not list(run.glob(".*.tmp")) and not list(run.glob("best/.*.tmp"))


def test_a_tiny_temperature_samples_greedily_instead_of_failing(world: Path, capsysbinary) -> None:
    """--temperature=1e-40 used to overflow to inf/NaN and crash; it is simply (almost) greedy."""
    texts = []
    for temperature in ("1e-40", "0"):
        capsysbinary.readouterr()
        with pytest.raises(SystemExit) as e:
            run_main(lambda: sample.main([f"--out_dir={world / 'run'}", "--max_new_tokens=30", "--seed=3",
                                          f"--temperature={temperature}", "--no-stream"]))
        assert e.value.code == 0
        texts.append(capsysbinary.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 10


# ---------------------------------------------------------------------------- a really full disk

FULL_DISK_TRAIN = ["--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--batch_size=8",
                   "--eval_iters=2", "--sample_tokens=0", "--device=cpu", "--dtype=float32", "--threads=1",
                   "--log_interval=1"]


def _on_a_small_disk(tmp_path: Path, size_kb: int, leave_kb: int | None, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with ``$D`` a fresh tmpfs of ``size_kb`` (in a private mount namespace, so the host
    sees nothing), filled until ``leave_kb`` remain if given. Skips, saying why, where mounts are not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no private tmpfs to fill")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k none {tmp_path}"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs here ({probe.stderr.decode(errors='replace').strip()[:80]}); "
                    "test_a_full_disk_during_a_save_is_one_line_and_keeps_the_checkpoint covers it with a size limit")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fill = "" if leave_kb is None else (
        'used=$(df -k --output=used "$D" | tail -1); n=$(( ' + str(size_kb) + ' - used - ' + str(leave_kb) + ' )); '
        '[ "$n" -gt 0 ] && head -c $((n * 1024)) /dev/zero > "$D/filler"; ')
    body = f'D={shlex.quote(str(mnt))}; mount -t tmpfs -o size={size_kb}k none "$D" || exit 99; {fill}{script}'
    return subprocess.run(["unshare", "-m", "sh", "-c", body], capture_output=True, env={**ENV, "OMP_NUM_THREADS": "1"},
                          cwd=tmp_path, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess, tmp_path: Path) -> str:
    err = (tmp_path / "err.txt").read_text(encoding="utf-8")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    return errors[0]


def test_training_into_a_600_kb_disk_is_one_line_exit_2(world: Path, tmp_path: Path) -> None:
    """The issue's reproduction: a fresh 2-layer, 64-wide run into a 600 KB tmpfs. One line naming the file
    and what to do, exit 2, and no temp file left on that disk."""
    args = " ".join(shlex.quote(a) for a in ["--dataset=poem", f"--input={world / 'poem.txt'}",
                                             f"--data_dir={world / 'data'}", *FULL_DISK_TRAIN,
                                             "--max_iters=4", "--eval_interval=2"])
    script = (f'{shlex.quote(sys.executable)} {ROOT / "train.py"} --out_dir="$D/run" {args} '
              f'> out.txt 2> err.txt; echo $? > rc.txt; find "$D" -name ".*.tmp*" > temps.txt')
    proc = _on_a_small_disk(tmp_path, 600, None, script)
    assert proc.returncode == 0, proc.stderr
    line = _one_error_line(proc, tmp_path)
    assert (tmp_path / "rc.txt").read_text().strip() == "2", line
    assert "cannot write" in line and "/run/" in line, line
    assert (tmp_path / "temps.txt").read_text().strip() == ""


def test_resuming_on_a_nearly_full_disk_keeps_the_checkpoint_and_resumes_later(world: Path, tmp_path: Path) -> None:
    """A run resumed where only a few KB are free: one line, exit 2, the previous checkpoint byte for byte;
    once space is back, the same resume command succeeds."""
    from model.checkpoint import load_model

    py, tr = shlex.quote(sys.executable), ROOT / "train.py"
    resume = f'{py} {tr} --out_dir="$D/run" --init_from=resume --data_dir={world / "data"} --max_iters=8'
    script = (f'cp -r {world / "run"} "$D/run" && {{ used=$(df -k --output=used "$D" | tail -1); '
              f'n=$(( 4096 - used - 24 )); head -c $((n * 1024)) /dev/zero > "$D/filler"; }}; '
              f'{resume} > out.txt 2> err.txt; echo $? > rc.txt; find "$D" -name ".*.tmp*" > temps.txt; '
              f'cp -r "$D/run" after; rm -f "$D/filler"; {resume} > out2.txt 2> err2.txt; echo $? > rc2.txt')
    proc = _on_a_small_disk(tmp_path, 4096, None, script)
    assert proc.returncode == 0, proc.stderr
    line = _one_error_line(proc, tmp_path)
    assert (tmp_path / "rc.txt").read_text().strip() == "2", line
    assert "the previous file was kept" in line, line
    assert (tmp_path / "temps.txt").read_text().strip() == ""
    for name in ("train_state.pt", "model.safetensors", "config.json"):
        assert (tmp_path / "after" / name).read_bytes() == (world / "run" / name).read_bytes(), name
    load_model(tmp_path / "after")  # the kept checkpoint still loads
    assert (tmp_path / "rc2.txt").read_text().strip() == "0", (tmp_path / "err2.txt").read_text(encoding="utf-8")


def test_preparing_data_onto_a_full_disk_is_one_line_exit_2(world: Path, tmp_path: Path) -> None:
    """data/prepare.py writing its token files into a disk with too little room: one line, exit 2, and no
    half-built folder or temp file."""
    script = (f'{shlex.quote(sys.executable)} {ROOT / "data" / "prepare.py"} --dataset=poem '
              f'--input={world / "poem.txt"} --data_dir="$D/data" > out.txt 2> err.txt; echo $? > rc.txt; '
              f'find "$D" -name ".*tmp*" > temps.txt; ls "$D/data" 2>/dev/null | grep -v "^\\." > left.txt || true')
    proc = _on_a_small_disk(tmp_path, 16, 2, script)
    assert proc.returncode == 0, proc.stderr
    line = _one_error_line(proc, tmp_path)
    assert (tmp_path / "rc.txt").read_text().strip() == "2", line
    assert "cannot write" in line or "No space" in line, line
    assert (tmp_path / "temps.txt").read_text().strip() == ""
