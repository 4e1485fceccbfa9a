"""bench/gpu_check.py --device=cpu: every row with a CPU equivalent runs for real and passes; the rest say so."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CPU_ROWS = ("train adamw", "train muon", "fp16 scaler", "kv cache", "hf generate", "ddp resume", "fsdp resume")
CUDA_ROWS = ("sdpa kernels", "cuda graph", "memory bound")


def test_gpu_check_cpu_mode(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device=cpu", f"--work_dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"gpu_check: {len(CPU_ROWS)} passed, 0 failed"
    rows = {cells[0]: cells[1] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| "))}
    assert rows.pop("check") == "result"  # the header
    assert rows == {**{r: "pass" for r in CPU_ROWS}, **{r: "needs CUDA" for r in CUDA_ROWS}}
    assert "CPU: " in proc.stdout and "flags:" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_exits_2():
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "--device=cpu" in proc.stderr
