"""Every error quillgpt reports as one line (exit code 2), in one place.

Library code raises the error of its own domain, in its own terms; only the programs'
``run_main`` (runtime/options.py) turns a ``QuillError`` into ``error: <message>`` on stderr
and exit code 2. Each message says what was wrong and what to do.
"""

from __future__ import annotations


class QuillError(Exception):
    """Base of every expected failure: bad input, not a bug."""


class UsageError(QuillError, ValueError):
    """A bad command-line option or option value."""


class ConfigError(QuillError, ValueError):
    """A configuration whose values make no sense together (a model, a run)."""


class DataError(QuillError):
    """A corpus, tokenizer or prepared token folder that is missing, malformed or does not fit."""


class CheckpointError(QuillError, ValueError):
    """A run folder or weights file that is missing, corrupt, hostile or does not match its config."""


class DeviceError(QuillError):
    """A device or precision this machine or torch build does not have."""


class WriteError(QuillError, OSError):
    """A file that cannot be written (disk full, too large, read-only, permissions); its previous version stays.

    An OSError too (``errno``, ``strerror``, ``filename``: the final name, never a temp), so code
    that handles OSErrors of a whole phase handles this one with them.
    """

    def __str__(self) -> str:
        return (f"cannot write {self.filename}: {self.strerror}; the previous file was kept "
                "(free some disk space or fix the folder's permissions, then run again)")
