"""train.py end to end on CPU: config parsing, learning, exact resume, safe checkpoints, signals,
dashboards, DDP equivalence and clean errors. Tiny models on a tiny text written by the test."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

import train
from model.checkpoint import load_train_state
from runtime.errors import CheckpointError
from runtime.options import load_toml, run_main
from train import load_config
from training.config import TrainConfig

POEM = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
"""

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=8", "--eval_iters=2",
        "--sample_tokens=0", "--device=cpu", "--warmup_iters=5", "--log_interval=1",
        "--dtype=float32"]  # pinned: dtype=auto on CPU measures bf16 vs fp32, and timing is not reproducible


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    """Options pointing at a tiny text and a data folder in tmp."""
    text = tmp_path / "poem.txt"
    text.write_text(POEM * 20, encoding="utf-8")
    return ["--dataset=poem", f"--input={text}", f"--data_dir={tmp_path / 'data'}"]


def args(tmp_path: Path, corpus: list[str], *extra: str, out: str = "out") -> list[str]:
    return [*corpus, *TINY, f"--out_dir={tmp_path / out}", *extra]


def run(argv: list[str]) -> dict:
    return train.train(load_config(argv), log_to_console=False)


def logs(out_dir: Path) -> list[dict]:
    with open(out_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [e for e in map(json.loads, f) if e["event"] == "log"]


def exit_code(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run main() as the command line would; return (exit code, stderr of that call only)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1 and (not errors or err.strip().splitlines()[-1] == errors[0]), err
    return e.value.code, "\n".join(errors)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("QUILLGPT_DEBUG", None)
    return env


# ---------------------------------------------------------------------------- config


def test_types_are_coerced_and_cli_beats_file_beats_default(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text('learning_rate = 3e-4\nbatch_size = 7\n[model_shape]\nn_layer = 3\n', encoding="utf-8")
    cfg = load_config([str(preset), "--batch_size", "9", "--decay_lr=false", "--max_iters=1e3", "--target_loss=none"])
    assert cfg.learning_rate == 3e-4 and cfg.n_layer == 3  # file over default
    assert cfg.batch_size == 9  # CLI over file
    assert cfg.decay_lr is False and cfg.max_iters == 1000 and cfg.target_loss is None
    assert load_config(["--config", str(preset)]).batch_size == 7
    assert load_config([]).batch_size == TrainConfig().batch_size


def test_unknown_key_suggests_the_closest_and_bad_value_names_the_type(capsys) -> None:
    code, err = exit_code(["--learning_rat=1e-3"], capsys)
    assert code == 2 and "--learning_rate" in err and len(err.strip().splitlines()) == 1
    code, err = exit_code(["--batch_size=twelve"], capsys)
    assert code == 2 and "--batch_size" in err and "int" in err and "Traceback" not in err
    code, err = exit_code(["--optimizer=sgd"], capsys)
    assert code == 2 and "adamw" in err


def test_help_lists_every_field(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        load_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name} (" in out, f.name
        assert f.metadata["help"], f.name


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_presets_apply_every_key_and_build_a_model_config(preset: str) -> None:
    from training.config import scratch_config

    path = ROOT / "configs" / preset
    cfg = load_config([str(path)])
    keys = load_toml(path)  # tables flattened
    assert keys, preset
    for key, value in keys.items():
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, int) and float(got) == value), (key, value, got)
    assert cfg.out_dir != TrainConfig().out_dir  # a preset never overwrites the default run's folder
    # nothing CPU-specific is fixed: the dtype, Muon's dtype and threads come from start-up probes
    assert not {"dtype", "threads"} & keys.keys() and cfg.dtype == "auto" and cfg.threads == 0, preset
    assert cfg.warmup_iters < (cfg.lr_decay_iters or cfg.max_iters) or not cfg.decay_lr
    model = scratch_config(cfg, vocab_size=50257)  # the architecture it asks for is a valid one
    assert (model.n_layer, model.n_embd, model.block_size) == (cfg.n_layer, cfg.n_embd, cfg.block_size)


def test_help_answers_without_importing_torch() -> None:
    code = ("import sys, train\n"
            "try:\n    train.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "torch imported: False"
    assert "--val_fraction (" in proc.stdout and "--gpt2_ranks (" in proc.stdout


def test_warmup_as_long_as_the_run_warns_once(tmp_path: Path, corpus, capsys) -> None:
    assert train.main(args(tmp_path, corpus, "--max_iters=3", "--warmup_iters=3", "--eval_interval=3")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --warmup_iters=3 >= --max_iters=3: the whole run is warmup and the learning "
                        "rate only reaches 75% of its peak; lower --warmup_iters"]
    assert train.main(args(tmp_path, corpus, "--max_iters=3", "--warmup_iters=2", "--eval_interval=3",
                           out="ok")) == 0
    assert "warning:" not in capsys.readouterr().err


def test_every_data_option_of_prepare_is_a_training_option_and_reaches_it(tmp_path: Path, corpus,
                                                                           monkeypatch) -> None:
    import training.distributed as distributed
    from data.options import DataOptions
    from data.prepare import PrepareOptions

    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(DataOptions):  # one definition: same default, type and help
        mine = train_fields[f.name]
        assert (mine.default, mine.type, mine.metadata["help"]) == (f.default, f.type, f.metadata["help"]), f.name
    seen = []
    real = distributed.ensure_prepared

    def spy(opts: PrepareOptions):
        seen.append(opts)
        return real(opts)

    monkeypatch.setattr(distributed, "ensure_prepared", spy)
    given = {"val_fraction": 0.25, "num_proc": 1, "text_column": "body", "hf_split": "validation",
             "cache_dir": str(tmp_path / "cache"), "bpe_max_chars": 12345, "gpt2_ranks": str(tmp_path / "r")}
    run(args(tmp_path, corpus, "--max_iters=1", "--eval_interval=1", *(f"--{k}={v}" for k, v in given.items())))
    assert all(getattr(seen[0], k) == v for k, v in given.items())
    meta = json.loads((tmp_path / "data" / "poem" / "char" / "meta.json").read_text(encoding="utf-8"))
    assert meta["recipe"]["val_fraction"] == 0.25  # a plain text: its last quarter of characters is val
    assert meta["val_tokens"] == pytest.approx(0.25 * (meta["train_tokens"] + meta["val_tokens"]), abs=2)


def test_unknown_dataset_lists_what_is_prepared_under_that_name(tmp_path: Path, corpus, capsys) -> None:
    run(args(tmp_path, corpus, "--max_iters=1", "--eval_interval=1"))  # prepares data/poem/char from --input
    without_input = [c for c in corpus if not c.startswith("--input")]
    code, err = exit_code([*without_input, *TINY, "--tokenizer=bpe", f"--out_dir={tmp_path / 'o'}"], capsys)
    assert code == 2 and err.startswith("error: unknown dataset 'poem'")
    assert err.endswith(f"prepared under {tmp_path / 'data' / 'poem'}: char (--tokenizer=char)")


# ---------------------------------------------------------------------------- training


def test_short_run_memorises_the_text_and_writes_the_run_folder(tmp_path: Path, corpus) -> None:
    res = run(args(tmp_path, corpus, "--max_iters=150", "--eval_interval=50", "--learning_rate=1e-2",
                   "--sample_tokens=20"))
    out = tmp_path / "out"
    events = logs(out)
    assert events[-1]["loss"] < 0.3 * events[0]["loss"], (events[0]["loss"], events[-1]["loss"])
    assert res["iters"] == 150 and res["val_loss"] is not None and res["stopped"] == "done"
    for name in ("model.safetensors", "config.json", "train_state.pt", "metrics.jsonl", "loss.png", "attention.png",
                 "best/model.safetensors", "best/config.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert meta["train"]["max_iters"] == 150 and meta["model"]["n_embd"] == 32
    assert (out / meta["tokenizer"]["file"]).is_file()  # self-contained for sample.py
    best = json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))
    assert (out / "best" / best["tokenizer"]["file"]).is_file()
    assert meta["val_bpb"] == pytest.approx(meta["val_loss"] / math.log(2)) and best["val_bpb"] > 0
    # metrics.jsonl schema
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        all_events = [json.loads(line) for line in f]
    log_keys = {"event", "iter", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "flops_per_sec", "tokens", "time",
                "threads"}
    for e in all_events:
        if e["event"] == "log":
            assert set(e) == log_keys
            assert e["mfu"] is None  # CPU without --peak_flops: no MFU, but FLOP/s
            assert e["tokens"] == e["iter"] * 8 * 16
            if e["iter"] == 1:  # an interval of only the first (warm-up) step reports no throughput
                assert e["flops_per_sec"] is None and e["tokens_per_sec"] is None
            else:
                assert e["flops_per_sec"] > 0
            assert e["threads"] == 1  # torch's count at that step (the conftest fixture pins 1)
        elif e["event"] == "eval":
            assert set(e) == {"event", "iter", "train_loss", "val_loss", "val_bpb", "time"}
            assert math.isclose(e["val_bpb"], e["val_loss"] / math.log(2), rel_tol=1e-6)  # ASCII chars: 1 byte each
    assert [e["iter"] for e in all_events if e["event"] == "eval"] == [0, 50, 100, 150]
    times = [e["time"] for e in all_events]
    assert times == sorted(times)
    from model import load_model

    model, _ = load_model(out / "best")
    assert model.config.n_layer == 2


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_resume_continues_exactly(tmp_path: Path, corpus, optimizer: str) -> None:
    common = ["--dropout=0.1", "--eval_interval=10", "--lr_decay_iters=40", f"--optimizer={optimizer}"]
    run(args(tmp_path, corpus, "--max_iters=40", *common, out="once"))
    run(args(tmp_path, corpus, "--max_iters=20", *common, out="twice"))
    # a resume takes the saved options; only what is given changes
    res = run([f"--out_dir={tmp_path / 'twice'}", "--init_from=resume", "--max_iters=40"])
    assert res["iters"] == 40
    once = [(e["iter"], e["loss"]) for e in logs(tmp_path / "once")]
    twice = [(e["iter"], e["loss"]) for e in logs(tmp_path / "twice")]
    assert [i for i, _ in twice] == list(range(1, 41))
    assert once == twice  # bit-identical on CPU


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path, corpus, monkeypatch) -> None:
    import model.checkpoint as checkpoint

    run(args(tmp_path, corpus, "--max_iters=10", "--eval_interval=10"))
    out = tmp_path / "out"
    before = {name: (out / name).read_bytes() for name in ("train_state.pt", "model.safetensors", "config.json")}
    real_save = torch.save
    torn = []

    def dies_mid_write(obj, f, *a, **kw):  # stream part of the state into the temp file, then die
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)
        torn.append(obj.get("iter"))
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", dies_mid_write)
    with pytest.raises(CheckpointError, match="simulated crash mid-write; the previous file was kept"):
        run([f"--out_dir={out}", "--init_from=resume", "--max_iters=20"])
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert torn == [20]  # the crash hit the train_state write of iteration 20
    # the train state, a checkpoint's commit point and its last file, is the old one, whole; the model
    # export (written just before it) is iteration 20's, which the resume will reproduce exactly
    assert (out / "train_state.pt").read_bytes() == before["train_state.pt"]
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["iter"] == 20
    exported = (out / "model.safetensors").read_bytes()
    assert not list(out.glob(".*.tmp"))
    assert load_train_state(out)["iter"] == 10
    res = run([f"--out_dir={out}", "--init_from=resume", "--max_iters=20"])
    assert res["iters"] == 20 and load_train_state(out)["iter"] == 20
    assert (out / "model.safetensors").read_bytes() == exported


def test_sigterm_saves_and_says_how_to_resume(tmp_path: Path, corpus) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "train.py"), *args(tmp_path, corpus, "--max_iters=100000", "--eval_interval=1000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if line.startswith("iter "):
                break
            assert time.time() < deadline
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert f"--init_from=resume --out_dir={out}" in stdout
    stopped_at = load_train_state(out)["iter"]
    assert 0 < stopped_at < 100000
    res = run([f"--out_dir={out}", "--init_from=resume", f"--max_iters={stopped_at + 3}"])
    assert res["iters"] == stopped_at + 3


def test_signal_handlers_are_restored_after_a_run(tmp_path: Path, corpus) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=100"))
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_init_from_a_run_folder_with_dropout_trains_with_that_dropout(tmp_path: Path, corpus, capsys) -> None:
    """`python train.py --init_from=<run folder> --dropout=0.1`: the new run's model has dropout 0.1,
    and --attn_dropout its own value (the overrides used to be dropped for quillgpt run folders)."""
    from model import from_pretrained

    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2"))
    source = tmp_path / "out"
    assert json.loads((source / "config.json").read_text(encoding="utf-8"))["model"]["dropout"] == 0.0
    assert from_pretrained(str(source), dropout=0.1).config.dropout == 0.1
    tuned = tmp_path / "tuned"
    assert train.main([*corpus, *TINY, f"--init_from={source}", "--dropout=0.1", "--attn_dropout=0.05", "--max_iters=2",
                       "--eval_interval=2", f"--out_dir={tuned}"]) == 0
    assert f"checkpoint in {tuned}" in capsys.readouterr().out
    meta = json.loads((tuned / "config.json").read_text(encoding="utf-8"))
    assert meta["model"]["dropout"] == 0.1 and meta["train"]["dropout"] == 0.1
    assert meta["model"]["attn_dropout"] == 0.05  # its own option; without one it follows --dropout
    assert meta["train"]["init_from"] == str(source)
    assert load_train_state(tuned)["model_config"]["dropout"] == 0.1


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_train_state_is_refused_and_never_run(tmp_path: Path, corpus, capsys) -> None:
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=100"))
    out, marker = tmp_path / "out", tmp_path / "pwned"
    with open(out / "train_state.pt", "wb") as f:
        pickle.dump({"format": 1, "model": Exploit(marker)}, f)
    code, err = exit_code([f"--out_dir={out}", "--init_from=resume"], capsys)
    assert code == 2 and "train_state.pt" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, corpus, capsys) -> None:
    out = tmp_path / "out"
    code, err = exit_code([*corpus, f"--out_dir={tmp_path / 'none'}", "--init_from=resume", "--device=cpu"], capsys)
    assert code == 2 and "resume" in err and len(err.strip().splitlines()) == 1
    code, err = exit_code(args(tmp_path, corpus, "--input=/nope/missing.txt", "--dataset=nope"), capsys)
    assert code == 2 and "/nope" in err and len(err.strip().splitlines()) == 1
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=100"))
    code, err = exit_code([f"--out_dir={out}", "--init_from=resume", "--n_embd=64"], capsys)
    assert code == 2 and "n_embd" in err and len(err.strip().splitlines()) == 1
    shutil.copy(out / "train_state.pt", tmp_path / "good.pt")
    (out / "train_state.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:1000])  # truncated
    code, err = exit_code([f"--out_dir={out}", "--init_from=resume"], capsys)
    assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1


def test_bad_input_in_a_subprocess_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--n_layers=2"], cwd=tmp_path,
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: unknown option --n_layers; did you mean --n_layer?"


def test_compile_on_a_cpu_without_a_cxx_compiler_is_refused_before_any_work(tmp_path: Path) -> None:
    """Inductor's own compiler search finds nothing on an empty PATH: one line, exit 2, no data prepared."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 200, encoding="utf-8")
    env = dict(subprocess_env(), PATH=str(tmp_path / "empty"))
    env.pop("CXX", None)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--device=cpu", "--compile=true", f"--input={corpus}",
                           "--max_iters=1", "--n_layer=1", "--n_embd=16", "--n_head=2"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: --compile=true on the CPU needs a C++ compiler"), proc.stderr
    assert "--compile=false" in proc.stderr and not (tmp_path / "data").exists()


def test_nonfinite_loss_stops_cleanly_and_keeps_the_checkpoint(tmp_path: Path, corpus, capsys) -> None:
    run(args(tmp_path, corpus, "--max_iters=5", "--eval_interval=5", "--model=classic", "--optimizer=adamw"))
    out = tmp_path / "out"
    before = (out / "train_state.pt").read_bytes(), (out / "model.safetensors").read_bytes()
    code, err = exit_code([f"--out_dir={out}", "--init_from=resume", "--max_iters=40", "--learning_rate=1e12",
                           "--grad_clip=0", "--decay_lr=false"], capsys)
    assert code == 3 and "diverged" in err and "Traceback" not in err
    assert ((out / "train_state.pt").read_bytes(), (out / "model.safetensors").read_bytes()) == before


def wandb_records(path: Path):
    """Records of an offline run's .wandb file: W&B's LevelDB-style log of protobuf records
    (7-byte file header, then 32 KiB blocks of chunks with a crc32/length/type header)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # padding at the end of a block
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a FULL record, or the LAST chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def test_wandb_offline_logs_into_the_run_folder(tmp_path: Path, corpus, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(args(tmp_path, corpus, "--max_iters=4", "--eval_interval=2", "--wandb_log", "--wandb_mode=offline",
             "--sample_tokens=10"))
    files = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, list((tmp_path / "out").rglob("*"))
    keys: set[str] = set()
    deadline = time.time() + 30
    while "val_loss" not in keys and time.time() < deadline:  # wandb's writer process may lag behind finish()
        for record in wandb_records(files[0]):
            if record.WhichOneof("record_type") == "history":
                keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        time.sleep(0.5)
    for key in ("loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_sec", "flops_per_sec", "tokens"):
        assert key in keys, (key, sorted(keys))
    assert any(k.startswith("sample") for k in keys), sorted(keys)  # the generated text, as wandb.Html
    assert any(k.startswith("attention") for k in keys), sorted(keys)  # the attention grid, as wandb.Image
    images = list(files[0].parent.glob("files/media/images/attention_*.png"))
    assert len(images) == 3 and all(p.read_bytes().startswith(b"\x89PNG") for p in images)  # evals at 0, 2, 4
    state = load_train_state(tmp_path / "out")
    assert state["wandb_id"] and files[0].name == f"run-{state['wandb_id']}.wandb"


def test_attention_png_is_the_evals_picture_and_can_be_turned_off(tmp_path: Path, corpus) -> None:
    from PIL import Image

    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2"))
    img = Image.open(tmp_path / "out" / "attention.png")
    assert img.format == "PNG" and len(img.convert("RGB").getcolors(1 << 20)) > 50  # 2 layers x 2 heads of heatmaps
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2", "--attention_png=false", out="off"))
    assert (tmp_path / "off" / "loss.png").is_file() and not (tmp_path / "off" / "attention.png").exists()


def wandb_config(path: Path) -> dict:
    """The config an offline run recorded (run record and config updates), keys to JSON-decoded values."""
    config: dict = {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def test_wandb_receives_the_resolved_config(tmp_path: Path, corpus, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2", "--wandb_log", "--wandb_mode=offline"))
    (path,) = (tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb")
    config = wandb_config(path)
    resolved = config["resolved"]
    resolved = resolved.get("value", resolved)  # wandb wraps each top-level value as {"value": ...}
    written = json.loads((tmp_path / "out" / "config.json").read_text(encoding="utf-8"))["resolved"]
    assert resolved == written
    vocab = len(set(POEM))
    assert resolved["vocab_size"] == vocab and resolved["device"] == "cpu" and resolved["dtype"] == "float32"
    assert resolved["tokens_per_iter"] == 8 * 16
    from model import load_model

    assert resolved["n_params"] == load_model(tmp_path / "out")[0].num_params()
    assert set(resolved["matmul_gflops"]) == {"train", "muon"} and resolved["cpu"]
    assert config["batch_size"] in (8, {"value": 8})  # the options are there too


def test_cpu_choices_are_recorded_and_a_resume_keeps_them(tmp_path: Path, corpus, monkeypatch) -> None:
    import training.precision as precision
    from training.muon import Muon
    from model.checkpoint import save_train_state

    made = []
    real_probe = precision.probe_cpu
    monkeypatch.setattr(precision, "probe_cpu", lambda: made.append(1) or real_probe())
    common = ["--eval_interval=2", "--optimizer=muon", "--dtype=auto"]
    run(args(tmp_path, corpus, "--max_iters=2", *common))
    out = tmp_path / "out"
    first = json.loads((out / "config.json").read_text(encoding="utf-8"))["resolved"]
    assert made == [1] and first["muon_dtype"] in ("float32", "bfloat16") and first["dtype"] in ("float32", "bfloat16")
    state = load_train_state(out)
    assert state["resolved"] == first
    # a resume takes its choices from the checkpoint and measures nothing: make them the other way round
    flipped = {"float32": "bfloat16", "bfloat16": "float32"}[first["muon_dtype"]]
    state["resolved"]["muon_dtype"] = flipped
    save_train_state(out, state)
    seen = []
    real_step = Muon.step
    monkeypatch.setattr(Muon, "step", lambda self, *a: seen.append(self.param_groups[0]["ortho_dtype"])
                        or real_step(self, *a))
    run([f"--out_dir={out}", "--init_from=resume", "--max_iters=4"])
    assert made == [1] and seen == [flipped, flipped]
    resumed = json.loads((out / "config.json").read_text(encoding="utf-8"))["resolved"]
    assert resumed == {**first, "muon_dtype": flipped}  # the CPU facts carried over, not re-measured


@pytest.mark.parametrize("threads, policy", [(0, {"policy": "governor", "max": 2}),
                                             (2, {"policy": "fixed", "threads": 2, "why": "--threads"}),
                                             (1, {"policy": "fixed", "threads": 1, "why": "--threads"})])
def test_thread_policy_is_recorded_and_the_count_put_back(tmp_path: Path, corpus, threads: int, policy) -> None:
    torch.set_num_threads(2)  # the conftest fixture puts 1 back afterwards
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2", f"--threads={threads}"))
    assert json.loads((tmp_path / "out" / "config.json").read_text(encoding="utf-8"))["resolved"]["threads"] == policy
    assert torch.get_num_threads() == 2
    with open(tmp_path / "out" / "metrics.jsonl", encoding="utf-8") as f:
        moves = [e for e in map(json.loads, f) if e["event"] == "threads"]
    # the governor's moves are on the dashboard, starting with the count it began at; a fixed count has none
    if policy["policy"] == "governor":
        assert moves[0]["threads"] == 2 and moves[0]["why"] == "start" and moves[0]["iter"] == 1
        assert all(m["threads"] in (1, 2) for m in moves)
    else:
        assert moves == []


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path, corpus) -> None:
    common = args(tmp_path, corpus, "--max_iters=6", "--eval_interval=100", "--optimizer=adamw", "--peak_flops=1e9")
    one = [a if not a.startswith("--batch_size") else "--batch_size=16" for a in common]
    run([*one, f"--out_dir={tmp_path / 'one'}"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *common, f"--out_dir={tmp_path / 'two'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 x 1 accum x 2 processes" in proc.stdout
    a = [e["loss"] for e in logs(tmp_path / "one")]
    b = [e["loss"] for e in logs(tmp_path / "two")]
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    for e in logs(tmp_path / "two")[1:]:  # MFU is per device: the job's FLOP/s over 2 processes' peaks
        assert e["mfu"] == pytest.approx(e["flops_per_sec"] / 2 / 1e9)
    from model import load_model

    m1, _ = load_model(tmp_path / "one")
    m2, _ = load_model(tmp_path / "two")
    for (k, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(p1, p2, rtol=1e-3, atol=1e-4, msg=k)


def test_eval_only_and_init_from_a_run_folder(tmp_path: Path, corpus) -> None:
    first = run(args(tmp_path, corpus, "--max_iters=10", "--eval_interval=10"))
    out = tmp_path / "out"
    before = (out / "metrics.jsonl").read_text(encoding="utf-8")
    res = run([f"--out_dir={out}", "--init_from=resume", "--eval_only"])
    assert res["stopped"] == "eval_only" and res["val_loss"] == pytest.approx(first["val_loss"])
    assert res["val_bpb"] == pytest.approx(first["val_bpb"]) and res["val_bpb"] > 0
    assert (out / "metrics.jsonl").read_text(encoding="utf-8") == before  # eval_only writes nothing
    # fine-tune from the best model of that run (GPT.from_pretrained on a quillgpt folder)
    res = run(args(tmp_path, corpus, f"--init_from={out / 'best'}", "--max_iters=3", "--eval_interval=3",
                   "--learning_rate=1e-4", out="tuned"))
    assert res["iters"] == 3 and res["val_loss"] <= first["val_loss"] + 0.05


def test_wandb_online_without_credentials_falls_back_to_offline(tmp_path: Path, corpus, monkeypatch, capsys) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    capsys.readouterr()
    run(args(tmp_path, corpus, "--max_iters=2", "--eval_interval=2", "--wandb_log", "--wandb_mode=online"))
    assert "offline" in capsys.readouterr().err
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))



def torchrun(tmp_path: Path, argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py"), *argv]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fsdp_two_processes_match_one_process_and_resume_exactly(tmp_path: Path, corpus) -> None:
    """--fsdp over gloo: 2 processes x batch 4 = 1 process x batch 8, over 2 micro-steps each, through a
    resume (optimizer shards gathered into train_state.pt and scattered back), with a tied head (classic)."""
    common = args(tmp_path, corpus, "--eval_interval=3", "--optimizer=adamw", "--model=classic",
                  "--warmup_iters=2", "--gradient_accumulation_steps=2")
    run([*common, "--max_iters=6", f"--out_dir={tmp_path / 'one'}"])
    sharded = [*common, "--batch_size=4", "--fsdp", f"--out_dir={tmp_path / 'two'}"]
    proc = torchrun(tmp_path, [*sharded, "--max_iters=3"])
    assert "FSDP" in proc.stdout and "4 x 2 accum x 2 processes" in proc.stdout
    assert load_train_state(tmp_path / "two")["sharded"] is True
    torchrun(tmp_path, [f"--out_dir={tmp_path / 'two'}", "--init_from=resume", "--max_iters=6"])
    a = [(e["iter"], e["loss"]) for e in logs(tmp_path / "one")]
    b = [(e["iter"], e["loss"]) for e in logs(tmp_path / "two")]
    assert [i for i, _ in a] == [i for i, _ in b] == list(range(1, 7))
    assert [loss for _, loss in a] == pytest.approx([loss for _, loss in b], rel=1e-4, abs=1e-5)
    from model import load_model

    m1, _ = load_model(tmp_path / "one")  # one model.safetensors, gathered on rank 0
    m2, _ = load_model(tmp_path / "two")
    for (k, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(p1, p2, rtol=1e-3, atol=1e-4, msg=k)


def test_fsdp_run_samples_what_its_final_weights_write_unsharded(tmp_path: Path, corpus) -> None:
    """--fsdp with an eval sample: every rank runs the same cached generate (each forward gathers the
    shards, so the ranks' forwards must match one for one), past the window (a re-prefill) too. The
    run completes, and its last logged sample is the one its saved weights write, loaded whole, from
    the same prompt and seed."""
    from model.checkpoint import load_model, resolve_source, source_tokenizer
    from training.evaluate import sample_text

    out = tmp_path / "out"
    torchrun(tmp_path, args(tmp_path, corpus, "--max_iters=4", "--eval_interval=2", "--optimizer=adamw", "--fsdp",
                            "--sample_tokens=24", "--threads=1", "--attention_png=false"))
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        samples = [e for e in map(json.loads, f) if e["event"] == "sample"]
    assert [e["iter"] for e in samples] == [0, 2, 4]
    assert load_train_state(out)["sharded"] is True and load_train_state(out)["iter"] == 4
    model, _ = load_model(out)
    tokenizer = source_tokenizer(resolve_source(out))
    assert sample_text(model, tokenizer, 24, "cpu", TrainConfig().seed) == samples[-1]["text"]
    assert samples[-1]["text"] != samples[0]["text"]  # a trained model's sample, not the init's


def test_fsdp_refuses_muon(capsys) -> None:
    code, err = exit_code(["--fsdp", "--optimizer=muon"], capsys)
    assert code == 2 and err == ("error: --fsdp shards every matrix across processes, and Muon orthogonalises whole "
                                 "matrices; use --optimizer=adamw with --fsdp")


def test_sigterm_to_torchrun_saves_between_log_steps(tmp_path: Path, corpus) -> None:
    """torchrun forwards SIGTERM to every rank and SIGKILLs them 30 s later: the ranks must agree to
    stop within seconds, not at the next log step (here: never), and without a collective per step;
    the checkpoint they save resumes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
           *args(tmp_path, corpus, "--max_iters=1000000", "--eval_interval=1000000", "--log_interval=1000000",
                 "--optimizer=adamw", "--attention_png=false")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    try:
        deadline = time.time() + 120
        for line in proc.stdout:  # rank 0's eval at iteration 0: training is under way
            if line.startswith("eval @ iter 0"):
                break
            assert time.time() < deadline
        time.sleep(3.0)  # past the eval (sample, pictures) and into the steps
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.time() - t0 < 25  # well inside torchrun's 30 s
    assert "stopped at iteration" in stdout and f"--init_from=resume --out_dir={out}" in stdout
    saved = load_train_state(out)["iter"]
    assert saved > 0
    # the ranks agreed on the stop less than once per step (their count, as the run reported it) ...
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        stops = [e for e in map(json.loads, f) if e["event"] == "stop"]
    assert len(stops) == 1 and stops[0]["iter"] == stops[0]["saved_iter"] == saved and stops[0]["signal"] == "SIGTERM"
    assert 1 <= stops[0]["stop_agreements"] < saved / 2 and stops[0]["stop_every"] > 1
    # ... and what they saved resumes
    torchrun(tmp_path, [f"--out_dir={out}", "--init_from=resume", f"--max_iters={saved + 2}"])
    assert load_train_state(out)["iter"] == saved + 2 and [e["iter"] for e in logs(out)] == [saved + 2]


# ---------------------------------------------------------------------------- nothing lost


def test_a_new_run_never_lands_on_an_old_one_unless_told(tmp_path: Path, corpus, capsys) -> None:
    out = tmp_path / "out"
    run(args(tmp_path, corpus, "--max_iters=4", "--eval_interval=2"))
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = exit_code(args(tmp_path, corpus, "--max_iters=2"), capsys)
    assert code == 2 and "already holds a run" in err and "--init_from=resume" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite: the old run's files go (best/ and metrics too), the user's own file stays
    train.main([*args(tmp_path, corpus, "--max_iters=1", "--eval_interval=100"), "--overwrite"])
    said = capsys.readouterr().out
    assert "--overwrite: deleted the previous run's" in said and "best" in said
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    # the old run's best model (which would outrank the new run's) went: best/ is the new run's
    assert json.loads((out / "best" / "config.json").read_text(encoding="utf-8"))["iter"] == 1
    assert [e["iter"] for e in logs(out)] == [1]
    assert load_train_state(out)["iter"] == 1


def test_resume_drops_the_metrics_after_its_checkpoint_and_stale_temp_files(tmp_path: Path, corpus) -> None:
    """What a kill at iteration 7 leaves (checkpoint at 4, metrics up to 7, temp files): the resumed
    run logs 5..8 once, and only our temp files go."""
    out = tmp_path / "out"
    run(args(tmp_path, corpus, "--max_iters=4", "--eval_interval=4"))
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        for i in (5, 6, 7):
            f.write(json.dumps({"event": "log", "iter": i, "loss": 9.0}) + "\n")
        f.write('{"event": "log", "iter": 8, "lo')  # torn by the kill
    stale = [out / ".train_state.pt.k1ll3d_x.tmp", out / "best" / ".model.safetensors.abcdefgh.tmp"]
    mine = out / ".my.notes.tmp"
    for p in [*stale, mine]:
        p.write_bytes(b"x")
    run([f"--out_dir={out}", "--init_from=resume", "--max_iters=8"])
    assert [e["iter"] for e in logs(out)] == list(range(1, 9))
    assert 9.0 not in [e["loss"] for e in logs(out)]
    assert not any(p.exists() for p in stale) and mine.exists()


def test_max_iters_zero_claims_no_checkpoint(tmp_path: Path, corpus, capsys) -> None:
    capsys.readouterr()
    assert train.main(args(tmp_path, corpus, "--max_iters=0")) == 0
    said = capsys.readouterr().out
    assert "no checkpoint was saved" in said and "checkpoint in" not in said and "sample.py" not in said
    assert not (tmp_path / "out" / "train_state.pt").exists()


def test_divergence_names_the_gradient_norm_when_only_it_is_infinite(tmp_path: Path, corpus, capsys,
                                                                      monkeypatch) -> None:
    """The loss is still finite when the gradient norm overflows; the message must not say 'loss became 4.17'."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def overflows_on_the_third_step(params, max_norm, *a, **kw):
        calls.append(1)
        norm = real(params, max_norm, *a, **kw)
        return torch.full_like(norm, math.inf) if len(calls) == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", overflows_on_the_third_step)
    code, err = exit_code(args(tmp_path, corpus, "--max_iters=10", "--eval_interval=100"), capsys)
    assert code == 3 and re.search(r"the gradient norm became NaN/inf before iteration \d+", err), err
    assert "loss became" not in err


def test_resume_command_is_quoted_for_the_shell() -> None:
    import shlex

    from training.run_folder import resume_command

    cmd = resume_command("my runs/it's here")
    assert shlex.split(cmd) == ["python", "train.py", "--init_from=resume", "--out_dir=my runs/it's here"]


def start_training(tmp_path: Path, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=subprocess_env())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_start_up_ends_cleanly_and_leaves_no_temp_folder(tmp_path: Path, sig) -> None:
    """Preparing a corpus is start-up: the first signal stops at once (128 + signal), with one line,
    no traceback, no half-built data folder and no run folder."""
    big = tmp_path / "big.txt"
    big.write_text(POEM * 80000, encoding="utf-8")  # ~13 MB: seconds of preparing
    data = tmp_path / "data"
    proc = start_training(tmp_path, ["--dataset=big", "--num_proc=1", f"--input={big}", f"--data_dir={data}", *TINY,
                                     f"--out_dir={tmp_path / 'out'}"])
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if line.startswith("preparing"):
                break
            assert time.time() < deadline
        time.sleep(0.3)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, output
    assert "Traceback" not in output and "again" not in output
    assert f"stopped by {signal.Signals(sig).name} during start-up, before training began" in output
    assert not (tmp_path / "out").exists()
    assert not [p for p in data.rglob("*") if ".tmp" in p.name]


def test_a_signal_during_evaluation_saves_once_and_stops(tmp_path: Path, corpus) -> None:
    out = tmp_path / "out"
    proc = start_training(tmp_path, args(tmp_path, corpus, "--max_iters=1000", "--eval_interval=5",
                                         "--eval_iters=400"))
    try:
        deadline = time.time() + 120
        for line in proc.stdout:
            if line.startswith("iter 5/"):  # the eval of iteration 5 starts now and takes seconds
                break
            assert time.time() < deadline
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "eval @ iter 5" in output and "iter 6/" not in output  # the eval finished; no step after it
    assert "stopped at iteration 5 (SIGTERM); the checkpoint" in output and "is up to date" in output
    assert load_train_state(out)["iter"] == 5
