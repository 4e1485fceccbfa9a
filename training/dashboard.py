"""The training dashboards: metrics.jsonl, loss.png, console progress, MFU.

Nothing here needs a service: ``metrics.jsonl`` and ``loss.png`` are always written in the run
folder. The optional tools (--report_to: wandb, TensorBoard, trackio) live in training/trackers.py
and receive what metrics.jsonl receives.
"""

from __future__ import annotations

import io
import json
import netrc
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.checkpoint import METRICS_FILE, PLOT_FILE
from runtime.atomic import atomic_write_bytes, naming

if TYPE_CHECKING:
    from training.trackers import Trackers

# Dense bf16/fp16 tensor-core peaks (FLOP/s), keyed by a substring of torch.cuda.get_device_name().
# More specific names come first: "H100 PCIe" must win over "H100".
GPU_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H100 NVL", 835e12),  # NVIDIA's datasheet: 1,671 TFLOPS bf16 with sparsity, half of it dense
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("A6000", 155e12),
    ("V100", 125e12),  # fp16
    ("T4", 65e12),  # fp16
]


def device_peak_flops(device: str, override: float | None) -> float | None:
    """The device's peak FLOP/s for MFU: ``override`` if given, else the GPU table, else None.

    CPUs have no table entry: their peak depends on cores, clocks and ISA. Measure it (a
    2048x2048 matmul; bench/bench_train.py does) and pass --peak_flops.
    """
    if override:
        return override
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        for key, peak in GPU_PEAK_FLOPS:
            if key in name:
                return peak
    return None


def mfu(flops_per_sec: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: the FLOP/s each device achieves (the global rate / world_size) over
    one device's peak; None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_sec / world_size / peak


class MetricsLog:
    """Append-only JSON lines, one object per event, flushed at once (a resumed run appends).

    ``keep_until``: a resumed run's iteration. Events after it were logged by the run that was
    killed past its last checkpoint; they are dropped (the file rewritten atomically) before
    appending, so iterations in the file and in loss.png never go backwards. A torn last line
    from a kill goes too, so the next record starts on a line of its own.

    ``trackers``: the dashboards (--report_to) each event also goes to; ``close`` finishes them.
    """

    def __init__(self, out_dir: str | Path, t0: float, keep_until: int | None = None,
                 trackers: Trackers | None = None) -> None:
        self.trackers = trackers
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = t0
        if keep_until is not None:
            truncate_metrics(self.path, keep_until)
        # unbuffered: a record the disk refused is reported by write() and never retried by close()
        self._f = open(self.path, "ab", buffering=0)

    def write(self, event: str, now: float, **fields: Any) -> None:
        record = {"event": event, **fields, "time": round(now - self.t0, 4)}
        data = (json.dumps(record) + "\n").encode("utf-8")
        with naming(self.path):
            while data:  # a raw write may take only part of it
                data = data[self._f.write(data):]
        if self.trackers is not None:
            self.trackers.event(event, fields)

    def image(self, key: str, path: str | Path, it: int) -> None:
        """A picture the run folder holds (attention.png) for the trackers, at iteration ``it``."""
        if self.trackers is not None:
            self.trackers.image(key, path, it)

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            if self.trackers is not None:
                self.trackers.finish()


def truncate_metrics(path: Path, keep_until: int) -> None:
    """Keep the whole, parseable events of ``path`` up to iteration ``keep_until``; rewrite only if that changes it."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        raw = f.read()
    kept = []
    for line in raw.decode("utf-8", errors="replace").splitlines(keepends=True):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        whole = line.endswith("\n")
        later = isinstance(event, dict) and isinstance(event.get("iter"), int) and event["iter"] > keep_until
        if whole and isinstance(event, dict) and not later:
            kept.append(line)
    data = "".join(kept).encode("utf-8")
    if data != raw:
        atomic_write_bytes(path, data)


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """All events of a run folder's metrics.jsonl (a torn last line from a kill is skipped)."""
    path = Path(out_dir) / METRICS_FILE
    events = []
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
    return events


def plot_losses(out_dir: str | Path) -> None:
    """Redraw loss.png (train loss per log, train/val at each eval) from metrics.jsonl, atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend to pick

    def numbers(e: dict[str, Any], *keys: str) -> bool:  # the file is the user's: skip what is not a number
        return all(isinstance(e.get(k), (int, float)) and not isinstance(e.get(k), bool) for k in keys)

    events = read_metrics(out_dir)
    logs = [e for e in events if e.get("event") == "log" and numbers(e, "iter", "loss")]
    evals = [e for e in events if e.get("event") == "eval" and numbers(e, "iter", "train_loss", "val_loss")]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.96)  # fixed margins: tight_layout cost 0.2 s a plot
    if logs:
        ax.plot([e["iter"] for e in logs], [e["loss"] for e in logs], lw=0.8, alpha=0.5, label="train (per step)")
    if evals:
        ax.plot([e["iter"] for e in evals], [e["train_loss"] for e in evals], "o-", label="train (eval)")
        ax.plot([e["iter"] for e in evals], [e["val_loss"] for e in evals], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(Path(out_dir) / PLOT_FILE, buf.getvalue())


def wandb_has_credentials() -> bool:
    """True if wandb could log in without asking: an API key in the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def format_eta(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """A tqdm bar (loss, lr, tok/s, ETA) on a terminal; plain lines with ``iter N/MAX`` and an ETA when
    piped to a file. The ETA comes from the wall time per iteration between log lines (evals
    included: they are part of what is left), smoothed so one slow interval does not swing it."""

    SMOOTHING = 0.3  # weight of the newest interval in the running seconds-per-iteration

    def __init__(self, start: int, total: int, enabled: bool, clock: Any = None) -> None:
        self.bar = None
        self.total = total
        self.enabled = enabled  # off on ranks other than 0, and for in-process callers that want quiet
        self.clock = clock or time.monotonic
        self.mark = (start, self.clock())
        self.sec_per_iter: float | None = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def eta(self, it: int) -> str:
        """Time left after iteration ``it`` at the smoothed rate; '?' before the first interval."""
        now = self.clock()
        last_it, last_t = self.mark
        if it > last_it:
            rate = (now - last_t) / (it - last_it)
            self.sec_per_iter = rate if self.sec_per_iter is None else \
                (1 - self.SMOOTHING) * self.sec_per_iter + self.SMOOTHING * rate
            self.mark = (it, now)
        return "?" if self.sec_per_iter is None else format_eta((self.total - it) * self.sec_per_iter)

    def log(self, it: int, loss: float, lr: float, tok_s: float | None, grad_norm: float, ms: float | None,
            mfu: float | None) -> None:
        """One log line; ``tok_s``/``ms`` are None for an interval holding only the first (warm-up) step."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                 tok_s=f"{tok_s:,.0f}" if tok_s is not None else "-", refresh=False)
            return
        if not self.enabled:
            return
        speed = f", {ms:.1f} ms/iter, {tok_s:,.0f} tok/s" if tok_s is not None and ms is not None else ""
        extra = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
        print(f"iter {it}/{self.total}: loss {loss:.4f}, lr {lr:.2e}, grad norm {grad_norm:.3f}{speed}{extra}, "
              f"ETA {self.eta(it)}", flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
