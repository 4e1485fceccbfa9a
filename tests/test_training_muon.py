"""training/muon.py against torch.optim.Muon: the same update in bf16, a more exact one in fp32."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from training.muon import Muon, lr_scale, newton_schulz

# wide, tall (transposed inside), square; the repeats are orthogonalised as stacks, as a model's layers are
SHAPES = [(32, 96), (96, 32), (48, 48), (32, 96), (96, 32), (32, 96)]


def params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_() for s in SHAPES]


def run(opt_cls, ps: list[torch.Tensor], steps: int, **kw) -> list[torch.Tensor]:
    """``steps`` updates with the same random gradients for every optimizer under test."""
    opt = opt_cls(ps, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()
    return [p.detach().clone() for p in ps]


@pytest.mark.parametrize("nesterov", [True, False])
def test_bf16_matches_torch_muon_bit_for_bit(nesterov: bool) -> None:
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    ours = run(Muon, params(), 5, ortho_dtype="bfloat16", **kw)
    theirs = run(torch.optim.Muon, params(), 5, **kw)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_fp32_is_close_to_bf16_and_closer_to_the_exact_iteration() -> None:
    """The Newton-Schulz quintic is itself approximate, so the reference is the same iteration in fp64."""
    g = torch.Generator().manual_seed(2)
    for shape in SHAPES:
        m = torch.randn(*shape, generator=g)
        exact = newton_schulz(m, torch.float64)
        fp32, bf16 = newton_schulz(m, torch.float32), newton_schulz(m, torch.bfloat16)
        assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
        err32 = (fp32.double() - exact).norm() / exact.norm()
        err16 = (bf16.double() - exact).norm() / exact.norm()
        assert err16 < 0.05  # bf16 has an 8-bit mantissa: ~1% per element after five steps
        assert err32 < 1e-5 and err32 < err16 / 100
        # and it does orthogonalise: singular values pushed into the quintic's band around 1
        s = torch.linalg.svdvals(exact)
        assert s.min() > 0.5 and s.max() < 1.3


def test_fp32_training_trajectory_stays_close_to_torchs() -> None:
    ours = run(Muon, params(), 5, lr=0.02, ortho_dtype="float32")
    theirs = run(torch.optim.Muon, params(), 5, lr=0.02)
    exact = run(Muon, [p.double().detach().requires_grad_() for p in params()], 5, lr=0.02, ortho_dtype="float64")
    for a, b, e in zip(ours, theirs, exact):
        assert (a.double() - e).abs().max() < (b.double() - e).abs().max()  # fp32 is nearer the exact path
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # within bf16 rounding of lr-sized steps


def test_lr_is_scaled_by_the_shape_as_torch_does() -> None:
    assert lr_scale(torch.Size([96, 32])) == pytest.approx(math.sqrt(3))
    assert lr_scale(torch.Size([32, 96])) == 1.0 and lr_scale(torch.Size([48, 48])) == 1.0
    p = torch.zeros(96, 32, requires_grad=True)
    p.grad = torch.randn(96, 32)
    Muon([p], lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, ortho_dtype="float64").step()
    # the update is lr * sqrt(3) * an (almost) orthogonal matrix: RMS per element ~ that / sqrt(rows)
    assert p.detach().pow(2).mean().sqrt().item() == pytest.approx(0.1 * math.sqrt(3) / math.sqrt(96), rel=0.3)


def test_state_dict_resumes_exactly_and_loads_torch_muon_states() -> None:
    straight = run(Muon, params(), 4, lr=0.02, ortho_dtype="float32")
    ps = params()
    first = Muon(ps, lr=0.02, ortho_dtype="float32")
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        if step == 2:  # save, rebuild, load: the rest of the run must not notice
            saved = first.state_dict()
            first = Muon(ps, lr=0.5, ortho_dtype="bfloat16")
            first.load_state_dict(saved)
            assert first.param_groups[0]["ortho_dtype"] == "float32" and first.param_groups[0]["lr"] == 0.02
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        first.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(straight, ps))
    # a checkpoint written by torch.optim.Muon: same buffers, and it orthogonalised in bf16
    torch_opt = torch.optim.Muon(params(), lr=0.02)
    for p in torch_opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    torch_opt.step()
    ours = Muon(params(), lr=0.02, ortho_dtype="float32")
    ours.load_state_dict(torch_opt.state_dict())
    assert ours.param_groups[0]["ortho_dtype"] == "bfloat16"
    assert all(torch.equal(ours.state[p]["momentum_buffer"], torch.ones_like(p) * 0.05)
               for p in ours.param_groups[0]["params"])


class OpCounter(TorchDispatchMode):
    """Counts every aten op that runs while it is active, by name (aten.zeros_like, aten.lerp_, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_momentum_buffers_are_allocated_once_not_at_every_step() -> None:
    ps = params()
    opt = Muon(ps, lr=0.02, ortho_dtype="float32")
    g = torch.Generator().manual_seed(1)
    counts, buffers = [], []
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        with OpCounter() as counter:
            opt.step()
        counts.append(counter.ops)
        buffers.append([(id(opt.state[p]["momentum_buffer"]), opt.state[p]["momentum_buffer"].data_ptr())
                        for p in ps])
    zero_fills = ("zeros_like", "zeros", "new_zeros", "empty_like", "zero_", "fill_")
    assert sum(counts[0][op] for op in zero_fills) == len(ps)  # step 1: one buffer per matrix
    assert all(sum(c[op] for op in zero_fills) == 0 for c in counts[1:])  # later steps: none
    assert buffers[0] == buffers[1] == buffers[2]  # the same tensors, updated in place
    assert counts[1] == counts[2]  # every later step runs the same ops


def test_refuses_what_muon_cannot_do() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(4, requires_grad=True)])
    with pytest.raises(ValueError, match="ortho_dtype"):
        Muon([torch.zeros(4, 4, requires_grad=True)], ortho_dtype="float16")
