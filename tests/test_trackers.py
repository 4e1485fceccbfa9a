"""training/trackers.py and --report_to: each dashboard read back with the tool's own reader, never a mock.

TensorBoard: its EventAccumulator over <out>/tensorboard/. trackio: its SQLite store through its own
API (trackio.Api, SQLiteStorage), in a temp store ($TRACKIO_DIR), never ~/.cache. wandb's offline
files are read back in tests/test_train.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import train
from runtime.errors import QuillError
from runtime.options import run_main
from test_train import POEM, TINY
from training.trackers import TensorBoardTracker, Trackers, parse_report_to, requested


def test_report_to_parses_lists_and_refuses_unknown_names() -> None:
    assert parse_report_to("none") == []
    assert parse_report_to("wandb, tensorboard,wandb") == ["wandb", "tensorboard"]
    with pytest.raises(QuillError, match="'mlflow' is not one of"):
        parse_report_to("mlflow")


def test_wandb_log_is_the_old_spelling_of_report_to_wandb() -> None:
    assert requested("none", True, "offline") == ["wandb"]
    assert requested("tensorboard,wandb", True, "online") == ["tensorboard", "wandb"]  # named once
    assert requested("wandb,trackio", False, "disabled") == ["trackio"]  # --wandb_mode=disabled: no wandb
    assert train.load_config(["--report_to=TensorBoard, none"]).report_to == "tensorboard"


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


def test_events_reach_trackers_with_metrics_jsonl_keys(tmp_path: Path) -> None:
    """Trackers.event: log/eval numbers (None and the step left out), a sample as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fan = Trackers([TensorBoardTracker(tmp_path, {}, None)], None)
    fan.event("log", {"iter": 3, "loss": 1.5, "tokens_per_sec": None, "threads": 2})
    fan.event("eval", {"iter": 4, "train_loss": 1.25, "val_loss": 1.75, "val_bpb": 2.5})
    fan.event("sample", {"iter": 4, "text": "to be or"})
    fan.event("threads", {"iter": 4, "threads": 1, "why": "load"})  # the governor's moves are not plotted
    fan.finish()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    scalars = {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars == {"loss": [(3, 1.5)], "threads": [(3, 2.0)], "train_loss": [(4, 1.25)],
                       "val_loss": [(4, 1.75)], "val_bpb": [(4, 2.5)]}
    (sample,) = acc.Tensors("sample/text_summary")
    assert sample.step == 4 and "to be or" in sample.tensor_proto.string_val[0].decode("utf-8")


# ---------------------------------------------------------------------------------- train.py end to end


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    text = tmp_path / "poem.txt"
    text.write_text(POEM * 20, encoding="utf-8")
    return ["--dataset=poem", f"--input={text}", f"--data_dir={tmp_path / 'data'}", *TINY]


def run(argv: list[str]) -> dict:
    return train.train(train.load_config(argv), log_to_console=False)


def jsonl(out: Path, event: str) -> list[dict]:
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        return [e for e in map(json.loads, f) if e["event"] == event]


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def series(events: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["iter"], pytest.approx(e[key], rel=1e-6)) for e in events if e.get(key) is not None]


def test_tensorboard_run_gets_metrics_jsonl_and_a_resume_continues_it(tmp_path: Path, corpus) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    run([*corpus, f"--out_dir={out}", "--max_iters=4", "--eval_interval=2", "--sample_tokens=8",
         "--report_to=tensorboard"])
    got = tensorboard_scalars(out)
    for key in ("loss", "lr", "grad_norm", "tokens"):
        assert got[key] == series(jsonl(out, "log"), key), key
    for key in ("train_loss", "val_loss", "val_bpb"):  # val_bpb: whatever the eval event holds
        assert got[key] == series(jsonl(out, "eval"), key) and [s for s, _ in got[key]] == [0, 2, 4], key
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    with Image.open(out / "attention.png") as im:
        width, height = im.size
    assert [(i.step, i.width, i.height) for i in acc.Images("attention")] == [(s, width, height) for s in (0, 2, 4)]
    assert [t.step for t in acc.Tensors("sample/text_summary")] == [0, 2, 4]
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode("utf-8")
    assert '"report_to": "tensorboard"' in config and '"tokens_per_iter": 128' in config  # options and resolved

    run([f"--out_dir={out}", "--init_from=resume", "--max_iters=7"])  # --report_to comes with the saved options
    got = tensorboard_scalars(out)
    logs = jsonl(out, "log")
    assert [i for i, _ in got["loss"]] == [e["iter"] for e in logs] == sorted({e["iter"] for e in logs})
    assert got["loss"] == series(logs, "loss") and logs[-1]["iter"] == 7  # one series, continued
    assert [s for s, _ in got["val_loss"]] == [0, 2, 4, 6, 7]


def test_a_killed_runs_tensorboard_events_past_its_checkpoint_are_dropped(tmp_path: Path) -> None:
    """purge_step: what the killed run logged after the checkpoint (iteration 4) is hidden by the resume."""
    first = TensorBoardTracker(tmp_path, {}, None)
    for step in range(7):
        first.log({"loss": float(step)}, step)
    first.finish()
    resumed = TensorBoardTracker(tmp_path, {}, 4)
    for step in (5, 6):
        resumed.log({"loss": 10.0 + step}, step)
    resumed.finish()
    assert tensorboard_scalars(tmp_path)["loss"] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 15), (6, 16)]


@pytest.fixture(scope="module")
def trackio_store(tmp_path_factory):
    """A temp trackio store: trackio reads $TRACKIO_DIR once, when it is first imported."""
    store = tmp_path_factory.mktemp("trackio")
    if "trackio" in sys.modules:
        pytest.skip("trackio was imported before this module set its temp store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACKIO_DIR", str(store))
        import trackio.utils

        assert trackio.utils.TRACKIO_DIR == store  # never the user's ~/.cache
        yield store


def trackio_run(project: str) -> tuple[dict, list[dict]]:
    """The config and logs of the project's one run, through trackio's own reader."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    (only,) = list(trackio.Api().runs(project))
    return only.config, SQLiteStorage.get_logs(project, only.name)


def test_trackio_run_gets_metrics_jsonl_and_a_resume_continues_it(tmp_path: Path, corpus, trackio_store) -> None:
    out = tmp_path / "out"
    run([*corpus, f"--out_dir={out}", "--max_iters=4", "--eval_interval=2", "--report_to=trackio",
         "--wandb_project=resume-test"])
    config, logs = trackio_run("resume-test")
    assert config["report_to"] == "trackio" and config["resolved"]["tokens_per_iter"] == 128
    for key, event in (("loss", "log"), ("lr", "log"), ("val_loss", "eval"), ("val_bpb", "eval")):
        assert [(e["step"], pytest.approx(e[key], rel=1e-6)) for e in logs if key in e] == \
            series(jsonl(out, event), key), key
    assert [e["step"] for e in logs if "attention" in e] == [0, 2, 4]  # the attention grid, as trackio.Image

    run([f"--out_dir={out}", "--init_from=resume", "--max_iters=6"])
    _, logs = trackio_run("resume-test")  # still one run
    assert [e["step"] for e in logs if "loss" in e] == [e["iter"] for e in jsonl(out, "log")] == [1, 2, 3, 4, 5, 6]


def test_a_missing_tracker_package_is_one_line_and_exit_2_before_training(tmp_path: Path, corpus, capsys,
                                                                          monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "trackio", None)  # how Python marks a module as not importable
    out = tmp_path / "out"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: train.main([*corpus, f"--out_dir={out}", "--max_iters=2", "--report_to=trackio"]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    assert err == 'error: --report_to=trackio needs the trackio package: pip install trackio ' \
                  '(or pip install -e ".[dashboards]" for all of them)'
    assert not out.exists() and not (tmp_path / "data").exists()  # refused before data or run folder


def test_a_resumed_wandb_run_continues_the_saved_run(tmp_path: Path, corpus, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from model.checkpoint import load_train_state
    from test_train import wandb_records

    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    run([*corpus, f"--out_dir={out}", "--max_iters=4", "--eval_interval=2", "--report_to=wandb",
         "--wandb_mode=offline"])
    run_id = load_train_state(out)["wandb_id"]
    run([f"--out_dir={out}", "--init_from=resume", "--max_iters=6"])
    assert load_train_state(out)["wandb_id"] == run_id
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))  # one folder per process, the same run id
    assert len(files) == 2 and {f.name for f in files} == {f"run-{run_id}.wandb"}, files

    def history_steps(path: Path) -> list[int]:
        return [r.history.step.num for r in wandb_records(path) if r.WhichOneof("record_type") == "history"]

    deadline = time.time() + 30
    while 6 not in history_steps(files[1]) and time.time() < deadline:  # wandb's writer process may lag behind
        time.sleep(0.5)
    assert max(history_steps(files[0])) == 4 and min(history_steps(files[1])) == 5 and 6 in history_steps(files[1])
