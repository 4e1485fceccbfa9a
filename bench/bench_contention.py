"""Training and sampling beside another CPU-bound process: the old thread behaviour against the governor.

    python -m bench.bench_contention --input=path/to/tinyshakespeare.txt
    python -m bench.bench_contention --runs=5 --seconds=90 --tokens=2000

Each cell is a real subprocess, as a user would run it, with torch's default thread count
($OMP_NUM_THREADS and $MKL_NUM_THREADS are removed from its environment):

- train: ``python train.py configs/shakespeare_char_cpu.toml`` (nanoGPT's CPU recipe shape) for
  ``--iters`` iterations or ``--seconds``, whichever ends first, evals only at the start and the
  end; tokens/s = tokens trained between the first and the last log line of metrics.jsonl over
  the time between them (so start-up and data preparation are left out; governor trials are in);
- sample: ``python sample.py`` on a random-weight checkpoint of the same shape, ``--tokens`` new
  tokens; tokens/s as sample.py reports it on stderr.

Policies: ``today`` is the behaviour before the governor: train.py at torch's default thread
count for the whole run (``--threads=<default>``), sample.py at 1 thread for models under 20M
parameters, else the default (its former auto rule, written out as ``--threads``); ``ours`` is
``--threads=0``, the governor. Conditions: ``quiet``, and ``beside`` one other CPU-bound torch
process: a loop of 1024x1024 fp32 matmuls with torch's default threads, started before the
cell and killed after it. Cells are interleaved round by round; figures are medians of ``--runs``.
Goals: beside/quiet slowdown <= 3x for ours; quiet ours/today >= 0.95.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import UsageError
from runtime.options import opt, parse, run_main

REPO = Path(__file__).resolve().parents[1]
PRESET = "configs/shakespeare_char_cpu.toml"
COMPETITOR = ("import torch\na, b = torch.randn(1024, 1024), torch.randn(1024, 1024)\n"
              "print('ready', flush=True)\nwhile True:\n    a @ b\n")
OLD_SAMPLE_SMALL_MODEL = 20_000_000  # sample.py's former rule: 1 thread below this many parameters


@dataclass
class ContentionOptions:
    input: str = opt("../shared/data/tinyshakespeare.txt", "tinyshakespeare.txt (the char-rnn file; relative paths "
                                                           "are tried from here, then from the repository root)")
    runs: int = opt(3, "rounds; each cell is the median of its runs")
    iters: int = opt(2000, "training iterations per train cell (the run also stops after --seconds)")
    seconds: float = opt(60.0, "wall-time limit of a train cell's training loop")
    tokens: int = opt(2000, "new tokens per sample cell")
    workloads: list[str] = opt(["train", "sample"], "which workloads (repeat the option for several)")
    work_dir: str | None = opt(None, "where data and run folders go; default a temp dir")


def clean_env() -> dict[str, str]:
    """The environment of every cell: torch's default threads, the repo importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=clean_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


class Competitor:
    """The other CPU-bound process, running for the duration of a ``with`` block."""

    def __enter__(self) -> "Competitor":
        self.proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=clean_env(), stdout=subprocess.PIPE,
                                     text=True)
        self.proc.stdout.readline()  # "ready": torch is imported and the loop is starting
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def train_cell(o: ContentionOptions, work: Path, threads: int, tag: str) -> float:
    """tokens/s of one train.py subprocess (between its first and last log lines)."""
    out = work / f"train-{tag}"
    cmd = [sys.executable, "train.py", PRESET, f"--input={o.input}", f"--data_dir={work / 'data'}",
           f"--out_dir={out}", f"--max_iters={o.iters}", f"--eval_interval={o.iters}", "--eval_iters=2",
           "--log_interval=5", "--sample_tokens=0", "--keep_best=false", f"--threads={threads}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline, logs = None, []
    while proc.poll() is None:
        time.sleep(0.2)
        logs = read_logs(out)
        if logs and deadline is None:
            deadline = time.monotonic() + o.seconds  # the clock starts with training, not with start-up
        if deadline is not None and time.monotonic() > deadline and len(logs) >= 3:
            proc.terminate()  # once: train.py saves and exits on SIGTERM (a second one aborts)
            deadline = float("inf")
    _, err = proc.communicate()
    logs = read_logs(out)
    if len(logs) < 2:
        raise UsageError(f"train.py produced too few log lines ({proc.returncode}): {err.strip()[-500:]}")
    first, last = logs[0], logs[-1]
    return (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])


def read_logs(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written
        if event.get("event") == "log":
            events.append(event)
    return events


def sample_cell(o: ContentionOptions, folder: Path, threads: int) -> float:
    cmd = [sys.executable, "sample.py", f"--out_dir={folder}", f"--max_new_tokens={o.tokens}", "--seed=1",
           f"--threads={threads}"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    m = re.search(r"then ([\d.]+) tokens/s", proc.stderr)
    if proc.returncode != 0 or not m:
        raise UsageError(f"sample.py failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return float(m.group(1))


def sample_checkpoint(folder: Path, text: Path) -> int:
    """A random-weight model of the preset's shape with the corpus's characters; returns its parameter count."""
    import torch

    import train
    from data.tokenizer import CharTokenizer
    from model import GPT, save_model
    from training.config import scratch_config

    tok = CharTokenizer(sorted(set(text.read_text(encoding="utf-8"))))
    torch.manual_seed(0)
    model = GPT(scratch_config(train.load_config([str(REPO / PRESET)]), tok.vocab_size))
    save_model(model, folder, {"tokenizer": tok.save(folder)})
    return model.num_params()


def main(argv: list[str] | None = None) -> int:
    o = parse(ContentionOptions, argv, prog="python -m bench.bench_contention", description=__doc__.split("\n\n")[0],
              config_files=False)
    text = Path(o.input)
    if not text.is_file() and not text.is_absolute():
        text = REPO / o.input
    if not text.is_file():
        raise UsageError(f"--input {o.input} not found: pass the tinyshakespeare file (the char-rnn input.txt)")
    o.input = str(text.resolve())
    unknown = set(o.workloads) - {"train", "sample"}
    if unknown:
        raise UsageError(f"--workloads: unknown {', '.join(sorted(unknown))}; use train and/or sample")
    from bench.timing import cpu_description

    work = Path(o.work_dir or tempfile.mkdtemp(prefix="quillgpt-contention-"))
    top = default_threads()
    n_params = sample_checkpoint(work / "ckpt", text)
    policies = {"train": {"today": top, "ours": 0},
                "sample": {"today": 1 if n_params < OLD_SAMPLE_SMALL_MODEL else top, "ours": 0}}
    results: dict[tuple[str, str, str], list[float]] = {}
    for r in range(o.runs):
        for workload in o.workloads:
            for condition in ("quiet", "beside"):
                for policy, threads in policies[workload].items():
                    tag = f"{workload}-{policy}-{condition}-{r}"
                    if condition == "beside":
                        with Competitor():
                            rate = cell(o, work, workload, threads, tag)
                    else:
                        rate = cell(o, work, workload, threads, tag)
                    results.setdefault((workload, policy, condition), []).append(rate)
                    print(f"  round {r + 1}: {workload:6} {policy:5} {condition:6} {rate:10,.0f} tokens/s", flush=True)
    print_table(o, results, policies, top, cpu_description())
    return 0


def cell(o: ContentionOptions, work: Path, workload: str, threads: int, tag: str) -> float:
    return train_cell(o, work, threads, tag) if workload == "train" else sample_cell(o, work / "ckpt", threads)


def print_table(o: ContentionOptions, results: dict, policies: dict, top: int, cpu: str) -> None:
    print(f"\n{cpu}")
    print(f"torch's default: {top} threads; competitor: 1024x1024 fp32 matmul loop at {top} threads; "
          f"medians of {o.runs} runs")
    print("| workload | policy | threads | quiet tokens/s | beside tokens/s | slowdown |")
    print("|---|---|---|---|---|---|")
    med = {k: statistics.median(v) for k, v in results.items()}
    for workload in o.workloads:
        for policy, threads in policies[workload].items():
            quiet, beside = med[(workload, policy, "quiet")], med[(workload, policy, "beside")]
            shown = "auto (governor)" if threads == 0 else str(threads)
            print(f"| {workload} | {policy} | {shown} | {quiet:,.0f} | {beside:,.0f} | {quiet / beside:.2f}x |")
    for workload in o.workloads:
        ours_q, today_q = med[(workload, "ours", "quiet")], med[(workload, "today", "quiet")]
        ours_slow = ours_q / med[(workload, "ours", "beside")]
        print(f"{workload}: quiet ours/today {ours_q / today_q:.3f} (goal >= 0.95); slowdown beside another process "
              f"{ours_slow:.2f}x for ours (goal <= 3), {today_q / med[(workload, 'today', 'beside')]:.2f}x today")


if __name__ == "__main__":
    run_main(main)
