"""runtime/options.py: typed coercion, TOML presets, precedence, suggestions, --help, run_main's exit codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import CheckpointError, ConfigError, DataError, DeviceError, QuillError, UsageError
from runtime.options import coerce, format_help, load_toml, opt, parse, run_main


@dataclass
class Opts:
    name: str = opt("default", "a name", aliases=("nick",))
    count: int = opt(1, "how many")
    rate: float = opt(0.5, "a rate")
    flag: bool = opt(False, "an on/off switch")
    maybe: int | None = opt(None, "an optional count")
    tags: list[str] = opt([], "tags; repeat for several")
    mode: str = opt("a", "a or b", choices=("a", "b"))

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("--count must be >= 0")


# ---------------------------------------------------------------------------- coerce


@pytest.mark.parametrize("value, tp, expected", [
    ("12", int, 12),
    ("1e4", int, 10_000),  # nanoGPT users write max_iters = 1e4
    ("1_000", int, 1000),
    (3.0, int, 3),
    ("-7", int, -7),
    ("0.25", float, 0.25),
    ("3e-4", float, 3e-4),
    (2, float, 2.0),
    ("true", bool, True), ("Yes", bool, True), ("1", bool, True), ("on", bool, True),
    ("false", bool, False), ("NO", bool, False), ("0", bool, False), ("off", bool, False),
    (True, bool, True),
    ("text", str, "text"),
    ("none", int | None, None), ("null", int | None, None), ("", int | None, None), (None, int | None, None),
    ("5", int | None, 5),
    ("a", list[str], ["a"]),
    (["1", 2, "3e1"], list[int], [1, 2, 30]),
    ("none", list[str] | None, None),
])
def test_coerce_converts_to_the_field_type(value, tp, expected) -> None:
    got = coerce(value, tp, "key")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, tp, shown", [
    ("1.5", int, "expected int, got '1.5'"),
    (1.5, int, "expected int, got 1.5"),
    ("twelve", int, "expected int, got 'twelve'"),
    (True, int, "expected int"),  # a TOML bool is not a number
    (False, float, "expected float"),
    ("maybe", bool, "expected bool, got 'maybe'"),
    (2, bool, "expected bool"),
    ("none", int, "expected int, got 'none'"),  # only optional fields take none
    ({"a": 1}, str, "expected str"),
    (["1", "x"], list[int], "expected list of int, got ['1', 'x']"),
    ("x", list[int], "expected list of int, got 'x'"),
    ("x", int | None, "expected int or none, got 'x'"),
])
def test_coerce_rejects_with_the_key_and_type(value, tp, shown) -> None:
    with pytest.raises(UsageError) as e:
        coerce(value, tp, "key")
    assert str(e.value).startswith("--key: ") and shown in str(e.value), str(e.value)


@given(n=st.integers(-10**12, 10**12))
def test_coerce_int_round_trips(n: int) -> None:
    assert coerce(str(n), int, "k") == n
    assert coerce(float(n), int, "k") == n


@given(x=st.floats(allow_nan=False, allow_infinity=False))
def test_coerce_float_round_trips(x: float) -> None:
    assert coerce(repr(x), float, "k") == x


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", float("nan"), float("inf")])
def test_coerce_refuses_non_finite_floats(value) -> None:
    """No option means anything by nan or inf (a learning rate of nan trains nothing)."""
    with pytest.raises(UsageError, match="^--k: expected a finite number"):
        coerce(value, float, "k")


def test_coerce_refuses_a_nul_character_in_text() -> None:
    with pytest.raises(UsageError, match="NUL"):
        coerce("out\0dir", str, "out_dir")


# ---------------------------------------------------------------------------- TOML


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_load_toml_flattens_tables(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", 'count = 3\n[model]\nrate = 0.1\n[model.deeper]\nflag = true\n'
                                      '[data]\ntags = ["x", "y"]\n')
    assert load_toml(path) == {"count": 3, "rate": 0.1, "flag": True, "tags": ["x", "y"]}


def test_load_toml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"config file not found: .*missing\.toml"):
        load_toml(tmp_path / "missing.toml")
    bad = write(tmp_path / "bad.toml", "count = = 3\n")
    with pytest.raises(UsageError, match=r"bad\.toml: not valid TOML"):
        load_toml(bad)


# ---------------------------------------------------------------------------- parse


def test_precedence_defaults_then_base_values_then_files_then_cli(tmp_path: Path) -> None:
    assert parse(Opts, []) == Opts()
    base = {"name": "base", "count": 2, "rate": 0.7, "flag": True, "unknown_key": 1}  # unknown keys ignored
    assert parse(Opts, [], base_values=base) == Opts(name="base", count=2, rate=0.7, flag=True)
    first = write(tmp_path / "first.toml", 'count = 3\nrate = 0.9\n[extra]\nmaybe = 4\n')
    second = write(tmp_path / "second.toml", "rate = 0.8\n")
    got = parse(Opts, [first, "--config", second, "--count=5"], base_values=base)
    # name: base_values; flag: base_values; count: CLI over file; rate: the later file; maybe: a nested table
    assert got == Opts(name="base", count=5, rate=0.8, flag=True, maybe=4)
    assert parse(Opts, [f"--config={first}"]).count == 3
    assert parse(Opts, ["--count", "6", first]).count == 6  # the CLI wins wherever the file is named


def test_cli_forms(tmp_path: Path) -> None:
    assert parse(Opts, ["--count", "4", "--rate=1e-3", "--maybe=none", "--mode", "b"]) == \
        Opts(count=4, rate=1e-3, maybe=None, mode="b")
    assert parse(Opts, ["--flag"]).flag is True
    assert parse(Opts, ["--flag", "false"]).flag is False
    assert parse(Opts, ["--flag", "--count=2"]) == Opts(flag=True, count=2)  # a bare flag before another option
    assert parse(Opts, ["--no-flag"], base_values={"flag": True}).flag is False
    assert parse(Opts, ["--no_flag"], base_values={"flag": True}).flag is False
    assert parse(Opts, ["--nick=alias"]).name == "alias"
    assert parse(Opts, ["--maybe=7"]).maybe == 7


def test_repeated_list_options_accumulate_and_replace_the_files_value(tmp_path: Path) -> None:
    preset = write(tmp_path / "p.toml", 'tags = ["from-file"]\n')
    assert parse(Opts, ["--tags=a", "--tags", "b", "--tags=c"]).tags == ["a", "b", "c"]
    assert parse(Opts, [preset]).tags == ["from-file"]
    assert parse(Opts, [preset, "--tags=a", "--tags=b"]).tags == ["a", "b"]  # the first CLI use replaces
    assert Opts().tags == [] and Opts().tags is not Opts().tags  # no shared mutable default


@pytest.mark.parametrize("argv, message", [
    (["--cuont=3"], "unknown option --cuont; did you mean --count?"),
    (["--nmae", "x"], "unknown option --nmae; did you mean --name?"),
    (["--zzzzzz=1"], "unknown option --zzzzzz; see --help for the list"),
    (["--no-count"], "--no-count only works for on/off options"),
    (["--no-flag=true"], "--no-flag only works for on/off options"),
    (["--count"], "--count needs a value (int)"),
    (["stray"], "unexpected argument 'stray'"),
    (["--mode=c"], "--mode: 'c' is not one of a, b"),
    (["--count=1.5"], "--count: expected int, got '1.5'"),
    (["--count=-1"], "--count must be >= 0"),  # __post_init__'s ValueError, as a UsageError
    (["--config"], "--config needs a path"),
])
def test_mistakes_are_one_line_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse(Opts, argv)
    assert str(e.value) == message or str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_file_names_the_file_and_suggests(tmp_path: Path) -> None:
    preset = write(tmp_path / "p.toml", "rat = 0.1\n")
    with pytest.raises(UsageError, match=r"p\.toml: unknown option 'rat'; did you mean --rate\?"):
        parse(Opts, [preset])


def test_toml_files_only_where_the_program_takes_them(tmp_path: Path) -> None:
    preset = write(tmp_path / "p.toml", "count = 3\n")
    with pytest.raises(UsageError, match="unexpected argument"):
        parse(Opts, [preset], config_files=False)
    with pytest.raises(UsageError, match="unknown option --config"):
        parse(Opts, [f"--config={preset}"], config_files=False)


def test_help_prints_every_option_to_stdout_and_exits_0(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        parse(Opts, ["--count=3", "--help"], prog="prog.py", description="Does things.")
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert err == "" and out == format_help(Opts, "prog.py", "Does things.") + "\n"
    lines = out.splitlines()
    assert lines[0] == "usage: prog.py [preset.toml ...] [--key=value ...]" and "Does things." in lines
    for head, help_text in [("--name (str, default 'default')", "a name [alias: --nick]"),
                            ("--count (int, default 1)", "how many"),
                            ("--rate (float, default 0.5)", "a rate"),
                            ("--flag (bool, default False)", "an on/off switch"),
                            ("--maybe (int or none, default None)", "an optional count"),
                            ("--tags (list of str, default [])", "tags; repeat for several"),
                            ("--mode (str, default 'a')", "a or b [one of: a, b]")]:
        i = lines.index("  " + head)
        assert lines[i + 1] == "      " + help_text
    with pytest.raises(SystemExit):
        parse(Opts, ["-h"], prog="prog.py", config_files=False)
    out = capsys.readouterr().out
    assert out.startswith("usage: prog.py [--key=value ...]\n") and "  --config PATH" not in out


# ---------------------------------------------------------------------------- run_main


def raiser(exc: BaseException):
    def main():
        raise exc
    return main


@pytest.mark.parametrize("error", [UsageError, ConfigError, DataError, CheckpointError, DeviceError, QuillError])
def test_run_main_turns_any_quill_error_into_one_line_and_exit_2(error, capsys, monkeypatch) -> None:
    monkeypatch.delenv("QUILLGPT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        run_main(raiser(error("what went wrong; what to do")))
    assert e.value.code == 2
    assert e.value.__context__ is None or e.value.__suppress_context__  # no chained traceback to print
    out, err = capsys.readouterr()
    assert out == "" and err == "error: what went wrong; what to do\n"


def test_run_main_keeps_a_multi_line_cause_on_one_line(capsys, monkeypatch) -> None:
    """A library's own message may hold newlines (tarfile's does); the error is still one line."""
    monkeypatch.delenv("QUILLGPT_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        run_main(raiser(DataError("x.tar: unreadable (tried:\n - gzip: bad\n - tar: bad); pass a tarball")))
    assert capsys.readouterr().err == "error: x.tar: unreadable (tried: - gzip: bad - tar: bad); pass a tarball\n"


def test_run_main_passes_exit_codes_through_and_lets_bugs_raise(capsys, monkeypatch) -> None:
    monkeypatch.delenv("QUILLGPT_DEBUG", raising=False)
    for returned, code in ((None, 0), (0, 0), (3, 3), (130, 130)):
        with pytest.raises(SystemExit) as e:
            run_main(lambda r=returned: r)
        assert e.value.code == code
    with pytest.raises(ZeroDivisionError):  # a bug is not bad input: its traceback must show
        run_main(raiser(ZeroDivisionError("bug")))
    with pytest.raises(SystemExit) as e:
        run_main(raiser(FileNotFoundError(2, "No such file", "/no/such/file")))
    assert e.value.code == 2 and capsys.readouterr().err == "error: file not found: /no/such/file\n"


def test_quillgpt_debug_reraises_with_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("QUILLGPT_DEBUG", "1")
    with pytest.raises(ConfigError, match="deep problem"):
        run_main(raiser(ConfigError("deep problem")))
