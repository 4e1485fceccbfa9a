"""runtime/cpu.py's thread policy for generating on the CPU (choose_threads), and how it is reported."""

from __future__ import annotations

import pytest

from runtime.cpu import SMALL_MODEL, ThreadGovernor, choose_threads, thread_moves, thread_note


@pytest.mark.parametrize("requested, params, compiled, omp, expect", [
    (3, 1_000, False, False, (None, 3)),  # explicit: exactly that, no governor
    (0, 1_000, False, False, ("governor", 1, 2)),  # small eager model: start at 1, may climb to 2
    (0, SMALL_MODEL * 2, False, False, ("governor", 2, 2)),  # big model: start at torch's default
    (0, 1_000, False, True, ("governor", 2, 2)),  # $OMP_NUM_THREADS set: start where it says
    (0, 1_000, True, False, (None, 2)),  # compiled decode step: its kernels keep torch's count
])
def test_thread_choice_for_generation(monkeypatch, requested, params, compiled, omp, expect):
    torch = pytest.importorskip("torch")

    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # torch's "default" here; the conftest fixture restores 1 afterwards
    governor = choose_threads(requested, params, compiled)
    if expect[0] is None:
        assert governor is None and torch.get_num_threads() == expect[1]
        assert thread_note(governor) == f"{expect[1]} threads" and thread_moves(governor) == ""
    else:
        assert governor.current == expect[1] == torch.get_num_threads() and governor.top == expect[2]
        assert thread_note(governor) == f"{expect[1]} thread{'s' if expect[1] > 1 else ''} at first, up to 2: governed"
        governor.step_done(0.001)  # a decode step's time is all it needs


def test_thread_moves_lists_what_the_governor_did():
    calls = []
    clock = iter([0.0, 0.0, 3.14]).__next__
    g = ThreadGovernor(4, start=1, set_threads=calls.append, clock=clock)
    assert thread_moves(g) == ""  # only the start
    g._apply(2, "trial")
    assert calls == [1, 2] and thread_moves(g) == "; threads 1 -> 2 at 3.1 s (trial)"
