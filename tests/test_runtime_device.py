"""runtime/device.py: where to run and in what precision, one rule each; GPUs are faked where needed."""

from __future__ import annotations

import pytest
import torch

from runtime.device import (DTYPES, autocast, cuda_has_native_bf16, dtype_name, resolve_device, resolve_dtype,
                            resolve_muon_dtype, use_cuda_device)
from runtime.errors import DeviceError


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """torch.cuda present (four GPUs), with a compute capability the test chooses."""
    capability = {"value": (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    return capability


def test_resolve_device_on_a_cpu_only_machine(no_gpu) -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    assert resolve_device("auto", local_rank=3) == "cpu"


@pytest.mark.parametrize("name, flag", [("cuda", "cuda"), ("cuda:1", "cuda:1"), ("mps", "mps")])
def test_asking_for_an_absent_device_is_one_line(no_gpu, name: str, flag: str) -> None:
    with pytest.raises(DeviceError) as e:
        resolve_device(name)
    msg = str(e.value)
    assert msg.startswith(f"--device={flag}") and "use --device=cpu (or auto)" in msg and "\n" not in msg


def test_resolve_device_picks_this_processes_gpu(fake_cuda) -> None:
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("auto", local_rank=3) == "cuda:3"  # torchrun: one GPU per local rank
    assert resolve_device("cuda", local_rank=2) == "cuda:2"
    assert resolve_device("cuda:1", local_rank=2) == "cuda:1"  # an explicit index is kept
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match="cuda:4.*has 4 CUDA GPU"):  # indices are 0..3
        resolve_device("cuda:4")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", "cpu ", ""])
def test_unknown_device_names_are_refused_before_torch_sees_them(name: str) -> None:
    with pytest.raises(DeviceError, match="unknown device.*auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_resolve_device_prefers_mps_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps" and resolve_device("mps") == "mps"


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "mps"])
def test_explicit_dtypes_are_taken_as_given(device: str) -> None:
    def probe() -> bool:
        raise AssertionError("an explicit dtype needs no probe")

    assert resolve_dtype("float32", device, probe) is torch.float32
    assert resolve_dtype("bfloat16", device, probe) is torch.bfloat16
    assert resolve_dtype("float16", device, probe) is torch.float16


def test_unknown_dtype_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="unknown dtype 'float8'; use one of auto, float32, bfloat16, float16"):
        resolve_dtype("float8", "cpu")
    assert DTYPES == ("auto", "float32", "bfloat16", "float16")


def test_auto_on_cpu_is_float32_unless_the_probe_says_bf16_pays() -> None:
    calls = []

    def probe(answer: bool):
        return lambda: calls.append(answer) or answer

    assert resolve_dtype("auto", "cpu") is torch.float32  # no probe: never guess bf16
    assert resolve_dtype("auto", "cpu", probe(False)) is torch.float32
    assert resolve_dtype("auto", "cpu", probe(True)) is torch.bfloat16
    assert calls == [False, True]
    assert resolve_dtype("auto", "mps", probe(True)) is torch.float32  # the CPU probe is for CPUs only
    assert calls == [False, True]


def test_muon_orthogonalises_in_bf16_on_gpus_and_only_on_cpus_that_measured_it_faster(fake_cuda) -> None:
    calls = []

    def probe(answer: bool):
        return lambda: calls.append(answer) or answer

    assert resolve_muon_dtype("cpu") == "float32"  # nothing measured: never guess bf16
    assert resolve_muon_dtype("cpu", probe(False)) == "float32"  # AVX2 / AVX-512 without BF16
    assert resolve_muon_dtype("cpu", probe(True)) == "bfloat16"  # AVX-512 BF16, AMX
    assert resolve_muon_dtype("cuda:0", probe(False)) == "bfloat16"  # as torch.optim.Muon: tensor cores
    assert resolve_muon_dtype("mps", probe(True)) == "float32"
    assert calls == [False, True]  # the CPU probe is asked on CPUs only


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 0), (8, 9), (9, 0)])
def test_muon_dtype_follows_native_bf16_on_gpus(fake_cuda, capability) -> None:
    """V100 (7.0) and T4 (7.5) only emulate bf16: Muon orthogonalises in fp32 there, as the compute
    dtype avoids bf16 there too."""
    fake_cuda["value"] = capability
    native = capability[0] >= 8
    assert resolve_muon_dtype("cuda:0", lambda: pytest.fail("no CPU probe on a GPU")) == (
        "bfloat16" if native else "float32")
    assert resolve_muon_dtype(torch.device("cuda", 1)) == ("bfloat16" if native else "float32")
    assert (resolve_muon_dtype("cuda:0") == "bfloat16") is (resolve_dtype("auto", "cuda:0") is torch.bfloat16)


@pytest.mark.parametrize("capability, dtype", [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
                                               ((7, 0), torch.float16), ((7, 5), torch.float16)])
def test_auto_on_cuda_follows_native_bf16(fake_cuda, capability, dtype) -> None:
    fake_cuda["value"] = capability
    assert cuda_has_native_bf16("cuda:0") is (capability[0] >= 8)
    assert resolve_dtype("auto", "cuda:0", lambda: pytest.fail("no CPU probe on a GPU")) is dtype
    assert resolve_dtype("auto", torch.device("cuda", 0)) is dtype


def test_emulated_bf16_does_not_count(fake_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """A T4 (7.5): torch.cuda.is_bf16_supported() says True (it counts emulation), but fp16 + GradScaler
    is the fast path there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    fake_cuda["value"] = (7, 5)
    assert resolve_dtype("auto", "cuda:0") is torch.float16


def test_a_fixed_gpu_under_torchrun_is_refused(fake_cuda) -> None:
    """--device=cuda:1 in every process of a torchrun job would put them all on GPU 1."""
    assert resolve_device("cuda", local_rank=3, distributed=True) == "cuda:3"
    assert resolve_device("auto", local_rank=2, distributed=True) == "cuda:2"
    with pytest.raises(DeviceError) as e:
        resolve_device("cuda:1", local_rank=2, distributed=True)
    assert str(e.value) == ("--device=cuda:1 under torchrun would put every process on GPU 1; use --device=cuda "
                            "(each process takes its LOCAL_RANK's GPU), and CUDA_VISIBLE_DEVICES to pick GPUs")


@pytest.mark.parametrize("name, rank", [("cuda:4", 0), ("cuda", 4)])  # cuda:x: refused as a name, above
def test_a_gpu_this_machine_lacks_is_refused(fake_cuda, name: str, rank: int) -> None:
    with pytest.raises(DeviceError, match=f"--device={name}: this machine has 4 CUDA GPU"):
        resolve_device(name, local_rank=rank)


def test_using_a_gpu_turns_on_tf32_the_current_way(fake_cuda, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        use_cuda_device("cuda:2")
        assert chosen == ["cuda:2"] and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


def test_autocast_float32_is_a_no_op() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")
        out = a @ b
    assert out.dtype == torch.float32 and torch.equal(out, a @ b)


def test_autocast_bfloat16_runs_matmuls_in_bf16_and_keeps_weights_fp32() -> None:
    layer = torch.nn.Linear(8, 3)
    x = torch.randn(4, 8)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        out = layer(x)
        mm = x @ layer.weight.t()
    assert out.dtype == torch.bfloat16 and mm.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32
    torch.testing.assert_close(out.float(), layer(x), rtol=2e-2, atol=2e-2)
    assert not torch.is_autocast_enabled("cpu")  # left on exit


def test_dtype_name_is_how_options_spell_it() -> None:
    for name in ("float32", "bfloat16", "float16"):
        assert dtype_name(getattr(torch, name)) == name
        assert resolve_dtype(dtype_name(getattr(torch, name)), "cpu") is getattr(torch, name)
