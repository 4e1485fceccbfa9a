"""How much memory this machine can give a run, and refusing what cannot fit before allocating it.

A config that asks for more memory than the machine has should fail in a second with one line,
not after a minute of swapping followed by a MemoryError traceback (or the kernel's OOM killer).
Callers estimate what they need (``model.config.GPTConfig.param_bytes``,
``training.memory.training_bytes``, ``model.generate.generation_bytes``); ``ensure_fits``
compares that with ``available_bytes`` and raises DeviceError, saying what to change.

Estimates are lower bounds (what certainly has to be allocated), so a refusal is never wrong;
a config that passes may still be too big, but never by orders of magnitude.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.errors import DeviceError

MEMORY_ENV = "QUILLGPT_MEMORY_LIMIT"  # bytes; caps what is considered available (tests, shared machines)


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages, in bytes."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this OS (macOS lacks SC_AVPHYS_PAGES)
        return None


def _cgroup_available() -> int | None:
    """Room left under a container's cgroup v2 memory limit, if there is one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text(encoding="utf-8").strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text(encoding="utf-8").strip()))
    except (OSError, ValueError):
        return None


def available_bytes(device: str = "cpu") -> int | None:
    """Memory a new allocation on ``device`` can still get, in bytes; None when unknown.

    CUDA: the GPU's free memory (torch.cuda.mem_get_info) plus what torch's caching allocator
    holds but no tensor uses (reserved - allocated): the driver counts that as taken, yet a new
    tensor gets it first, so mid-run (an eval sample after training steps) leaving it out would
    refuse requests that fit. Elsewhere (CPU, and MPS, which shares system memory): the system's
    available memory, capped by a cgroup limit. $QUILLGPT_MEMORY_LIMIT caps the answer.
    """
    found: list[int] = []
    if str(device).startswith("cuda"):
        import torch

        dev = torch.device(device)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        found.append(torch.cuda.mem_get_info(dev)[0] + max(0, cached))
    else:
        found += [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    cap = os.environ.get(MEMORY_ENV)
    if cap:
        try:
            found.append(int(float(cap)))
        except ValueError:
            raise DeviceError(f"${MEMORY_ENV}={cap!r} is not a number of bytes; unset it or give e.g. 8e9") from None
    return min(found) if found else None


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KB'; decimal units, as disks and most tools print them."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop always returns


def ensure_fits(need: int, device: str, what: str, fix: str) -> None:
    """DeviceError if ``need`` bytes (a lower bound) exceed what ``device`` has available.

    ``what`` says what needs the memory ("this model and batch"), ``fix`` what to change.
    """
    have = available_bytes(device)
    if have is not None and need > have:
        where = "GPU" if str(device).startswith("cuda") else "machine"
        raise DeviceError(f"{what} needs at least {format_bytes(need)} of memory but this {where} has "
                          f"{format_bytes(have)} available; {fix}")
