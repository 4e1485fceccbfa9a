"""Dashboards behind one interface: each tracker gets the events metrics.jsonl gets.

A tracker is imported only when --report_to names it; a missing package is one line naming the pip install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.errors import QuillError

TRACKERS = ("wandb", "tensorboard", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


class MissingTracker(QuillError):
    """--report_to names a tool whose package is not installed."""


def parse_report_to(value: str) -> list[str]:
    """'wandb,tensorboard' -> ['wandb', 'tensorboard']; 'none' or '' -> []; unknown names refused."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    for n in names:
        if n not in TRACKERS:
            raise QuillError(f"--report_to: {n!r} is not one of none, {', '.join(TRACKERS)}")
    return list(dict.fromkeys(names))


class TensorBoardTracker:
    """Event files in <out_dir>/tensorboard/; a resume writes into the same folder from its step on."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise MissingTracker("--report_to=tensorboard needs tensorboard: pip install tensorboard") from e
        # purge_step drops events a killed run logged past its last checkpoint
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step)
        self.config(config)

    def config(self, config: dict[str, Any]) -> None:
        import json

        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```", 0)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def log_text(self, key: str, text: str, step: int) -> None:
        self.writer.add_text(key, text, step)

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            self.writer.add_image(key, np.asarray(im.convert("RGB")), step, dataformats="HWC")

    def finish(self) -> None:
        self.writer.close()
