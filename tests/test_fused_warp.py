"""Tests for the fused geometric warp and the cheap no-grad path of ``apply_stage``: the matrix builders of
``madao_pl.augment.ops`` against their ops, the elementwise sampling grid against ``F.affine_grid``, the fused
stage against the per-op stage (values and every gradient), no-grad against grad values, one host sync."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as nnf
from torch.overrides import TorchFunctionMode

import madao_pl.augment.stage as stage_module
from madao_pl.augment.ops import OPERATIONS, WARP_MATRICES, _affine_grid, affine_warp, get_operation
from madao_pl.augment.stage import apply_stage

N_OPS = len(OPERATIONS)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draws(batch: int, seed: int, size: tuple[int, int] = (9, 13)) -> dict[str, torch.Tensor]:
    """A mixed stage: every op, relaxed and zero weights, magnitudes, signs, a scale near 1."""
    weight = torch.rand(batch, generator=gen(seed + 1))
    weight[::4] = 0.0
    weight[1::5] = 1.0
    return {
        "images": torch.rand(batch, 3, *size, generator=gen(seed)),
        "op_index": torch.arange(batch) % N_OPS,
        "apply_weight": weight,
        "magnitude": torch.rand(batch, generator=gen(seed + 2)),
        "sign": torch.where(torch.rand(batch, generator=gen(seed + 3)) < 0.5, 1.0, -1.0),
        "scale": 1 + 0.1 * torch.rand(batch, generator=gen(seed + 4)),
    }


def stage_args(d: dict[str, torch.Tensor], leaves: dict[str, torch.Tensor] | None = None) -> list:
    """apply_stage's positional arguments from ``draws``, with ``leaves`` in place of the drawn values."""
    d = {**d, **(leaves or {})}
    return [d[k] for k in ("images", "op_index", "apply_weight", "magnitude", "sign", "scale")]


def with_grad(d: dict[str, torch.Tensor], grad: bool = True) -> dict[str, torch.Tensor]:
    """Copies of the differentiable inputs of ``draws`` as leaves (requiring grad when ``grad``)."""
    return {k: d[k].clone().requires_grad_(grad) for k in ("images", "apply_weight", "magnitude", "scale")}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.fixture
def per_op(monkeypatch):
    """Run apply_stage without the fusion: every op replaced by a wrapper (a function that is not the
    table's own is never fused), calling the same op."""

    def wrap(op):
        return dataclasses.replace(op, fn=lambda x, m, s, fn=op.fn: fn(x, m, s))

    def run(*args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(stage_module, "OPERATIONS", tuple(wrap(op) for op in OPERATIONS))
            return apply_stage(*args, **kwargs)

    return run


def test_registry_names_the_five_geometric_ops():
    assert tuple(WARP_MATRICES) == GEOMETRIC
    assert [op.name for op in OPERATIONS[:5]] == list(GEOMETRIC)


@pytest.mark.parametrize("name", GEOMETRIC)
def test_each_matrix_builder_warped_is_its_op(name):
    x = torch.rand(5, 3, 9, 13, generator=gen(1)).requires_grad_(True)
    m = torch.rand(5, generator=gen(2)).requires_grad_(True)
    s = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    w = torch.randn(5, 3, 9, 13, generator=gen(3))
    expected = get_operation(name).fn(x, m, s)
    got = affine_warp(x, WARP_MATRICES[name](m, s, 9, 13))
    assert WARP_MATRICES[name](m, s, 9, 13).shape == (5, 2, 3)
    assert bitwise_equal(got, expected)
    for a, b in zip(
        torch.autograd.grad((expected * w).sum(), (x, m)),
        torch.autograd.grad((got * w).sum(), (x, m)),
        strict=True,
    ):
        assert bitwise_equal(a, b)


def test_affine_warp_rejects_bad_matrices():
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        affine_warp(torch.rand(2, 3, 4, 4), torch.zeros(3, 2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_elementwise_grid_is_affine_grid_bit_for_bit(dtype):
    """The no-grad warp builds the sampling grid without a batched product: the same values as
    ``affine_grid`` to the last bit or two (bit for bit on AVX2; an AVX512 CPU fuses the batched product's
    multiply-adds, so there the two round differently by an ulp)."""
    eps = torch.finfo(dtype).eps
    for height, width in ((32, 32), (9, 13), (1, 5), (3, 1), (64, 48)):
        for batch in (1, 7):
            theta = torch.randn(batch, 2, 3, generator=gen(height * width + batch), dtype=dtype)
            expected = nnf.affine_grid(theta, [batch, 3, height, width], align_corners=False)
            got = _affine_grid(theta, height, width)
            torch.testing.assert_close(got, expected, rtol=0, atol=8 * eps * float(theta.abs().sum(-1).max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sharpness_equals_its_contiguous_convolution(dtype):
    """Sharpness smooths in channels-last layout (float32 on CPU): the same bits as the plain convolution."""
    x = torch.rand(6, 3, 17, 12, generator=gen(5), dtype=dtype).requires_grad_(True)
    m = torch.rand(6, generator=gen(6), dtype=dtype).requires_grad_(True)
    s = torch.tensor([1.0, -1.0] * 3, dtype=dtype)
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=dtype) / 13.0
    delta = (1.0 - (1.0 + m * s)).view(-1, 1, 1, 1) * (
        nnf.conv2d(x, kernel.expand(3, 1, 3, 3), groups=3) - x[:, :, 1:-1, 1:-1]
    )
    expected = x + nnf.pad(delta, (1, 1, 1, 1))
    expected = torch.where(expected < 0, 0.0, torch.where(expected > 1, 1.0, expected))
    got = get_operation("Sharpness").fn(x, m, s)
    assert torch.equal(got, expected)
    w = torch.randn(x.shape, generator=gen(7), dtype=dtype)
    for a, b in zip(
        torch.autograd.grad((got * w).sum(), (x, m)),
        torch.autograd.grad((expected * w).sum(), (x, m)),
        strict=True,
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("centered", [False, True])
def test_fused_stage_equals_per_op_stage_with_every_gradient(per_op, centered):
    d = draws(42, seed=10)
    w = torch.randn(d["images"].shape, generator=gen(11))
    results = []
    for run in (apply_stage, per_op):
        leaves = with_grad(d)
        out = run(*stage_args(d, leaves), centered)
        grads = torch.autograd.grad((out * w).sum(), list(leaves.values()))
        results.append((out, grads))
    (fused, fused_grads), (plain, plain_grads) = results
    assert bitwise_equal(fused, plain)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        assert bitwise_equal(a, b)


@pytest.mark.parametrize("hard", [False, True])
def test_fused_stage_equals_per_op_stage_without_grad(per_op, hard, monkeypatch):
    d = draws(64, seed=20, size=(16, 16))
    if hard:
        d["apply_weight"] = (d["apply_weight"] > 0.3).float()
    args = (d["images"], d["op_index"], d["apply_weight"], d["magnitude"], d["sign"])
    warps = []
    monkeypatch.setattr(stage_module, "affine_warp", lambda x, m: warps.append(len(x)) or affine_warp(x, m))
    with torch.no_grad():
        fused = apply_stage(*args)
        plain = per_op(*args)
    assert bitwise_equal(fused, plain)
    # One warp for every applied sample of the five geometric ops, none in the per-op run.
    geometric = (d["op_index"] < 5) & (d["apply_weight"] != 0)
    assert warps == [int(geometric.sum())]


def _same_up_to_the_grid(cheap: torch.Tensor, graph: torch.Tensor, name: str) -> None:
    """Equal, bit for bit where the two sampling grids are (AVX2); an ulp of the grid apart (AVX512, see
    above) moves a bilinear sample by at most about 1e-6 of the image range."""
    if not torch.equal(cheap, graph.detach()):
        torch.testing.assert_close(cheap, graph.detach(), rtol=0, atol=1e-5, msg=name)


def test_no_grad_values_equal_grad_values():
    """The cheap path (Tensor.clamp, no straight-through terms, elementwise grid) changes no value beyond
    the grid's last bit."""
    d = draws(42, seed=30)
    for op in OPERATIONS:
        x = d["images"].clone().requires_grad_(True)
        m = d["magnitude"].clone().requires_grad_(True)
        with torch.no_grad():
            cheap = op.fn(d["images"], d["magnitude"], d["sign"])
        _same_up_to_the_grid(cheap, op.fn(x, m, d["sign"]), op.name)
    graph = apply_stage(*stage_args(d, with_grad(d)))
    with torch.no_grad():
        cheap = apply_stage(*stage_args(d))
        unit = apply_stage(*stage_args(d, {"scale": torch.ones(42)}))
        plain = apply_stage(*stage_args(d)[:5])
    _same_up_to_the_grid(cheap, graph, "apply_stage")
    assert torch.equal(unit, plain)  # a scale of exactly 1 is skipped: the same values


def test_a_stage_that_applies_nothing_copies_nothing():
    d = draws(8, seed=40)
    out = apply_stage(d["images"], d["op_index"], torch.zeros(8), d["magnitude"], d["sign"])
    assert out is d["images"]


class _SyncCounter(TorchFunctionMode):
    """Records the tensor methods that read values on the host (a sync on an accelerator)."""

    SYNCS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("grad", [False, True])
def test_one_host_sync_per_stage(grad):
    d = draws(42, seed=50)
    with _SyncCounter() as counter:
        apply_stage(*stage_args(d, with_grad(d, grad)))
    assert counter.calls == ["tolist"]


def test_bad_operation_indices_are_rejected():
    d = draws(6, seed=60)
    for bad, message in ((-1, "negative"), (N_OPS, f"values >= {N_OPS}")):
        op_index = d["op_index"].clone()
        op_index[2] = bad
        with pytest.raises(ValueError, match=message):
            apply_stage(d["images"], op_index, d["apply_weight"].clamp_min(0.5), d["magnitude"], d["sign"])
