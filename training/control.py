"""How a run stops early: a signal (save, then exit 0) or divergence (keep the last good checkpoint)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

class StopRequest:
    """SIGINT/SIGTERM -> finish the current step, save and exit; a second signal aborts at once.

    Installed for the duration of a run only (``with StopRequest() as stop:``), then the
    previous handlers come back. Outside the main thread signals cannot be caught: no-op.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt  # second signal: stop now, no checkpoint
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: finishing this step and saving (again to abort at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was left as it was."""


# An fp16 GradScaler halves its scale at each skipped step, so a run of skips this long means the
# scale fell by 2**20 and the gradients are still NaN/inf: no longer overflow, but a broken model.
MAX_SKIPPED_STEPS = 20


def check_divergence(loss_nonfinite: bool, skipped_in_a_row: int, iter_num: int) -> None:
    """The divergence rule: a NaN/inf loss, or MAX_SKIPPED_STEPS steps in a row with NaN/inf gradients.

    A step the fp16 GradScaler skips (its gradients overflowed) is normal and does not count alone.
    """
    if loss_nonfinite:
        raise TrainingDiverged(f"the loss became NaN/inf before iteration {iter_num}")
    if skipped_in_a_row >= MAX_SKIPPED_STEPS:
        raise TrainingDiverged(f"{skipped_in_a_row} optimizer steps in a row were skipped for NaN/inf gradients "
                               f"(fp16 GradScaler) before iteration {iter_num}")
