"""A training run's folder (``--out_dir``) before and as training starts: nothing is lost by accident.

- ``check_out_dir``, before anything is written anywhere: the folder can be written; a new run
  never lands on an existing run unless ``--overwrite`` says so; a resume has a train state to
  resume from (and says precisely what to do when the run never saved one); no member of the
  folder is a link that leads out of it. First of all, it deletes the temp files a killed run
  left behind (``remove_run_temps``), so that no way out, a refusal included, leaves them there.
- ``check_same_tokenizer``: a resume refuses data whose tokenizer is not the run's, before the
  run's tokenizer file (or anything else) is rewritten.
- ``start_writing``: what a run does to its folder when it starts: for ``--overwrite``, delete
  the old run's files (only those, by name).

The file format itself (names, save and load) belongs to ``model.checkpoint``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from data.tokenizer import tokenizer_fingerprint
from model.checkpoint import (BEST_DIR, CONFIG_FILE, RUN_FILES, STATE_FILE, TOKENIZER_FILES, holds_run,
                              read_config, run_member)
from runtime.atomic import remove_stale_temps
from runtime.errors import CheckpointError, DataError, UsageError
from runtime.paths import writable_dir_problem
from training.config import TrainConfig


def resume_command(out_dir: str | Path) -> str:
    """The command that continues the run in ``out_dir``, quoted for a POSIX shell."""
    return f"python train.py --init_from=resume --out_dir={shlex.quote(str(out_dir))}"


def check_out_dir(cfg: TrainConfig, master: bool = True) -> None:
    """Refuse, before anything is written, an out_dir this run must not use (see the module docstring).

    ``master``: only the process that writes the folder checks that it can write it.
    """
    out = Path(cfg.out_dir)
    if master and not cfg.eval_only:
        remove_run_temps(out)
    if cfg.init_from == "resume" and master:  # rank 0 alone reads a resume's state (training/state.py)
        check_resumable(out)
    if not master or cfg.eval_only:
        return  # eval_only writes nothing
    problem = writable_dir_problem(out)
    if problem:
        raise UsageError(f"--out_dir={cfg.out_dir}: {problem}; choose another folder")
    names = holds_run(out)
    if cfg.init_from != "resume" and names and not cfg.overwrite:
        raise UsageError(f"--out_dir={cfg.out_dir} already holds a run ({', '.join(names)}); continue it with "
                         f"`{resume_command(out)}`, pass --overwrite to delete it and start over, "
                         "or choose another --out_dir")


def check_resumable(out: Path) -> None:
    """CheckpointError unless ``out`` holds a train state to resume from, every member inside the folder."""
    hint = (f"start it over with `python train.py --out_dir={shlex.quote(str(out))} --overwrite` "
            "and the run's options")
    if not out.is_dir():
        raise CheckpointError(f"cannot resume: run folder {out} does not exist; train a run there first "
                              f"(python train.py --out_dir={shlex.quote(str(out))}) or pick another --out_dir")
    for name in (*RUN_FILES, BEST_DIR, *TOKENIZER_FILES):
        run_member(out, name)  # a link out of the folder is refused, never followed
    if not (out / STATE_FILE).is_file():
        if holds_run(out):
            raise CheckpointError(f"cannot resume {out}: it has no {STATE_FILE} (the run was stopped before its "
                                  f"first train state was saved); {hint}")
        raise CheckpointError(f"cannot resume: no {STATE_FILE} in {out}; train a run there first "
                              f"(python train.py --out_dir={shlex.quote(str(out))}) or pick another --out_dir")


def run_tokenizer(out: Path, state: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """The tokenizer spec a run was trained with and the folder of its file, or None if it was never recorded."""
    spec = state.get("tokenizer")
    if isinstance(spec, dict):
        return spec, out
    if (out / CONFIG_FILE).is_file():  # runs saved before train_state.pt recorded the spec
        spec = read_config(out).get("tokenizer")
        if isinstance(spec, dict):
            return spec, out
    return None


def check_same_tokenizer(out: Path, state: dict[str, Any], data_spec: dict[str, Any], data_folder: Path) -> None:
    """UsageError if the data a resume would train on is tokenized differently from the run itself."""
    saved = run_tokenizer(out, state)
    if saved is None:
        return
    try:
        theirs = tokenizer_fingerprint(*saved)
    except DataError as e:
        raise CheckpointError(f"cannot resume {out}: its tokenizer is unusable ({e})") from None
    ours = tokenizer_fingerprint(data_spec, data_folder)
    if theirs != ours:
        raise UsageError(f"cannot resume {out} on {data_folder}: that data uses a different tokenizer "
                         f"({data_spec.get('kind')}, {ours.split(':')[-1][:12]}) than the run "
                         f"({saved[0].get('kind')}, {theirs.split(':')[-1][:12]}); resume with the run's own "
                         "--dataset/--input/--tokenizer options (the saved ones are used when you omit them), "
                         "or start a new --out_dir")


def remove_run_temps(out: Path) -> list[str]:
    """Delete the temp files killed writers left in ``out`` and ``out/best`` (only atomic_open's own names
    for a run's files, only those no live writer holds); return them, relative to ``out``."""
    names = (*RUN_FILES, *TOKENIZER_FILES)
    removed = remove_stale_temps(out, names)
    with contextlib.suppress(CheckpointError):
        removed += remove_stale_temps(run_member(out, BEST_DIR), names)  # never through a link out of the folder
    return [str(p.relative_to(out)) for p in removed]


def start_writing(out: Path, overwrite: bool) -> list[str]:
    """Make ``out`` ready for this run's files; return what was deleted.

    With ``overwrite`` (a new run replacing an old one, which check_out_dir let through) the old
    run's files go, by name only: its checkpoints, train state, tokenizer, metrics, plot and best/.
    (Temp files a killed run left behind went already, in check_out_dir.)
    """
    out.mkdir(parents=True, exist_ok=True)
    deleted = []
    if overwrite:
        for name in (*RUN_FILES, *TOKENIZER_FILES, BEST_DIR):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()  # a link goes, never what it points at
            else:
                continue
            deleted.append(name)
    return deleted
