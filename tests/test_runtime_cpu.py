"""runtime/cpu.py: the CPU facts, the bf16 rule, the matmul probe and the thread governor.

The governor is driven by a simulated machine: each step's time is a function of the thread
count the governor set and of whether another process is running, as measured on a 2-core
box (quiet: 2 threads 1.8x faster than 1; beside a torch job: 2 threads ~47x slower).
"""

from __future__ import annotations

import time

import pytest
import torch

from runtime.cpu import (BF16_MARGIN, CpuInfo, CpuProbe, MatmulSpeed, OtherLoad, ThreadGovernor, bf16_faster,
                         cpu_info, matmul_speed, probe_cpu, thread_ladder)

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2
"""
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"


def write(tmp_path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_cpu_info_reads_model_and_flags(tmp_path) -> None:
    info = cpu_info(write(tmp_path, X86))
    assert info.model == "AMD EPYC 7B13" and {"avx2", "fma"} <= info.flags
    assert info.shown_flags() == "avx2, no avx512_bf16/amx"
    assert cpu_info(write(tmp_path, SAPPHIRE)).shown_flags() == "avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    arm = cpu_info(write(tmp_path, ARM))
    assert {"sve", "bf16"} <= arm.flags and arm.model  # no "model name" on Arm: the platform's name
    assert arm.shown_flags() == "sve bf16"  # Arm's bf16: no x86 flags said missing
    assert cpu_info(str(tmp_path / "absent")).flags == frozenset()


@pytest.mark.parametrize("fp32, bf16, faster", [
    (144.0, 1.4, False),  # AVX2 only: emulated bf16, 100x slower
    (150.0, 28.0, False),  # AVX-512 without BF16 (this development machine)
    (150.0, 160.0, False),  # within the 10% margin: noise must not flip the choice
    (150.0, 150.0 * BF16_MARGIN + 1, True),
    (170.0, 700.0, True),  # AMX
])
def test_bf16_counts_as_faster_only_beyond_the_margin(fp32: float, bf16: float, faster: bool) -> None:
    assert bf16_faster(MatmulSpeed(fp32, bf16)) is faster


def test_probe_decisions_follow_each_shape() -> None:
    info = CpuInfo("test CPU", frozenset({"avx2"}))
    avx2 = CpuProbe(info, {"train": MatmulSpeed(144, 1.4), "muon": MatmulSpeed(150, 1.6)})
    assert not avx2.bf16_matmul_faster and not avx2.bf16_ortho_faster
    # AMX: big training matmuls gain, Muon's small Gram products may not
    amx = CpuProbe(info, {"train": MatmulSpeed(150, 500), "muon": MatmulSpeed(150, 140)})
    assert amx.bf16_matmul_faster and not amx.bf16_ortho_faster
    facts = amx.as_dict()
    assert facts["cpu"] == "test CPU" and facts["cpu_flags"] == ["avx2"]
    assert facts["matmul_gflops"]["train"] == {"float32": 150, "bfloat16": 500, "shape": [256, 128, 512]}
    line = avx2.summary()
    assert line.startswith("test CPU (avx2, no avx512_bf16/amx); one thread's bf16 matmul 1.4 GFLOP/s vs fp32 144.0")


def test_matmul_probe_measures_both_dtypes_cheaply_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    t = time.perf_counter()
    speed = matmul_speed(64, 32, 48)
    assert time.perf_counter() - t < 2.0
    assert speed.float32 > 0 and speed.bfloat16 > 0
    assert torch.equal(torch.rand(3), expected)
    probe = probe_cpu()
    assert set(probe.speeds) == {"train", "muon"} and probe.seconds > 0


def test_other_load_is_busy_time_minus_our_own(tmp_path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 0 0 0 0 0 0\ncpu0 ...\n", encoding="utf-8")
    load = OtherLoad(str(stat))
    load.last = (load.last[0] - 1.0, load.last[1], load.last[2])  # one second ago
    busy = 100 + load.tick * 1.5  # user time: 1.5 more core-seconds of busy time since then
    stat.write_text(f"cpu  {busy:.0f} 0 50 1000 0 0 0 0 0 0\n", encoding="utf-8")
    cores = load.cores()  # minus this process's CPU time in that second (~0 here)
    assert 1.0 < cores <= 1.5 + 0.05
    assert OtherLoad(str(tmp_path / "absent")).cores() is None


def test_other_load_waits_for_a_long_enough_span(tmp_path) -> None:
    """Readings closer than min_seconds are unknown (tick counts are too coarse), and the next
    answer spans the whole time since the last one."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 1000 0 0 0 0 0 0\n", encoding="utf-8")
    load = OtherLoad(str(stat), min_seconds=1.0)
    t0 = load.last[0]
    stat.write_text(f"cpu  {100 + load.tick:.0f} 0 50 1000 0 0 0 0 0 0\n", encoding="utf-8")  # +1 core-second
    assert load.cores() is None and load.last[0] == t0  # too soon: not an answer, the baseline stays
    load.last = (load.last[0] - 2.0, load.last[1], load.last[2])  # as if two seconds had passed
    assert 0.4 < load.cores() <= 0.5 + 0.05  # one core-second over two seconds


# ---------------------------------------------------------------------------- the governor


def test_thread_ladder_halves_down_to_one() -> None:
    assert thread_ladder(2) == [1, 2]
    assert thread_ladder(8) == [1, 2, 4, 8]
    assert thread_ladder(6) == [1, 3, 6]
    assert thread_ladder(1) == [1] and thread_ladder(0) == [1]


class Machine:
    """A simulated CPU: step time by (busy, threads); a clock the steps advance."""

    def __init__(self, times: dict[bool, dict[int, float]], report_load: bool = True) -> None:
        self.times, self.report_load = times, report_load
        self.now, self.busy, self.threads = 0.0, False, None
        self.spent = {False: 0.0, True: 0.0}
        self.steps = {False: 0, True: 0}

    def governor(self, max_threads: int = 2, **kw) -> ThreadGovernor:
        load = (lambda: 1.0 if self.busy else 0.0) if self.report_load else None
        return ThreadGovernor(max_threads, set_threads=self.set, load=load, clock=lambda: self.now, **kw)

    def set(self, n: int) -> None:
        self.threads = n

    def run(self, gov: ThreadGovernor, steps: int) -> None:
        for _ in range(steps):
            t = self.times[self.busy][self.threads]
            self.now += t
            self.spent[self.busy] += t
            self.steps[self.busy] += 1
            gov.step_done(t)

    def overhead(self, busy: bool, best: int) -> float:
        """Time spent / time at the best fixed count for the same steps."""
        return self.spent[busy] / (self.steps[busy] * self.times[busy][best])


TWO_CORES = {False: {2: 0.030, 1: 0.054}, True: {2: 1.41, 1: 0.080}}


@pytest.mark.parametrize("report_load", [True, False])
def test_governor_keeps_all_threads_quiet_drops_to_one_under_load_and_comes_back(report_load: bool) -> None:
    m = Machine(TWO_CORES, report_load)
    gov = m.governor()
    assert m.threads == 2  # starts at the top
    m.run(gov, 3000)  # 90 s quiet
    assert m.threads == 2 and m.overhead(False, 2) < 1.02  # a few short trials of 1 thread, then back
    m.busy = True
    m.run(gov, 5)
    assert m.threads == 1  # reacted within a few steps: the first slow step is enough
    m.run(gov, 3000)  # 4 minutes beside the other job
    assert m.threads == 1 and m.overhead(True, 1) < 1.08  # periodic 2-thread trials end after one step
    m.busy = False
    m.run(gov, 3000 if report_load else 6000)  # without a load signal, a periodic trial finds out
    assert m.threads == 2
    assert [why for _, _, why in gov.history].count("kept") >= 2


def test_a_model_that_runs_faster_on_one_thread_even_quiet_settles_there() -> None:
    m = Machine({False: {2: 0.004, 1: 0.003}, True: {2: 0.2, 1: 0.005}})
    gov = m.governor()
    m.run(gov, 5000)  # the first periodic trial (after 8 s) finds 1 thread faster
    assert m.threads == 1 and m.overhead(False, 1) < 1.5
    assert m.threads == 1


def test_start_at_one_thread_and_climb_only_if_it_pays() -> None:
    m = Machine({False: {1: 0.001, 2: 0.0015, 4: 0.002}, True: {1: 0.002, 2: 0.05, 4: 0.1}})
    gov = m.governor(max_threads=4, start=1)
    assert m.threads == 1
    m.run(gov, 40000)
    assert m.threads == 1 and m.overhead(False, 1) < 1.05


def test_many_cores_walk_down_the_ladder_under_load() -> None:
    times = {False: {8: 0.01, 4: 0.018, 2: 0.033, 1: 0.06}, True: {8: 2.0, 4: 0.9, 2: 0.04, 1: 0.065}}
    m = Machine(times)
    gov = m.governor(max_threads=8)
    m.run(gov, 200)
    assert m.threads == 8
    m.busy = True
    m.run(gov, 100)
    assert m.threads == 2  # 8 -> 4 (better) -> 2 (better) -> 1 (worse, back to 2)


def test_one_thread_available_means_no_trials() -> None:
    m = Machine({False: {1: 0.01}, True: {1: 0.02}})
    gov = m.governor(max_threads=1)
    m.run(gov, 5000)
    m.busy = True
    m.run(gov, 5000)
    assert [t for _, t, _ in gov.history] == [1]


def test_noise_does_not_make_it_flap() -> None:
    """Step times jittering +-20% around the same values: at most the periodic trials, no switches kept."""
    import random

    rnd = random.Random(0)
    m = Machine(TWO_CORES)
    gov = m.governor()
    for _ in range(6000):
        t = TWO_CORES[False][m.threads] * rnd.uniform(0.8, 1.2)
        m.now += t
        gov.step_done(t)
    assert m.threads == 2 and "kept" not in [why for _, _, why in gov.history]


def test_a_machine_slower_for_every_count_does_not_start_a_trial_every_window() -> None:
    """A VM whose host takes time away slows every count alike: after one trial that shows 1 thread
    is no answer, the slower pace is the new normal, and only periodic trials follow."""
    m = Machine(TWO_CORES, report_load=False)
    gov = m.governor()
    m.run(gov, 2000)  # 60 s quiet
    trials_before = sum(why.startswith("trial") for _, _, why in gov.history)
    m.times = {busy: {n: 1.7 * t for n, t in by_n.items()} for busy, by_n in TWO_CORES.items()}
    m.run(gov, 3000)  # ~150 s at 1.7x
    trials_after = sum(why.startswith("trial") for _, _, why in gov.history) - trials_before
    assert m.threads == 2 and "kept" not in [why for _, _, why in gov.history]
    assert trials_after <= 4  # one "slower" trial, then the periodic ones (8 s doubling up to 64 s)


def test_a_burst_the_load_signal_cannot_see_is_left_behind_quickly() -> None:
    """2 s where two threads crawl while /proc/stat reads quiet (the host took a core): one thread
    wins, and the way back to two is tried within about a second of the burst ending, not 8 s."""
    m = Machine(TWO_CORES)
    gov = m.governor()
    m.run(gov, 2000)
    gov.load = lambda: 0.0  # the burst is invisible to the load signal
    m.busy = True
    end = m.now + 2.0
    while m.now < end:
        m.run(gov, 1)
    assert m.threads == 1
    m.busy, ended = False, m.now
    while m.threads == 1 and m.now < ended + 30:
        m.run(gov, 1)
    assert m.threads == 2 and m.now - ended < 2.0


@pytest.mark.parametrize("report_load", [True, False])
def test_busy_from_the_start_costs_only_the_first_slow_steps(report_load: bool) -> None:
    m = Machine(TWO_CORES, report_load)
    m.busy = True
    gov = m.governor()
    m.run(gov, 3)
    assert m.threads == 1  # one 1.4 s step at 2 threads, then the trial at 1 thread wins
    while m.now < 60:
        m.run(gov, 1)
    # with a load signal no 2-thread retry is spent while the other process runs; without, a few
    assert m.overhead(True, 1) < (1.04 if report_load else 1.08)
