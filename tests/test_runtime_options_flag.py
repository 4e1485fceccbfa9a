"""runtime/options.py: a str option that doubles as an on/off flag (``opt(..., flag=(on, off))``), and read_text."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from runtime.errors import UsageError
from runtime.options import format_help, opt, parse, read_text


@dataclass
class Opts:
    compile: str = opt("false", "compile: auto, true, false", choices=("auto", "true", "false"), flag=("true", "false"))
    name: str = opt("x", "a plain text option")
    seed: int = opt(0, "a number")


@pytest.mark.parametrize("argv, expected", [
    ([], "false"),
    (["--compile"], "true"),  # bare: the flag's "on"
    (["--compile", "--seed=2"], "true"),  # bare before another option
    (["--no-compile"], "false"),
    (["--no_compile"], "false"),
    (["--compile=auto"], "auto"),
    (["--compile", "auto"], "auto"),  # a choice after the bare key is its value
    (["--compile", "false"], "false"),
    (["--compile=yes"], "true"),  # the words a bool takes mean on/off
    (["--compile=0"], "false"),
    (["--compile", "off"], "false"),
    (["--compile=TRUE"], "true"),
])
def test_flag_option_spellings(argv, expected) -> None:
    assert parse(Opts, argv).compile == expected


def test_flag_option_leaves_other_words_and_options_alone(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unexpected argument 'elsewhere'"):
        parse(Opts, ["--compile", "elsewhere"])  # not a value of --compile: the bare flag, then a stray word
    with pytest.raises(UsageError, match="--compile: 'maybe' is not one of auto, true, false"):
        parse(Opts, ["--compile=maybe"])
    with pytest.raises(UsageError, match="--no-compile only works for on/off options"):
        parse(Opts, ["--no-compile=true"])
    with pytest.raises(UsageError, match="--no-name only works for on/off options"):
        parse(Opts, ["--no-name"])  # a plain str option has no off spelling
    with pytest.raises(UsageError, match="--name needs a value"):
        parse(Opts, ["--name"])
    toml = tmp_path / "p.toml"
    toml.write_text("compile = true\n", encoding="utf-8")  # a TOML bool reads as the flag's on
    assert parse(Opts, [str(toml)]).compile == "true"


def test_flag_option_help_names_the_bare_spellings() -> None:
    lines = format_help(Opts, "prog").splitlines()
    at = lines.index("  --compile (str, default 'false')")
    assert "[one of: auto, true, false; --compile = true, --no-compile = false]" in lines[at + 1]


def test_read_text_literal_file_and_stdin(tmp_path: Path, monkeypatch) -> None:
    assert read_text("plain") == "plain"
    path = tmp_path / "p.txt"
    path.write_text("naïve ✨", encoding="utf-8")
    assert read_text(f"FILE:{path}") == "naïve ✨"
    with pytest.raises(UsageError, match=r"--prompt FILE:.*cannot read the prompt file"):
        read_text(f"FILE:{tmp_path / 'missing'}")
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(UsageError, match="cannot read the prompt file"):
        read_text(f"FILE:{path}")

    class Stdin(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    heard = []
    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO("från stdin".encode("utf-8")), encoding="utf-8"))
    assert read_text("-", notice=heard.append) == "från stdin"
    assert heard == ["reading the prompt from stdin; end it with Ctrl-D"]
    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(b"\xff"), encoding="utf-8"))
    with pytest.raises(UsageError, match="stdin is not UTF-8 text"):
        read_text("-")
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(UsageError, match="--prompt -: stdin is closed"):
        read_text("-")


def test_train_py_compile_takes_the_same_spellings() -> None:
    from training.config import TrainConfig

    for argv, expected in ((["--compile"], "true"), (["--no-compile"], "false"), (["--compile=auto"], "auto"),
                           ([], "auto"), (["--compile=yes"], "true")):
        assert parse(TrainConfig, argv).compile == expected, argv
