"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every checkpoint, token file and metadata file goes through here: write to a temp name
in the same folder, flush and fsync, then ``os.replace`` onto the final name (atomic on
POSIX and Windows), then fsync the folder so the rename itself survives a power cut.

A write that fails (disk full, file too large, read-only, permissions), whatever the writer
(Python, numpy, torch, safetensors, tokenizers), ends in one ``WriteError`` naming the final
file: the old file is untouched and the temp file is gone. The writer holds a lock on its
temp file while it works, so the cleanup of temps a killed writer left behind never takes
the file of a writer still at work.
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

from runtime.errors import QuillError, WriteError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; an open file cannot be deleted there anyway
    fcntl = None


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDWR)  # whoever wrote it may have closed it: fsync through a fresh handle
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_dir(folder: Path) -> int | None:
    """A handle on ``folder`` (for its lock), or None where folders cannot be opened (Windows)."""
    try:
        return os.open(folder, os.O_RDONLY)
    except OSError:
        return None


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


# std::io::Error's text for an OS error, which is all a Rust writer (safetensors, tokenizers) passes on
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_failure(error: BaseException) -> OSError | None:
    """The OSError behind a writer's exception, or None if it is not an I/O failure (a bug stays a bug).

    Writers wrap the OS's answer in their own types: torch's stream writer raises a RuntimeError
    whose context is the OSError of the file's ``write``; a Rust writer raises its own exception
    with "(os error N)" in the text.
    """
    seen = set()
    while isinstance(error, Exception) and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        if isinstance(error, QuillError):
            return None  # already a message of its own, about something else than this write
        m = _RUST_OS_ERROR.search(str(error))
        if m:
            return OSError(int(m[1]), os.strerror(int(m[1])))
        seen.add(id(error))
        # what the exception was raised from, or while handling (unless that was hidden with `from None`)
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return None


def write_error(error: BaseException, path: str | os.PathLike) -> WriteError | None:
    """``error`` as the WriteError of writing ``path`` (see os_failure), or None if it is no I/O failure."""
    if isinstance(error, WriteError):
        return error
    failure = os_failure(error)
    if failure is None:
        return None
    return WriteError(failure.errno, failure.strerror or str(failure) or type(failure).__name__, str(path))


def _lock(fd: int | None) -> bool:
    """Take the advisory lock that marks a temp as being written; False if a live writer holds it."""
    if fcntl is None or fd is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: cannot tell, so treat the temp as abandoned
        return True
    return True


def _locked_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path``, open and locked (see remove_stale_temps)."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        _lock(fd)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd, tmp
        os.close(fd)  # a cleanup took it in the instant before the lock: take another


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """A failed write inside (any writer's exception that stands for an OSError, see os_failure)
    becomes one WriteError naming ``path``; any other exception passes unchanged."""
    try:
        yield
    except Exception as e:
        failure = write_error(e, path)
        if failure is None:
            raise
        raise failure from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp file's path next to ``path``, for writers that take a file name; on clean exit the temp
    file is fsynced and renamed onto ``path``.

    If the block raises (or the process dies), ``path`` is untouched and the temp file is removed
    (or, after a hard kill, left behind with a ``.tmp`` suffix that no reader looks at, and that
    remove_stale_temps takes). A failed write raises WriteError naming ``path``.
    The writer must write the temp file in place: one that renames its own file onto it would
    leave its own temp name behind after a kill, and escape the lock.
    """
    path = Path(path)
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _locked_temp(path)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            yield Path(tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)  # releases the lock, after the rename or the removal


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


def _remove_if_abandoned(path: Path) -> bool:
    """Delete the temp file (or folder) ``path`` unless a live writer holds its lock; True if it went."""
    fd = _open_dir(path) if path.is_dir() else None
    if fd is None and not path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone meanwhile, or unreadable: not something this cleanup may judge
            return False
    try:
        if not _lock(fd):
            return False
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
        return True
    except OSError:  # gone meanwhile, or a folder we may not write: left as it is
        return False
    finally:
        if fd is not None:
            os.close(fd)


def remove_stale_temps(folder: str | os.PathLike, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Delete the temp files killed writers left in ``folder`` for the files ``names``; return them.

    Only ``atomic_open``'s own pattern (``.<name>.XXXXXXXX.tmp``) for the given names, only
    regular files, only directly inside ``folder``: nothing else of the user's is touched. A temp
    whose writer is still at work (it holds the temp's lock) stays. Best effort: a folder that
    cannot be read or written is left as it is.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir() or folder.is_symlink():
        return removed
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP_NAME.fullmatch(p.name)
        if m and m["name"] in names and p.is_file() and not p.is_symlink() and _remove_if_abandoned(p):
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


def remove_stale_dirs(path: str | os.PathLike) -> list[Path]:
    """Delete the unfinished ``atomic_dir`` builds of ``path`` that killed builders left beside it; return them.

    A build still at work (its builder holds the temp folder's lock) stays.
    """
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            if stale.is_dir() and not stale.is_symlink() and _remove_if_abandoned(stale):
                removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a whole folder under a temp name and rename it into place when the block succeeds.

    An interrupted build leaves only ``.<name>.tmp-*`` folders, which are removed the next time
    (remove_stale_dirs); so a folder at ``path`` is always complete. An existing ``path`` is
    replaced. A failed write inside raises WriteError naming the file at its final place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_dirs(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise write_error(e, path) from None
    fd = _open_dir(tmp)
    _lock(fd)
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = os_failure(e)
        if failure is None:
            raise
        where = Path(getattr(failure, "filename", None) or path)
        with contextlib.suppress(ValueError):
            where = path / where.relative_to(tmp)  # the file as it would have been named, not its temp
        raise WriteError(failure.errno, failure.strerror or str(failure), str(where)) from None
    finally:
        if fd is not None:
            os.close(fd)
