"""training/dashboard.py: metrics.jsonl, loss.png, MFU peaks, console progress, wandb credentials."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from training.dashboard import (GPU_PEAK_FLOPS, MetricsLog, Progress, device_peak_flops, format_eta, mfu,
                                plot_losses, read_metrics, wandb_has_credentials)


def test_metrics_log_appends_one_json_line_per_event(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "run", t0=100.0)
    log.write("log", 101.23456, iter=1, loss=2.5)
    log.write("eval", 102.0, iter=1, train_loss=2.4, val_loss=2.6)
    # flushed at once: a reader (or a crash) sees every event written so far
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == [
        {"event": "log", "iter": 1, "loss": 2.5, "time": 1.2346},
        {"event": "eval", "iter": 1, "train_loss": 2.4, "val_loss": 2.6, "time": 2.0}]
    log.close()
    resumed = MetricsLog(tmp_path / "run", t0=200.0)  # a resumed run appends
    resumed.write("log", 203.0, iter=2, loss=2.0)
    resumed.close()
    assert [e["iter"] for e in read_metrics(tmp_path / "run")] == [1, 1, 2]


def test_read_metrics_skips_a_torn_last_line(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == []  # no file yet
    good = [{"event": "log", "iter": i, "loss": 1.0 / i, "time": i} for i in (1, 2)]
    text = "".join(json.dumps(e) + "\n" for e in good) + '{"event": "log", "iter": 3, "lo'  # killed mid-write
    (tmp_path / "metrics.jsonl").write_text(text, encoding="utf-8")
    assert read_metrics(tmp_path) == good


def test_a_resumed_log_drops_what_came_after_its_checkpoint(tmp_path: Path) -> None:
    """A run killed at iteration 7 with its checkpoint at 4: the resumed run logs 5, 6, 7 again, so the
    file first loses 5..7 (and the torn line); iterations never go backwards in it or in loss.png."""
    events = [{"event": "log", "iter": i, "loss": 1.0 / i} for i in range(1, 8)]
    events.insert(4, {"event": "eval", "iter": 4, "train_loss": 0.3, "val_loss": 0.4})
    text = "".join(json.dumps(e) + "\n" for e in events) + '{"event": "log", "it'
    path = tmp_path / "metrics.jsonl"
    path.write_text(text + "[1, 2]\n", encoding="utf-8")  # a torn line, and a line that is not an event
    log = MetricsLog(tmp_path, t0=0.0, keep_until=4)
    log.write("log", 1.0, iter=5, loss=0.2)
    log.close()
    iters = [e["iter"] for e in read_metrics(tmp_path)]
    assert iters == [1, 2, 3, 4, 4, 5]
    assert path.read_text(encoding="utf-8").endswith('"iter": 5, "loss": 0.2, "time": 1.0}\n')


def test_a_resumed_log_with_nothing_to_drop_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"event": "log", "iter": 4, "loss": 1.0}) + "\n", encoding="utf-8")
    before = path.stat().st_mtime_ns, path.stat().st_ino
    MetricsLog(tmp_path, t0=0.0, keep_until=4).close()
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before  # not even rewritten


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_plot_losses_writes_a_png(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, 0.0)
    for it in range(1, 21):
        log.write("log", it, iter=it, loss=3.0 / it)
        if it % 10 == 0:
            log.write("eval", it, iter=it, train_loss=3.0 / it, val_loss=3.2 / it)
    log.close()
    plot_losses(tmp_path)
    assert png_size(tmp_path / "loss.png") == (700, 400)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    first = (tmp_path / "loss.png").read_bytes()
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "log", "iter": 21, "loss": 9.0, "time": 21}) + "\n")
    plot_losses(tmp_path)  # redrawn from the file, so a new event changes the picture
    assert (tmp_path / "loss.png").read_bytes() != first


def test_device_peak_flops_override_table_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert device_peak_flops("cpu", None) is None  # a CPU's peak is not guessed: pass --peak_flops
    assert device_peak_flops("cpu", 128e9) == 128e9
    assert device_peak_flops("cuda:0", 1e12) == 1e12  # the override wins over the table
    name = {"value": ""}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name["value"])
    for gpu, peak in [("NVIDIA H100 NVL", 835e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12),
                      ("NVIDIA A100-SXM4-80GB", 312e12),
                      ("NVIDIA A10G", 125e12), ("NVIDIA L40S", 362e12), ("NVIDIA L4", 121e12),
                      ("NVIDIA GeForce RTX 4090", 165e12), ("Tesla T4", 65e12), ("Tesla V100-SXM2-16GB", 125e12)]:
        name["value"] = gpu
        assert device_peak_flops("cuda:0", None) == peak, gpu
    name["value"] = "Some Future GPU"
    assert device_peak_flops("cuda:0", None) is None
    # more specific names come first, so no entry is shadowed by an earlier substring
    keys = [k for k, _ in GPU_PEAK_FLOPS]
    for i, key in enumerate(keys):
        assert not any(earlier in key for earlier in keys[:i]), key


def test_mfu_is_per_device() -> None:
    """8 GPUs at 40% each deliver 8 x 0.4 x peak FLOP/s in total: MFU is 40%, not 320%."""
    peak = 989e12
    assert mfu(8 * 0.4 * peak, 8, peak) == pytest.approx(0.4)
    assert mfu(0.4 * peak, 1, peak) == pytest.approx(0.4)
    assert mfu(1e12, 8, None) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_prints_plain_lines_with_iter_of_max_and_an_eta(capsys: pytest.CaptureFixture) -> None:
    assert not sys.stdout.isatty()
    clock = Clock()
    progress = Progress(0, 100, enabled=True, clock=clock)
    assert progress.bar is None
    progress.step()  # counts silently without a bar
    clock.now += 10.0  # 5 iterations in 10 s: 2 s/iter, 95 left
    progress.log(5, 1.23456, 1e-3, 12345.6, 0.5, 12.34, 0.45)
    clock.now += 4.0  # 1 iteration in 4 s: smoothed to 0.7 * 2 + 0.3 * 4 = 2.6 s/iter, 94 left
    progress.log(6, 1.0, 2e-3, 1000.0, 0.25, 5.0, None)
    progress.log(7, 1.0, 2e-3, None, 0.25, None, None)  # only the warm-up step in the interval
    progress.message("eval @ iter 6: val loss 1.1")
    progress.close()
    assert capsys.readouterr().out.splitlines() == [
        "iter 5/100: loss 1.2346, lr 1.00e-03, grad norm 0.500, 12.3 ms/iter, 12,346 tok/s, mfu 45.0%, ETA 03:10",
        "iter 6/100: loss 1.0000, lr 2.00e-03, grad norm 0.250, 5.0 ms/iter, 1,000 tok/s, ETA 04:04",
        "iter 7/100: loss 1.0000, lr 2.00e-03, grad norm 0.250, ETA 02:49",  # no new time: 0.7 * 2.6 s x 93 left
        "eval @ iter 6: val loss 1.1"]


def test_eta_format_and_a_resumed_start() -> None:
    assert format_eta(0) == "00:00" and format_eta(59.6) == "01:00" and format_eta(3599) == "59:59"
    assert format_eta(3600) == "1:00:00" and format_eta(26 * 3600 + 61) == "26:01:01"
    clock = Clock()
    progress = Progress(1000, 2000, enabled=False, clock=clock)
    assert progress.eta(1000) == "?"  # nothing measured yet
    clock.now += 50.0
    assert progress.eta(1100) == "07:30"  # 0.5 s/iter over the 100 iterations since the resume, 900 left


def test_progress_disabled_prints_nothing(capsys: pytest.CaptureFixture) -> None:
    progress = Progress(0, 10, enabled=False)
    progress.step()
    progress.log(1, 1.0, 1e-3, 1.0, 1.0, 1.0, None)
    progress.message("hello")
    progress.close()
    assert capsys.readouterr() == ("", "")


def test_progress_on_a_terminal_draws_a_bar_not_lines(capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    progress = Progress(10, 20, enabled=True)
    assert progress.bar is not None and progress.bar.n == 10  # a resumed run starts part way
    progress.step()
    progress.log(11, 1.5, 1e-3, 100.0, 0.5, 1.0, None)
    assert progress.bar.n == 11 and "loss=1.5000" in str(progress.bar.postfix)
    progress.close()
    assert "iter 11/20:" not in capsys.readouterr().out


def test_wandb_credentials_from_the_environment_or_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_has_credentials() is False  # no key, no ~/.netrc
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n", encoding="utf-8")
    netrc.chmod(0o600)
    assert wandb_has_credentials() is True
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com/")
    assert wandb_has_credentials() is False  # the entry is for another host
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_has_credentials() is True
