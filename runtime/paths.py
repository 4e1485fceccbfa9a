"""Folders given by the user, and names read out of files: checked before anything is written or followed.

A run folder and a prepared data folder are untrusted input: a name stored in one of their
files (a tokenizer file, say) may be ``../../etc/passwd`` or a link out of the folder. The
programs only ever open a member of a folder through ``member``, and only write under a folder
that ``check_writable_dir`` accepted, so nothing outside the folder they were given is read
through a stored name or written at all.
"""

from __future__ import annotations

import os
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (as a file, folder or link)."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def writable_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be (or become) a folder this process writes in; None if it can.

    Checked before anything is written: a file in its place or above it, a broken link,
    a read-only filesystem or a folder without write permission.
    """
    p = Path(path)
    if os.path.lexists(p) and not p.exists():
        return f"{p} is a broken link"
    if p.exists() and not p.is_dir():
        return f"{p} is a file, not a folder"
    existing = _nearest_existing(p)
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a broken link"
    if not existing.is_dir():
        return f"{existing} is a file, so no folder can be made inside it"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (a read-only filesystem, or no permission)"
    return None


def is_plain_name(name: object) -> bool:
    """A single file name: a non-empty string without separators, not ``.`` or ``..``."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and os.sep not in name)


def member(folder: str | os.PathLike, name: object) -> Path | None:
    """``folder / name`` if ``name`` is a plain file name whose real location is inside ``folder``; else None.

    A missing member is fine (the caller reports it); a link is followed only if it stays inside.
    """
    if not is_plain_name(name):
        return None
    folder = Path(folder)
    path = folder / str(name)
    if os.path.islink(path):
        real, root = os.path.realpath(path), os.path.realpath(folder)
        if os.path.commonpath([real, root]) != root:
            return None
    return path
