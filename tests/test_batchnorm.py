"""Tests of madao_pl.batchnorm: the closed-form forward-mode derivatives of train-mode BatchNorm's forward and
backward, against PyTorch's own (float64), and which calls they replace."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp

from madao_pl import batchnorm
from madao_pl.batchnorm import closed_form_batch_norm
from madao_pl.models import WideResNet, network_segments
from madao_pl.segmented import SegmentedProducts


def _derivatives(x, gamma, beta, cotangent, tangents):
    """Forward, its tangent, the backward of ``cotangent`` and that backward's tangent, of a BatchNorm
    followed by a non-linearity (so that the second derivatives are not trivial)."""

    def forward(x, gamma, beta):
        return torch.tanh(F.batch_norm(x, None, None, gamma, beta, True, 0.1, 1e-3))

    def backward(x, c, gamma, beta):
        return vjp(forward, x, gamma, beta)[1](c)

    tx, tc, tg, tb = tangents
    y, dy = jvp(forward, (x, gamma, beta), (tx, tg, tb))
    primals, tangents_out = jvp(backward, (x, cotangent, gamma, beta), (tx, tc, tg, tb))
    return (y, dy, *primals, *tangents_out)


@pytest.mark.parametrize("shape", [(6, 4, 5, 3), (7, 4)])
def test_closed_form_derivatives_equal_pytorch(shape):
    """Output, tangent, backward (input, weight, bias) and the backward's tangent: all within 1e-13."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
    gamma, beta = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(2))
    cotangent = torch.randn(shape, generator=g, dtype=torch.float64)
    tangents = (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    reference = _derivatives(x, gamma, beta, cotangent, tangents)
    with mock.patch.object(batchnorm._BatchNorm, "apply", wraps=batchnorm._BatchNorm.apply) as used:
        with closed_form_batch_norm():
            closed = _derivatives(x, gamma, beta, cotangent, tangents)
    assert used.call_count >= 2  # functorch may re-enter apply once per transform level
    for got, want in zip(closed, reference, strict=True):
        assert (got - want).abs().max() <= 1e-13 * want.abs().max()


def test_other_batch_norm_calls_are_left_alone():
    """Eval mode, running statistics and a BatchNorm without affine parameters keep PyTorch's own path."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    layers = [
        nn.BatchNorm2d(3).double().eval(),
        nn.BatchNorm2d(3).double(),
        nn.BatchNorm2d(3, affine=False).double(),
    ]
    expected = [layer(x) for layer in layers]
    for layer in layers[1:]:
        layer.reset_running_stats()
    with mock.patch.object(batchnorm._BatchNorm, "apply") as used, closed_form_batch_norm():
        got = [layer(x) for layer in layers]
    assert used.call_count == 0
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reverse_over_reverse_is_refused():
    """The closed-form backward has a forward-mode derivative only; a double backward says so."""
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    gamma, beta = torch.ones(3, dtype=torch.float64, requires_grad=True), torch.zeros(3, dtype=torch.float64)
    with closed_form_batch_norm():
        y = F.batch_norm(x, None, None, gamma, beta, True, 0.1, 1e-5)
        (gx,) = torch.autograd.grad((y.tanh()).sum(), x, create_graph=True)
        with pytest.raises(NotImplementedError, match="forward-over-reverse products only"):
            gx.sum().backward()


def test_segmented_products_use_the_closed_form():
    """SegmentedProducts routes a WRN's BatchNorm layers through it, every segment, both directions."""
    torch.manual_seed(0)
    net = WideResNet(10, 1, 3).double().train()
    params = [p for p in net.parameters() if p.requires_grad]
    images, labels = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    products = SegmentedProducts(network_segments(net), params, images, labels)
    layers = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    with mock.patch.object(batchnorm._BatchNorm, "apply", wraps=batchnorm._BatchNorm.apply) as used:
        products([torch.randn_like(p) for p in params])
    assert used.call_count >= 2 * layers  # the forward pass, then the recomputed forward of the backward
