"""This process's place in a torchrun job, and everything the ranks must do together.

Collectives come in two kinds. Host-side decisions (stop now? did rank 0 fail? does bf16
pay?) go over a gloo group on CPU tensors, so asking them never waits for the GPU. Tensors
that live on the device (gradients, the logged loss) go over the main group (NCCL on CUDA).

Data parallel (DDP) keeps a whole model per rank; sharded data parallel (``--fsdp``, PyTorch's
FSDP2 ``fully_shard``) splits every block's parameters, gradients and optimizer moments across
ranks and gathers a block's weights only while it computes. Checkpoints look the same either
way: the full state is gathered to rank 0, which writes one ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from data.prepare import PrepareOptions, ensure_prepared, prepare_exclusively
from training.control import TrainingDiverged

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    control: Any = None  # the gloo group for host-side flags (None: the default group is gloo already)

    @property
    def ddp(self) -> bool:
        """True under torchrun with two or more processes (DDP or FSDP)."""
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE; joins no process group (see init_process_group)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))


def init_process_group(dist: Dist, device: str) -> None:
    """Join the job's process group: NCCL bound to this rank's GPU on CUDA, else gloo.

    ``device_id`` binds the NCCL communicator to this GPU at once (no guessing which device a
    barrier uses). With NCCL, a second, gloo group carries the host-side flags.
    """
    if not dist.ddp:
        return
    import torch.distributed as tdist

    if not tdist.is_initialized():
        if device.startswith("cuda"):
            tdist.init_process_group(backend="nccl", device_id=torch.device(device))
        else:
            tdist.init_process_group(backend="gloo")
    if tdist.get_backend() != "gloo":
        dist.control = tdist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=30))


def max_across_ranks(dist: Dist, values: list[float]) -> list[float]:
    """The largest of each value over the ranks (host-side, over gloo: no GPU sync), the same on every rank."""
    if not dist.ddp:
        return [float(v) for v in values]
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=dist.control)
    return t.tolist()


def any_rank(dist: Dist, *flags: bool) -> list[bool]:
    """OR each host-side flag across ranks, so every process takes the same branch."""
    return [v > 0 for v in max_across_ranks(dist, [float(f) for f in flags])]


def mean_across_ranks(dist: Dist, values: list[float]) -> list[float]:
    """The mean of each value over the ranks (host-side), so every rank holds the same numbers."""
    if not dist.ddp:
        return list(values)
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t, group=dist.control)
    return (t / dist.world_size).tolist()


class RankFailed(RuntimeError):
    """Another rank raised while this one waited for it; that rank's output has the error."""


def on_master(dist: Dist, what: str, work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 only (logging, writing files); if it raises, every rank raises.

    Without this, an exception on rank 0 (a full disk during a save, say) would leave the other
    ranks waiting for it in their next collective until NCCL's timeout killed the job.
    """
    error: Exception | None = None
    result = None
    if dist.master:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks learn of it
            error = e
    failed, diverged = any_rank(dist, error is not None, isinstance(error, TrainingDiverged))
    if error is not None:
        raise error
    if diverged:
        raise TrainingDiverged(f"rank 0 stopped the run during {what}")
    if failed:
        raise RankFailed(f"rank 0 failed during {what}; its error is in rank 0's output")
    return result


# ---------------------------------------------------------------------------- data


def prepare_data(prep: PrepareOptions, dist: Dist, poll: float = 2.0,
                 say: Callable[[str], None] = print) -> Path:
    """The prepared data folder, built by exactly one process, before any process group exists.

    Preparing FineWeb-Edu takes hours, far past NCCL's 10-minute timeout for ranks waiting in a
    barrier; so nothing here is a collective. Every process calls ``prepare_exclusively``: one
    builds (per machine, or once when data_dir is shared), the others poll for the finished folder.
    """
    if not dist.ddp:
        return ensure_prepared(prep)
    return prepare_exclusively(prep, poll=poll, on_wait=lambda msg: say(f"rank {dist.rank}: {msg}"))


# ---------------------------------------------------------------------------- wrapping


def ddp_kwargs(device_type: str, local_rank: int) -> dict[str, Any]:
    """DistributedDataParallel's options.

    broadcast_buffers=False: the model's buffers (position ids, rotary tables) are derived, equal on
    every rank, so re-broadcasting them each forward is wasted traffic. gradient_as_bucket_view:
    gradients live in DDP's all-reduce buckets, saving one copy (and its memory) per step.
    """
    return {"device_ids": [local_rank] if device_type == "cuda" else None,
            "broadcast_buffers": False, "gradient_as_bucket_view": True}


def shard_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """FSDP2: shard every transformer block, then the root (embeddings, final norm, head), in place.

    Mixed precision stays the one rule (autocast); with bf16, the gathered weights are also cast
    to bf16 (half the all-gather traffic) while gradients are reduced and kept in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None,
                                  reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gradient_sync(model: torch.nn.Module, raw_model: torch.nn.Module, dist: Dist, fsdp: bool,
                  sync: bool) -> contextlib.AbstractContextManager:
    """A context for one micro-step's backward: gradients are reduced across ranks only when ``sync``
    (the last micro-step); earlier ones accumulate locally."""
    if fsdp:
        raw_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if dist.ddp and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def sharded_grad_scaler() -> type:
    """The fp16 GradScaler for FSDP: it all-reduces "found inf", so every rank skips the same steps."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    return ShardedGradScaler


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ over FSDP's sharded gradients returns a replicated DTensor: its plain value."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# ---------------------------------------------------------------------------- state


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module, dist: Dist, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on other ranks); collective under FSDP."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_options())
    return model.state_dict() if dist.master else {}


def full_optimizer_states(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], dist: Dist,
                          fsdp: bool) -> list[dict[str, Any]]:
    """Each optimizer's whole state on rank 0 (keyed by parameter name under FSDP); collective under FSDP."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return [get_optimizer_state_dict(model, o, options=_full_options()) for o in optimizers]
    return [o.state_dict() for o in optimizers] if dist.master else []


def load_optimizer_states(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                          states: list[dict[str, Any]], fsdp: bool) -> None:
    """Restore full optimizer states: each rank keeps its own shard under FSDP."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for o, sd in zip(optimizers, states):
            set_optimizer_state_dict(model, o, sd, options=StateDictOptions(full_state_dict=True))
        return
    for o, sd in zip(optimizers, states):
        o.load_state_dict(sd)


def gather_objects(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small, host-side), in rank order, on every rank."""
    if not dist.ddp:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(out, obj, group=dist.control)
    return out


def teardown(dist: Dist, barrier: bool = True) -> None:
    """Leave the process group; a barrier first (unless leaving on an error), so no rank tears gloo down
    under a slower one's last save."""
    if not dist.ddp or not torch.distributed.is_initialized():
        return
    if barrier:
        with contextlib.suppress(RuntimeError):
            torch.distributed.barrier(group=dist.control)
    torch.distributed.destroy_process_group()
