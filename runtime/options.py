"""One option system for every quillgpt program: typed dataclasses, TOML presets, --help.

A program declares its options as a dataclass whose fields carry a help string:

    @dataclass
    class SampleOptions:
        temperature: float = opt(0.8, "softmax temperature; 0 = greedy")

and calls ``parse(SampleOptions, argv)``. Values are resolved as
defaults < TOML file(s) < command line, and every value is coerced to its field's type.
Mistakes raise ``runtime.errors.UsageError`` with one line saying what was wrong and what to do;
``run_main`` turns that into a message on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime.errors import QuillError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def opt(default: Any, help: str, *, aliases: Sequence[str] = (), choices: Sequence[Any] | None = None,
        flag: tuple[str, str] | None = None) -> Any:
    """A dataclass field with a help string (and optional aliases and allowed values).

    ``flag=(on, off)``: a str option that also reads as an on/off switch, for a choice such as
    auto|true|false: a bare ``--key`` means ``on``, ``--no-key`` means ``off``, and the words a
    bool option takes (yes, 1, off, ...) mean ``on`` or ``off``.
    """
    meta = {"help": help, "aliases": tuple(aliases), "choices": tuple(choices) if choices else None,
            "flag": tuple(flag) if flag else None}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------- types


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Optional[X] -> (X, True); X -> (X, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """A short human name for a field type, as shown in --help and errors."""
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is list:
        (inner,) = typing.get_args(base)
        name = f"list of {inner.__name__}"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or none" if optional else name


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a CLI string or TOML value to the field type, or raise UsageError naming the key."""
    base, optional = _unwrap_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))):
        return None
    try:
        if typing.get_origin(base) is list:
            (inner,) = typing.get_args(base)
            items = value if isinstance(value, list) else [value]
            try:
                return [coerce(v, inner, key) for v in items]
            except UsageError:
                raise ValueError from None  # named with the list type below
        if base is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            s = str(value).strip().replace("_", "")
            try:
                return int(s)
            except ValueError:
                f = float(s)  # accept 1e4 for an int option, as nanoGPT users write it
                if not f.is_integer():
                    raise
                return int(f)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not math.isfinite(f):  # no option means anything by nan or inf; refused here, once
                raise UsageError(f"--{key}: expected a finite number, got {value!r}")
            return f
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            if "\0" in str(value):  # no path or text option can hold one (a command line cannot even pass it)
                raise UsageError(f"--{key}: contains a NUL character")
            return str(value)
    except UsageError:
        raise
    except (ValueError, TypeError):
        raise UsageError(f"--{key}: expected {type_name(tp)}, got {value!r}") from None
    raise UsageError(f"--{key}: unsupported option type {tp!r}")  # a programming error, kept loud


SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63: torch, numpy and JSON all hold them exactly


def check_seed(seed: int | None, key: str = "seed") -> None:
    """UsageError unless ``seed`` is None or in the documented range [0, 2**63)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"--{key}={seed} is out of range; give a whole number from 0 to 2**63-1")


def read_text(spec: str, option: str = "--prompt", what: str = "prompt",
              notice: Callable[[str], None] | None = None) -> str:
    """A text option's value: literal, ``FILE:path`` (a UTF-8 file) or ``-`` (all of stdin, UTF-8).

    ``notice`` hears a hint when stdin is a terminal (the program seems to hang otherwise).
    """
    if spec == "-":
        if sys.stdin is None:  # started with stdin closed (`<&-`)
            raise UsageError(f"{option} -: stdin is closed; pipe the {what} in, or give {option}=TEXT or FILE:path")
        if sys.stdin.isatty() and notice is not None:
            notice(f"reading the {what} from stdin; end it with Ctrl-D")
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{option} -: stdin is not UTF-8 text ({e})") from None
    if spec.startswith("FILE:"):
        path = Path(spec[len("FILE:"):]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UsageError(f"{option} FILE:{path}: cannot read the {what} file ({reason}); "
                             "give FILE:path to a readable UTF-8 text file") from None
    return spec


# ---------------------------------------------------------------------------- parsing


def _field_table(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, str]]:
    hints = typing.get_type_hints(cls)
    table = {}
    alias = {}
    for f in fields(cls):
        f.type = hints[f.name]
        table[f.name] = f
        for a in f.metadata.get("aliases", ()):
            alias[a] = f.name
    return table, alias


def _suggest(key: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return f"; did you mean --{close[0]}?" if close else "; see --help for the list"


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML preset; nested tables are flattened (a [model] table just groups keys)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p} (give a path to a .toml file, e.g. configs/shakespeare_char.toml)")
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: not valid TOML ({e})") from None
    flat: dict[str, Any] = {}

    def walk(d: dict[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            else:
                flat[k] = v

    walk(raw)
    return flat


def parse(cls: type, argv: Sequence[str] | None = None, *, prog: str | None = None, description: str = "",
          config_files: bool = True, base_values: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from defaults < ``base_values`` < TOML files < ``--key=value`` arguments.

    ``base_values`` (e.g. a resumed run's saved options) sits between the defaults and the files;
    keys of ``base_values`` that ``cls`` does not know are ignored.

    Accepts ``--key=value``, ``--key value``, bare ``--flag`` / ``--no-flag`` for booleans,
    repeated ``--key`` for list fields, and TOML presets given positionally or with ``--config``.
    ``-h``/``--help`` prints every option and exits 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or Path(sys.argv[0]).name
    table, alias = _field_table(cls)
    split = _split_argv(argv, table, alias, config_files)
    if split is None:
        print(format_help(cls, prog, description, config_files))
        raise SystemExit(0)
    files, cli = split
    values = _resolve_values(table, alias, base_values or {}, files, cli)
    try:
        return cls(**values)
    except UsageError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def _split_argv(argv: list[str], table: dict[str, dataclasses.Field], alias: dict[str, str],
                config_files: bool) -> tuple[list[str], list[tuple[str, Any]]] | None:
    """The command line as (TOML files, [(field, raw value)]), in order; None when it asks for --help.

    UsageError for anything that fits no option.
    """
    names = list(table) + list(alias)
    files: list[str] = []
    cli: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("--"):
            if config_files and arg.endswith(".toml"):
                files.append(arg)
                continue
            raise UsageError(f"unexpected argument {arg!r}; options look like --key=value (see --help)")
        body = arg[2:]
        key, eq, value = body.partition("=")
        key = key.replace("-", "_")
        if key == "config" and config_files:
            if not eq:
                if i >= len(argv):
                    raise UsageError("--config needs a path to a .toml file")
                value, i = argv[i], i + 1
            files.append(value)
            continue
        negated = False
        if key not in table and key not in alias and key.startswith("no_") and key[3:] in table:
            key, negated = key[3:], True
        key = alias.get(key, key)
        if key not in table:
            raise UsageError(f"unknown option --{body.partition('=')[0]}{_suggest(key, names)}")
        base, _ = _unwrap_optional(table[key].type)
        flag = table[key].metadata.get("flag")
        if negated:
            if eq or (base is not bool and not flag):
                raise UsageError(f"--no-{key} only works for on/off options")
            cli.append((key, flag[1] if flag else False))
            continue
        if not eq:
            nxt = argv[i] if i < len(argv) else None
            words = _TRUE | _FALSE | set(table[key].metadata.get("choices") or ())
            if (base is bool or flag) and (nxt is None or nxt.startswith("--") or nxt.lower() not in words):
                cli.append((key, flag[0] if flag else True))
                continue
            if nxt is None:
                raise UsageError(f"--{key} needs a value ({type_name(table[key].type)})")
            value, i = nxt, i + 1
        cli.append((key, value))
    return files, cli


def _resolve_values(table: dict[str, dataclasses.Field], alias: dict[str, str], base_values: dict[str, Any],
                    files: list[str], cli: list[tuple[str, Any]]) -> dict[str, Any]:
    """defaults < base_values < TOML files < command line, each value coerced and checked against its choices."""
    names = list(table) + list(alias)
    values: dict[str, Any] = {k: coerce(v, table[k].type, k) for k, v in base_values.items() if k in table}
    for path in files:
        for key, value in load_toml(path).items():
            key = alias.get(key, key)
            if key not in table:
                raise UsageError(f"{path}: unknown option {key!r}{_suggest(key, names)}")
            values[key] = coerce(value, table[key].type, key)
    lists_seen: set[str] = set()
    for key, value in cli:
        v = coerce(value, table[key].type, key)
        if typing.get_origin(_unwrap_optional(table[key].type)[0]) is list:
            # a repeated list option accumulates; the first CLI use replaces the file's value
            v = (values.get(key) or []) + v if key in lists_seen else v
            lists_seen.add(key)
        values[key] = v
    for key, v in values.items():
        flag = table[key].metadata.get("flag")
        if flag and isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
            v = values[key] = flag[0] if v.strip().lower() in _TRUE else flag[1]
        choices = table[key].metadata.get("choices")
        if choices and v is not None and v not in choices:
            raise UsageError(f"--{key}: {v!r} is not one of {', '.join(map(str, choices))}")
    return values


def format_help(cls: type, prog: str, description: str = "", config_files: bool = True) -> str:
    """Every option with its type, default and help string."""
    table, _ = _field_table(cls)
    lines = [f"usage: {prog} [preset.toml ...] [--key=value ...]" if config_files else f"usage: {prog} [--key=value ...]"]
    if description:
        lines += ["", description.strip()]
    lines += ["", "options (defaults < --config/positional TOML files < command line):" if config_files
              else "options (defaults < command line):"]
    if config_files:
        lines.append("  --config PATH                  a TOML preset (repeatable); later files win")
    for name, f in table.items():
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)
        meta = f.metadata
        extra = []
        if meta.get("choices"):
            extra.append("one of: " + ", ".join(map(str, meta["choices"])))
        if meta.get("aliases"):
            extra.append("alias: " + ", ".join("--" + a for a in meta["aliases"]))
        if meta.get("flag"):
            extra.append(f"--{name} = {meta['flag'][0]}, --no-{name} = {meta['flag'][1]}")
        head = f"  --{name} ({type_name(f.type)}, default {default!r})"
        lines.append(head)
        lines.append("      " + meta.get("help", "") + (f" [{'; '.join(extra)}]" if extra else ""))
    lines.append("  -h, --help                     show this message and exit")
    return "\n".join(lines)


def run_main(fn: Callable[[], Any]) -> None:
    """Run a program's main(): the one place where a ``QuillError`` (bad input of any kind)
    becomes one line on stderr and exit code 2, with no traceback.

    Set QUILLGPT_DEBUG=1 to see the full traceback instead.
    """
    try:
        code = fn()
    except (QuillError, FileNotFoundError) as e:
        if os.environ.get("QUILLGPT_DEBUG"):
            raise
        msg = str(e) if isinstance(e, QuillError) else f"file not found: {e.filename or e}"
        msg = " ".join(part.strip() for part in msg.splitlines() if part.strip())  # one line, whatever a cause said
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # `... --help | head -1`: the reader left early, which is not an error
        _silence_stdout()
        code = 0
    raise SystemExit(code or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
