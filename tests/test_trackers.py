"""training/trackers.py: read back with each tool's own reader."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.errors import QuillError
from training.trackers import TensorBoardTracker, parse_report_to


def test_report_to_parses_lists_and_refuses_unknown_names() -> None:
    assert parse_report_to("none") == []
    assert parse_report_to("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    with pytest.raises(QuillError, match="'mlflow' is not one of"):
        parse_report_to("mlflow")


def test_tensorboard_scalars_and_image_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    picture = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 12, 3), dtype=np.uint8)).save(picture)
    t = TensorBoardTracker(tmp_path, {"lr": 1e-3}, None)
    t.log({"loss": 2.5, "lr": 1e-3, "skip": None}, 1)
    t.log({"loss": 2.0}, 2)
    t.log_image("attention", picture, 2)
    t.finish()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(s.step, s.value) for s in acc.Scalars("loss")] == [(1, 2.5), (2, 2.0)]
    (img,) = acc.Images("attention")
    assert (img.step, img.width, img.height) == (2, 12, 8)
