"""How a run stops early: a signal (save, then exit) or divergence (keep the last good checkpoint).

One handler covers the whole program, start-up and evaluation included, so SIGINT and SIGTERM
behave the same whenever they come:

- while the training loop runs (``armed``): the first signal asks the loop to finish its step,
  save and stop; a second one raises ``Interrupted`` at once.
- before the loop (reading options, preparing data, building the model) and after it, there is
  nothing new to save: the signal raises ``Interrupted`` at once.

``Interrupted`` is a BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way
swallows it, and every atomic write it cuts short removes its temp file on the way out.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any


def signal_exit_code(signame: str) -> int:
    """128 + the signal number, as a shell reports a program ended by that signal (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signal.Signals[signame])


class Interrupted(BaseException):
    """A signal that ends the program now: it came outside the training loop, or it was the second."""

    def __init__(self, signame: str, phase: str) -> None:
        super().__init__(signame)
        self.signame = signame
        self.phase = phase  # "start-up" (before the loop), "training" (a second signal) or "finishing"

    def message(self) -> str:
        """What happened, in one line."""
        if self.phase == "training":
            return f"aborted ({self.signame} again): nothing saved since the last checkpoint"
        if self.phase == "finishing":
            return f"stopped by {self.signame} after training ended; every checkpoint of the run was already saved"
        return f"stopped by {self.signame} during start-up, before training began: nothing was trained or saved"

    @property
    def exit_code(self) -> int:
        return signal_exit_code(self.signame)


class StopRequest:
    """SIGINT/SIGTERM for the duration of a ``with`` block; the previous handlers come back after it.

    Outside the main thread signals cannot be caught: then it is a no-op.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.phase = "start-up"
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def arm(self) -> None:
        """The loop runs: from now on a first signal only asks it to stop after this step."""
        self.phase = "training"

    def disarm(self) -> None:
        """The loop is over: a signal stops the program at once again."""
        self.phase = "finishing"

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked child (a data worker) inherited this: die as if never installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal.Signals(signum).name
        if self.requested is not None or self.phase != "training":
            self.requested = self.requested or name
            raise Interrupted(name, self.phase)
        self.requested = name
        print(f"\n{name} received: finishing this step and saving (again to abort at once)",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN/inf; the last good checkpoint was left as it was."""


# An fp16 GradScaler halves its scale at each skipped step, so a run of skips this long means the
# scale fell by 2**20 and the gradients are still NaN/inf: no longer overflow, but a broken model.
MAX_SKIPPED_STEPS = 20


def check_divergence(loss_nonfinite: bool, skipped_in_a_row: int, iter_num: int, *,
                     grad_nonfinite: bool = False) -> None:
    """The divergence rule: a NaN/inf loss; a NaN/inf gradient norm without a GradScaler; or
    MAX_SKIPPED_STEPS steps in a row with NaN/inf gradients under one.

    A step the fp16 GradScaler skips (its gradients overflowed) is normal and does not count alone.
    """
    if loss_nonfinite:
        raise TrainingDiverged(f"the loss became NaN/inf before iteration {iter_num}")
    if grad_nonfinite:
        raise TrainingDiverged(f"the gradient norm became NaN/inf before iteration {iter_num}")
    if skipped_in_a_row >= MAX_SKIPPED_STEPS:
        raise TrainingDiverged(f"{skipped_in_a_row} optimizer steps in a row were skipped for NaN/inf gradients "
                               f"(fp16 GradScaler) before iteration {iter_num}")


# torchrun SIGKILLs its workers 30 s after it forwards a SIGTERM. Under DDP/FSDP the ranks agree on a
# stop (a collective) at most about this long apart, which leaves most of the grace for the save.
STOP_AGREEMENT_SECONDS = 5.0
# The first steps compile and warm up, so their times say nothing of the steps after them: the ranks
# agree at every one of these, and space their agreements by measured step time only afterwards.
STOP_WARMUP_STEPS = 10


def steps_between_stop_agreements(seconds_per_step: float, budget: float = STOP_AGREEMENT_SECONDS) -> int:
    """How many steps of ``seconds_per_step`` fit in ``budget`` seconds (at least 1)."""
    if not seconds_per_step > 0:  # also NaN: no measurement, agree at the next step
        return 1
    return max(1, int(budget / seconds_per_step))
