"""What this CPU is good at, and how many threads to use while others share it: measured, not assumed.

- ``cpu_info()``: the model name and the ISA flags that decide which kernels are fast (no torch).
- ``probe_cpu()``: fp32 against bf16 matmul speed on one thread at two small shapes, a training
  matmul and a Muon Gram product, in a fraction of a second. Whether bf16 is faster or far slower
  than fp32 depends on the CPU class (native AVX-512 BF16 / AMX, AVX-512 without BF16, AVX2 only),
  and oneDNN's "bf16 supported" flag is True on all of them, so only a measurement tells.
  ``bf16_faster`` is the rule; the device module turns it into the run's dtypes. The figures per
  CPU class are in docs/BENCHMARKS.md.
- ``ThreadGovernor``: times each step and moves torch's intra-op thread count to whatever is
  fastest now. OpenMP workers spin-wait for each other, so beside one other CPU-bound process
  every thread of a parallel region waits for the one that was descheduled, and all threads can
  be much slower than one. No fixed setting is right both on a quiet and on a busy machine, so the
  count follows the load. Global OpenMP settings (a passive wait policy, a short spin count) are
  not used: they cost quiet speed and do not cure the busy case.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "sve", "bf16")  # x86, then Arm's names
# (rows, inner, cols): a default-model MLP matmul (256 of batch x block, 128 wide, 4x128 out), and
# the X Xᵀ of Muon's Newton-Schulz on a 128 x 512 matrix. Small, so a CPU that emulates bf16 is not kept waiting.
PROBE_SHAPES = {"train": (256, 128, 512), "muon": (128, 512, 128)}
BF16_MARGIN = 1.1  # bf16 counts as faster only when at least 10% faster: timing noise must not flip the choice


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    def shown_flags(self) -> str:
        """The flags that matter, each said present or absent: 'avx2 avx512f, no avx512_bf16/amx'."""
        have = [f for f in FLAGS if f in self.flags]
        x86 = any(f.startswith("avx") for f in self.flags)
        missing = [f for f in ("avx512_bf16", "amx") if x86 and not any(g.startswith(f) for g in self.flags)]
        return " ".join(have) + (", no " + "/".join(missing) if missing else "") if have else "no avx2/avx512/amx"


def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """The first CPU's model name and flags (x86 'flags', Arm 'Features'); 'unknown CPU' off Linux."""
    import platform

    model, flags = "", frozenset()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", flags)


@dataclass(frozen=True)
class MatmulSpeed:
    """GFLOP/s of one matmul shape in fp32 and in bf16."""

    float32: float
    bfloat16: float


def bf16_faster(speed: MatmulSpeed) -> bool:
    """THE rule: bf16 is worth using at this shape only if measured at least 10% faster than fp32."""
    return speed.bfloat16 > BF16_MARGIN * speed.float32


def matmul_speed(m: int, k: int, n: int, rounds: int = 3, budget: float = 0.08) -> MatmulSpeed:
    """Best-of-``rounds`` GFLOP/s of an (m, k) @ (k, n) matmul in fp32 and bf16 on one thread, rounds
    interleaved so a burst of load hits both; after two rounds it stops once ``budget`` seconds are spent.

    One thread: the question is which kernels this core has, and one thread cannot be stalled by
    a sibling that lost its core (with all threads on a busy machine both dtypes measured the same
    crawl). Inputs come from a private generator: the caller's RNG streams are untouched.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _best_of(m, k, n, rounds, budget)
    finally:
        torch.set_num_threads(threads)


def _best_of(m: int, k: int, n: int, rounds: int, budget: float) -> MatmulSpeed:
    import torch

    g = torch.Generator().manual_seed(0)
    pairs = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
        a @ b  # the first call pays for kernel selection (oneDNN builds its primitive)
        pairs[dtype] = (a, b)
    best = {dtype: math.inf for dtype in pairs}
    start = time.perf_counter()
    for r in range(rounds):
        for dtype, (a, b) in pairs.items():
            t = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - t)
        if r >= 1 and time.perf_counter() - start > budget:
            break
    flops = 2 * m * k * n
    return MatmulSpeed(flops / best[torch.float32] / 1e9, flops / best[torch.bfloat16] / 1e9)


@dataclass
class CpuProbe:
    """This CPU, its fp32/bf16 matmul speeds, and what they decide."""

    info: CpuInfo
    speeds: dict[str, MatmulSpeed]  # keyed like PROBE_SHAPES
    seconds: float = 0.0

    @property
    def bf16_matmul_faster(self) -> bool:
        """bf16 autocast can pay at all here (the per-model probe then decides)."""
        return bf16_faster(self.speeds["train"])

    @property
    def bf16_ortho_faster(self) -> bool:
        """Muon's Newton-Schulz matmuls are faster in bf16 than in fp32 here."""
        return bf16_faster(self.speeds["muon"])

    def summary(self) -> str:
        """'<model> (<flags>); bf16 matmul X GFLOP/s vs fp32 Y (Muon's shape: x vs y)', for the start-up line."""
        t, m = self.speeds["train"], self.speeds["muon"]
        return (f"{self.info.model} ({self.info.shown_flags()}); one thread's bf16 matmul {t.bfloat16:.1f} GFLOP/s "
                f"vs fp32 {t.float32:.1f} (Muon's shape: {m.bfloat16:.1f} vs {m.float32:.1f})")

    def as_dict(self) -> dict:
        """For config.json's ``resolved`` section and wandb."""
        return {"cpu": self.info.model, "cpu_flags": sorted(f for f in self.info.flags if f in FLAGS
                                                            or f.startswith("amx")),
                "matmul_gflops": {shape: {"float32": round(s.float32, 2), "bfloat16": round(s.bfloat16, 2),
                                          "shape": list(PROBE_SHAPES[shape])} for shape, s in self.speeds.items()},
                "probe_seconds": round(self.seconds, 3)}


def probe_cpu() -> CpuProbe:
    """Measure both shapes of PROBE_SHAPES (a fraction of a second, a little more where bf16 is emulated)."""
    t = time.perf_counter()
    speeds = {name: matmul_speed(*shape) for name, shape in PROBE_SHAPES.items()}
    return CpuProbe(cpu_info(), speeds, time.perf_counter() - t)


# ---------------------------------------------------------------------------- other processes' load


class OtherLoad:
    """How many cores other processes kept busy since the last call: the machine's busy time
    (/proc/stat, steal included) minus this process's own CPU time. None where /proc is absent."""

    def __init__(self, stat: str = "/proc/stat", min_seconds: float = 1.0) -> None:
        self.stat = stat
        # /proc/stat counts in ticks (10 ms) per CPU, updated lazily on idle CPUs: over a 0.2 s
        # window the error alone reads as half a core of "other load". So a reading spans at
        # least this long, and calls in between answer None (not known yet).
        self.min_seconds = min_seconds
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        try:
            with open(self.stat, encoding="utf-8") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal (not idle, iowait)
        return time.monotonic(), busy / self.tick, time.process_time()

    def cores(self) -> float | None:
        now = self._read()
        if now is None or self.last is None:
            self.last = now
            return None
        if now[0] - self.last[0] < self.min_seconds:
            return None  # keep the older reading: the next answer covers the whole span
        last, self.last = self.last, now
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


# ---------------------------------------------------------------------------- the governor


def thread_ladder(max_threads: int) -> list[int]:
    """The counts the governor moves between, fewest first: 1, ..., max/4, max/2, max."""
    counts, n = set(), max(1, max_threads)
    while n >= 1:
        counts.add(n)
        n //= 2
    return sorted(counts)


@dataclass
class ThreadGovernor:
    """Keeps torch's thread count at whatever makes steps fastest now.

    Call ``step_done(seconds)`` after each step. Steps are grouped in windows (at least
    ``min_steps`` and ``min_seconds``); each window's median step time is compared with the
    others'. A *trial* runs one window at the neighbouring count and keeps it only if it was
    at least 5% faster. Trials start when a window is much slower than the best seen at this
    count since its last failed trial (something else started), when other processes' CPU use
    appears or goes away (``load``), and at growing intervals (``retry_seconds``, doubling up to
    ``max_retry_seconds`` while the current count keeps winning). A trial that is plainly worse
    ends after one step. On a quiet machine the cost is a clock read per step and a rare trial.
    """

    max_threads: int
    start: int | None = None  # None: max_threads
    set_threads: Callable[[int], None] | None = None  # None: torch.set_num_threads
    load: Callable[[], float | None] | None = None  # other processes' busy cores; None: never known
    clock: Callable[[], float] = time.monotonic
    min_steps: int = 3
    min_seconds: float = 0.2
    max_seconds: float = 1.0  # a window of very slow steps ends early
    retry_seconds: float = 8.0
    max_retry_seconds: float = 64.0
    busy_cores: float = 0.5  # other processes using this much CPU count as "busy"
    jump: float = 1.5  # a window this much slower than the best seen at its count triggers a trial
    history: list[tuple[float, int, str]] = field(default_factory=list)  # (time, threads, why)

    def __post_init__(self) -> None:
        self.ladder = thread_ladder(self.max_threads)
        self.top = self.ladder[-1]
        self.window: list[float] = []
        self.median: dict[int, float] = {}  # latest window per count
        self.best: dict[int, float] = {}  # fastest settled window per count
        self.trial_from: int | None = None
        self.t0 = self.clock()
        self.gap = self.retry_seconds
        self.next_retry = self.t0 + self.gap
        self.was_busy: bool | None = None
        self._apply(self.start if self.start in self.ladder else self.top, "start")
        self.skip = 0  # a window's median shrugs off the first step's one-off costs

    def _apply(self, threads: int, why: str) -> None:
        """The one side effect: set the count (and note why)."""
        self.current = threads
        self.skip = 1  # the first step at a new count pays for waking threads: not a measurement
        self.history.append((round(self.clock() - self.t0, 3), threads, why))
        if self.set_threads is not None:
            self.set_threads(threads)
        else:
            import torch

            torch.set_num_threads(threads)

    def _neighbour(self, up: bool) -> int | None:
        i = self.ladder.index(self.current) + (1 if up else -1)
        return self.ladder[i] if 0 <= i < len(self.ladder) else None

    def step_done(self, seconds: float) -> None:
        """Account one step; at the end of a window, maybe start or judge a trial."""
        if self.skip:
            self.skip -= 1
            if self.trial_from is not None and seconds > 4 * self.median[self.trial_from]:
                self._judge_trial(seconds)  # even a first step this slow is conclusive
            return
        self.window.append(seconds)
        if self.trial_from is not None:
            if seconds > 2 * self.median[self.trial_from]:  # plainly worse: no need to finish the window
                self.window = [seconds]
        elif self.current in self.best and seconds > 3 * self.best[self.current]:
            self.window = [seconds]  # a sudden slowdown: react now, not after a window of slow steps
        elif not self._window_full():
            return
        median = statistics.median(self.window)
        self.window = []
        if self.trial_from is not None:
            self._judge_trial(median)
        else:
            self._settled_window(median)

    def _window_full(self) -> bool:
        total = sum(self.window)
        return total >= self.max_seconds or (len(self.window) >= self.min_steps and total >= self.min_seconds)

    def _judge_trial(self, median: float) -> None:
        came_from, tried = self.trial_from, self.current
        self.trial_from = None
        self.median[tried] = median
        # While other processes are known to be busy, more threads will not help until they stop,
        # and /proc/stat will say when: retry upwards only rarely (a failed try costs a slow step).
        busy_below = self.was_busy and min(tried, came_from) < self.top
        if median < 0.95 * self.median[came_from]:
            self.best[tried] = min(self.best.get(tried, math.inf), median)
            self.history.append((round(self.clock() - self.t0, 3), tried, "kept"))
            if busy_below:
                self.gap = self.max_retry_seconds
            elif self.was_busy is False and tried < came_from:
                # fewer threads won on a machine that reads quiet: most likely a passing burst
                # (a VM's host, a short job); check the way back soon rather than in retry_seconds
                self.gap = self.retry_seconds / 8
            else:
                self.gap = self.retry_seconds
            if not self._start_trial(up=tried > came_from, why="further"):  # it helped: one more rung?
                self.next_retry = self.clock() + self.gap
            return
        self._apply(came_from, "back")
        # the count we return to is as fast as it gets now: its latest window is the new yardstick
        # for "slower" (else a machine that got slower for every count, e.g. a VM losing time to
        # its host, would start a trial after every window)
        self.best[came_from] = self.median[came_from]
        self.gap = self.max_retry_seconds if busy_below else min(2 * self.gap, self.max_retry_seconds)
        self.next_retry = self.clock() + self.gap

    def _settled_window(self, median: float) -> None:
        before = self.best.get(self.current, math.inf)
        self.median[self.current] = median
        self.best[self.current] = min(before, median)
        others = self.load() if self.load is not None else None
        busy = None if others is None else others >= self.busy_cores
        became_busy = bool(busy) and not self.was_busy
        became_quiet = busy is False and bool(self.was_busy)
        if busy is not None:
            self.was_busy = busy
        if median > self.jump * before or became_busy:
            self._start_trial(up=False, why=f"other load {others:.1f} cores" if became_busy else "slower")
        elif became_quiet:
            self._start_trial(up=True, why="load gone")
        elif self.clock() >= self.next_retry or (self.load is None and len(self.history) == 1):
            # (with no load signal, the first window is followed by a trial at once: the machine may be busy)
            if not self._start_trial(up=self.current < self.top, why="periodic"):
                self.next_retry = math.inf  # a ladder of one count: nothing to try, ever

    def _start_trial(self, up: bool, why: str) -> bool:
        """Move to the neighbouring count for one window; False if there is none that way."""
        target = self._neighbour(up)
        if target is None:
            return False
        self.trial_from = self.current
        self._apply(target, f"trial ({why})")
        return True


# ---------------------------------------------------------------------------- generation's policy

SMALL_MODEL = 20_000_000  # parameters; below this, one CPU thread generates at least as fast as several


def choose_threads(requested: int, n_params: int, compiled: bool) -> ThreadGovernor | None:
    """Threads for generating on the CPU: ``requested`` > 0 is exactly that many (returns None);
    0 = auto: a governor over the decode steps that starts at 1 thread for a small model (unless
    $OMP_NUM_THREADS says otherwise), else at torch's default, and moves with the machine's load.

    A small model's eager decode step is a chain of tiny matmuls that lose more to thread
    hand-offs than they gain. A compiled decode step keeps torch's default and no governor: its
    fused loops are built for a fixed thread count, and they do use every core.
    """
    import torch

    if requested > 0:
        torch.set_num_threads(requested)
        return None
    top = torch.get_num_threads()
    if compiled or top == 1:
        return None
    small = n_params < SMALL_MODEL and "OMP_NUM_THREADS" not in os.environ
    return ThreadGovernor(top, start=1 if small else top, load=OtherLoad().cores)


def thread_moves(governor: ThreadGovernor | None) -> str:
    """'; threads 1 -> 2 at 3.1 s (trial (load gone)), ...': what the governor did, if anything."""
    if governor is None or len(governor.history) < 2:
        return ""
    moves = [f"{threads} at {at:.1f} s ({why})" for at, threads, why in governor.history[1:]]
    return f"; threads {governor.history[0][1]} -> " + ", ".join(moves)


def thread_note(governor: ThreadGovernor | None) -> str:
    """'2 threads', or '1 thread at first, up to 2: governed' while a governor decides."""
    import torch

    n = torch.get_num_threads()
    note = f"{n} thread{'s' if n > 1 else ''}"
    return note if governor is None else f"{note} at first, up to {governor.top}: governed"
