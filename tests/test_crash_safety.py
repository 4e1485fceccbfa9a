"""Crash safety: SIGKILL training at random moments and inside checkpoints; nothing may be lost.

``bench/crash_harness.py`` does the killing and the checking (see its docstring); this test runs
it with 24 kills, six of them inside a fresh run's first checkpoint, and asserts the figures.
Another kills a fresh run while it writes its first train_state.pt: the refused resume that
follows must not leave that write's temp file behind. A last test does one kill the plain way: ``python train.py`` in a subprocess, SIGKILL, then
the documented resume command, and compares the result with a run that was never killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.crash_harness import (EVAL_INTERVAL, FIRST_CHECKPOINT_EVENTS, POEM, TINY, Harness, comparable,
                                 read_metrics, report, temp_files)
from conftest import ROOT

import train

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
ENV.pop("QUILLGPT_DEBUG", None)


def test_sigkill_at_24_random_moments_loses_nothing(tmp_path: Path) -> None:
    harness = Harness(tmp_path, seed=0, env=ENV)
    try:
        fig = harness.soak(kills=24, first_checkpoint_trials=6)
    finally:
        harness.close()
    print(report(fig))  # the figures, shown with -s
    assert not fig.problems, "\n".join(fig.problems)
    assert fig.kills >= 24 and fig.kills_by_timer >= 1 and fig.kills_at_io >= 1
    assert fig.aimed_at_first_checkpoint == 6 and fig.first_checkpoint_incomplete >= 1
    assert fig.mid_write >= 1  # some kills did land inside an atomic write
    assert fig.resumed >= 1 and fig.started_over >= 1  # both ways back were exercised
    assert fig.sample_loaded >= 1 and fig.sample_loaded + fig.sample_not_yet == fig.kills
    assert fig.max_lost_iters <= EVAL_INTERVAL
    assert fig.chains >= 2 and fig.chains_identical == fig.chains


def test_a_refused_resume_removes_the_temp_file_of_the_killed_first_save(tmp_path: Path) -> None:
    """Killed inside its first train_state.pt write (the last file of the first checkpoint): resume refuses,
    rightly (there is no train state), in one line, and takes the killed write's temp file with it."""
    from data import prepare
    from model.checkpoint import load_model

    harness = Harness(tmp_path, seed=0, env=ENV)
    folder = tmp_path / "run"
    try:
        # prepared beforehand, as in the harness's soak: the run's I/O events are then its own only
        assert prepare.main(harness.base(1)[:3]) == 0
        # the last three I/O events of the first save are train_state.pt's: fsync its temp, rename, fsync the folder
        result, out = harness.run("train", [*harness.base(2 * EVAL_INTERVAL), f"--out_dir={folder}"],
                                  kill_at_event=FIRST_CHECKPOINT_EVENTS[1] - 2)
        assert result["killed"], out[-2000:]
        assert not (folder / "train_state.pt").exists()
        left = temp_files(folder)
        assert len(left) == 1 and left[0].startswith(".train_state.pt."), left  # the kill landed in that write
        result, out = harness.run("train", ["--init_from=resume", f"--out_dir={folder}"])
    finally:
        harness.close()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert result["code"] == 2 and len(lines) == 1, out
    assert "before its first train state was saved" in lines[0] and "--overwrite" in lines[0]
    assert temp_files(folder) == []
    model, meta = load_model(folder)  # what the first save did finish still loads
    assert meta["iter"] == EVAL_INTERVAL


def test_python_train_py_killed_then_resumed_with_the_documented_command(tmp_path: Path) -> None:
    (tmp_path / "poem.txt").write_text(POEM, encoding="utf-8")
    common = ["--dataset=poem", f"--input={tmp_path / 'poem.txt'}", f"--data_dir={tmp_path / 'data'}", *TINY,
              "--max_iters=16"]
    reference, out = tmp_path / "reference", tmp_path / "killed run"  # a space: the command must quote it
    train.train(train.load_config([*common, f"--out_dir={reference}"]), log_to_console=False)

    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *common, f"--out_dir={out}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        for line in proc.stdout:  # past the first checkpoint (iteration 4), mid-way to the next one
            if line.startswith("iter 7/"):
                break
            assert time.time() < deadline, "no progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "train_state.pt").is_file()
    resumed = subprocess.run([sys.executable, str(ROOT / "train.py"), "--init_from=resume", f"--out_dir={out}"],
                             cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"python sample.py --out_dir='{out}'" in resumed.stdout  # quoted: copy-paste works
    assert not list(out.rglob("*.tmp"))
    assert comparable(read_metrics(out)) == comparable(read_metrics(reference))
    for name in ("model.safetensors", "best/model.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(reference / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    iters = [e["iter"] for e in map(json.loads, (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines())]
    assert iters == sorted(iters)
