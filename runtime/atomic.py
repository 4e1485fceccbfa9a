"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every checkpoint, token file and metadata file goes through here: write to a temp name
in the same folder, flush and fsync, then ``os.replace`` onto the final name (atomic on
POSIX and Windows), then fsync the folder so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp file's path next to ``path``, for writers that take a file name; on clean exit the temp
    file is fsynced and renamed onto ``path``.

    If the block raises (or the process dies), ``path`` is untouched and the temp file is removed
    (or, after a hard kill, left behind with a ``.tmp`` suffix that no reader looks at).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDWR)  # whoever wrote it may have closed it: fsync through a fresh handle
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on clean exit fsync it and rename it onto ``path`` (see atomic_path)."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f


# mkstemp(prefix=".<name>.", suffix=".tmp"): eight characters from tempfile's alphabet in between
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temps(folder: str | os.PathLike, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Delete the temp files a killed writer left in ``folder`` for the files ``names``; return them.

    Only ``atomic_open``'s own pattern (``.<name>.XXXXXXXX.tmp``) for the given names, only
    regular files, only directly inside ``folder``: nothing else of the user's is touched.
    Call it when a program starts writing a folder, never while another writer may be at work.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir() or folder.is_symlink():
        return removed
    for p in folder.iterdir():
        m = _TEMP_NAME.fullmatch(p.name)
        if m and m["name"] in names and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a whole folder under a temp name and rename it into place when the block succeeds.

    An interrupted build leaves only ``<name>.tmp-*`` folders, which are removed the next time;
    so a folder at ``path`` is always complete. An existing ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.tmp-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
