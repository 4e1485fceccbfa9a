"""Where to run and in what precision: one rule each, for train.py and sample.py.

torch is imported inside the functions, so programs that check their options before
importing torch stay quick to answer ``--help`` and to refuse bad input.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Callable

from runtime.errors import DeviceError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(name: str) -> None:
    """DeviceError unless ``name`` is one of the devices quillgpt runs on (auto, cpu, cuda, cuda:N, mps)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise DeviceError(f"unknown device {name!r}; use one of {DEVICE_NAMES}")


def resolve_device(name: str, local_rank: int = 0, distributed: bool = False) -> str:
    """auto -> cuda (this process's GPU under torchrun), else mps, else cpu; refuse an absent device.

    ``distributed``: one of several torchrun processes, which each take GPU ``local_rank``; a fixed
    ``cuda:N`` would put them all on one GPU, so it is refused.
    """
    import torch

    check_device_name(name)
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return f"cuda:{local_rank}"
        return "mps" if mps else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device={name}, but this torch build sees no CUDA GPU; use --device=cpu (or auto)")
    if name == "mps" and not mps:
        raise DeviceError("--device=mps, but MPS is not available here; use --device=cpu (or auto)")
    if name.startswith("cuda:") and distributed:
        raise DeviceError(f"--device={name} under torchrun would put every process on GPU {name[5:]}; use "
                          "--device=cuda (each process takes its LOCAL_RANK's GPU), "
                          "and CUDA_VISIBLE_DEVICES to pick GPUs")
    if name.startswith("cuda"):
        index = local_rank if name == "cuda" else int(name[5:]) if name[5:].isdigit() else -1
        if not 0 <= index < torch.cuda.device_count():
            raise DeviceError(f"--device={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
                              + (f" and this is local rank {local_rank}" if name == "cuda" else "")
                              + "; use --device=cuda or cuda:0 .. cuda:N-1")
        return f"cuda:{index}"
    return name


def use_cuda_device(device: str) -> None:
    """Make ``device`` (cuda:N) this process's GPU, with TF32 for fp32 matmuls (~free speed on Ampere+).

    ``set_float32_matmul_precision("high")`` is the current switch; the ``allow_tf32`` flags are deprecated.
    """
    import torch

    torch.cuda.set_device(device)
    torch.set_float32_matmul_precision("high")


def cuda_has_native_bf16(device: "torch.device | str") -> bool:
    """True on GPUs that compute in bf16 (Ampere, compute capability 8.0, and later).

    ``torch.cuda.is_bf16_supported()`` also counts emulation, which makes V100 and T4 run a
    slow emulated bf16 instead of fp16 with a GradScaler.
    """
    import torch

    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def resolve_dtype(name: str, device: "torch.device | str", cpu_bf16_pays: Callable[[], bool] | None = None,
                  ) -> "torch.dtype":
    """The compute dtype: the one rule for training and sampling.

    auto: CUDA -> bfloat16 where the GPU has it natively, else float16 (training adds a
    GradScaler); MPS -> float32; CPU -> bfloat16 autocast only if ``cpu_bf16_pays()`` measures
    it faster on this CPU, else float32. bf16 is far slower than fp32 on CPUs with AVX2 only or with AVX-512 but
    no BF16, although oneDNN reports "bf16 supported" on both (docs/BENCHMARKS.md), so the
    callable must measure (training: runtime/cpu.py's matmul probe, then training/precision.py).
    """
    import torch

    device = torch.device(device)
    if name != "auto":
        if name not in DTYPES:
            raise DeviceError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
    if device.type == "cpu" and cpu_bf16_pays is not None and cpu_bf16_pays():
        return torch.bfloat16
    return torch.float32


def resolve_muon_dtype(device: "torch.device | str", cpu_bf16_faster: Callable[[], bool] | None = None) -> str:
    """The dtype Muon orthogonalises in: the one rule, beside ``resolve_dtype``.

    bfloat16 only where it is native, as for the compute dtype: CUDA -> bfloat16 on GPUs with
    native bf16 (``cuda_has_native_bf16``: tensor cores; what torch.optim.Muon always uses), float32
    on older ones (V100, T4), where bf16 is emulated; MPS -> float32; CPU -> bfloat16 only if
    ``cpu_bf16_faster()`` measured bf16 matmuls faster than fp32 on this CPU (runtime/cpu.py), else
    float32: emulated bf16 makes Muon's step several times slower.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if cuda_has_native_bf16(device) else "float32"
    if device.type == "cpu" and cpu_bf16_faster is not None and cpu_bf16_faster():
        return "bfloat16"
    return "float32"


def autocast(device: "torch.device | str", dtype: "torch.dtype") -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` (a no-op context for float32): weights stay fp32, matmuls run in dtype."""
    import torch

    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, as options and config files spell it."""
    return str(dtype).removeprefix("torch.")
