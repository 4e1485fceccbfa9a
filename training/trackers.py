"""Dashboards behind one interface: each tracker gets the events metrics.jsonl gets.

``--report_to`` names them (``--wandb_log`` is the old spelling of ``--report_to=wandb``). A tracker's
package is imported only when the run asks for it; a missing one is refused with the pip install line
before the run starts (``check_installed``). ``MetricsLog`` (training/dashboard.py) hands every event
it writes to ``Trackers.event``, so each tool receives the same keys as the file, written once.
"""

from __future__ import annotations

import html
import importlib.util
import json
import secrets
import sys
from pathlib import Path
from typing import Any, Protocol

from runtime.errors import QuillError, UsageError

TRACKERS = ("wandb", "tensorboard", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}  # tool -> module to import
SCALAR_EVENTS = ("log", "eval")  # metrics.jsonl events whose numbers are plotted; "sample" goes as text


class MissingTracker(QuillError):
    """--report_to names a tool whose package is not installed."""


def parse_report_to(value: str) -> list[str]:
    """'wandb,tensorboard' -> ['wandb', 'tensorboard']; 'none' or '' -> []; unknown names refused."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    for n in names:
        if n not in TRACKERS:
            raise UsageError(f"--report_to: {n!r} is not one of none, {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


def requested(report_to: str, wandb_log: bool, wandb_mode: str) -> list[str]:
    """The trackers a run logs to: --report_to, plus wandb for --wandb_log; none of wandb when its mode is disabled."""
    names = parse_report_to(report_to)
    if wandb_log and "wandb" not in names:
        names.append("wandb")
    return [n for n in names if not (n == "wandb" and wandb_mode == "disabled")]


def check_installed(names: list[str]) -> None:
    """MissingTracker (one line with the pip install) for the first tool whose package is absent; imports nothing."""
    for n in names:
        if importlib.util.find_spec(PACKAGES[n]) is None:
            raise MissingTracker(f"--report_to={n} needs the {PACKAGES[n]} package: pip install {PACKAGES[n]} "
                                 "(or pip install -e \".[dashboards]\" for all of them)")


def numbers(fields: dict[str, Any]) -> dict[str, float]:
    """The plottable fields of an event: ints and floats (None, bools, strings and the step left out)."""
    return {k: v for k, v in fields.items()
            if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker(Protocol):
    """One dashboard tool; the config is given when it opens."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_text(self, key: str, text: str, step: int) -> None: ...
    def log_image(self, key: str, path: str | Path, step: int) -> None: ...
    def finish(self) -> None: ...


class TensorBoardTracker:
    """Event files in <out_dir>/tensorboard/; a resume writes into the same folder from its step on."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise MissingTracker("--report_to=tensorboard needs tensorboard: pip install tensorboard") from e
        # purge_step hides the events logged before at or after it: a run resumed from iteration N logs from
        # N + 1 on, so what a killed run wrote past its checkpoint goes (as in metrics.jsonl), and a new run over
        # an old folder (step 0) hides the old run's
        start = 0 if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=start)
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```", start)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in numbers(metrics).items():
            self.writer.add_scalar(k, v, step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.writer.add_text(key, f"```\n{text}\n```", step)  # a code block keeps the sample's line breaks

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image(key, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def finish(self) -> None:
        self.writer.close()


class TrackioTracker:
    """Hugging Face's local-first tracker: its store is $TRACKIO_DIR (default ~/.cache/huggingface/trackio),
    where ``trackio show`` finds it. The run is named after the saved run id, so a resume continues it."""

    def __init__(self, project: str, name: str, config: dict[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        # its own CPU/GPU monitors would put a thread and their own series on the run: off
        self.run = trackio.init(project=project, name=name, config=config, resume="allow", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(numbers(metrics), step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.run.log({key: self.trackio.Markdown(f"```\n{text}\n```")}, step=step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        self.run.log({key: self.trackio.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.run.finish()


class WandbTracker:
    """Weights & Biases: init once (resuming the stored run id), never a login prompt."""

    def __init__(self, project: str, name: str | None, mode: str, out_dir: str | Path, config: dict[str, Any],
                 run_id: str) -> None:
        import wandb

        from training.dashboard import wandb_has_credentials

        if mode == "online" and not wandb_has_credentials():
            print("wandb: no credentials (WANDB_API_KEY or a ~/.netrc entry); logging offline instead. "
                  "Upload later with `wandb sync`.", file=sys.stderr)
            mode = "offline"
        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode,
                              dir=str(out_dir), config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(numbers(metrics), step=step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.run.log({key: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        self.run.finish()


class Trackers:
    """The run's open trackers, fed the events of metrics.jsonl; ``run_id`` is saved in train_state.pt
    (wandb's run id, trackio's run name) so a resume continues the same runs."""

    def __init__(self, trackers: list[Tracker], run_id: str | None) -> None:
        self.trackers = trackers
        self.run_id = run_id

    def event(self, event: str, fields: dict[str, Any]) -> None:
        """One metrics.jsonl event: log/eval numbers at their iteration, a sample's text."""
        step = fields.get("iter")
        if not isinstance(step, int):
            return
        for t in self.trackers:
            if event in SCALAR_EVENTS:
                t.log(fields, step)
            elif event == "sample" and fields.get("text"):
                t.log_text("sample", fields["text"], step)

    def image(self, key: str, path: str | Path, step: int) -> None:
        for t in self.trackers:
            t.log_image(key, path, step)

    def finish(self) -> None:
        """Finish every tracker, even after one failed (its error goes on once all are done)."""
        failed: list[BaseException] = []
        for t in self.trackers:
            try:
                t.finish()
            except Exception as e:
                failed.append(e)
        if failed:
            raise failed[0]


def open_trackers(names: list[str], out_dir: str | Path, config: dict[str, Any], run_id: str | None,
                  resume_step: int | None, project: str, run_name: str | None, wandb_mode: str) -> Trackers:
    """Open each named tracker (a resume: ``run_id`` and ``resume_step`` from train_state.pt); if one fails,
    those already open are finished before the error goes on."""
    check_installed(names)
    if run_id is None and ({"wandb", "trackio"} & set(names)):
        run_id = secrets.token_hex(4)  # secrets: leaves the training RNGs untouched
    opened: list[Tracker] = []
    try:
        for n in names:
            if n == "tensorboard":
                opened.append(TensorBoardTracker(out_dir, config, resume_step))
            elif n == "trackio":
                # the id in the name: a new run never resumes an old one that had the same --wandb_run_name
                opened.append(TrackioTracker(project, f"{run_name or Path(out_dir).name}-{run_id}", config))
            elif n == "wandb":
                opened.append(WandbTracker(project, run_name, wandb_mode, out_dir, config, run_id))
    except BaseException:
        for t in opened:
            t.finish()
        raise
    return Trackers(opened, run_id)
