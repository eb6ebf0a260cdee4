"""The memory-lever benchmark's products: each agrees with the exact double backward where it should, the
finite differences put the parameters back bit for bit, and the report renders its tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from benchmarks import bench_levers, report
from torch import nn


def _smooth_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    ).double()  # fmt: skip
    images, labels = torch.rand(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    return net, images, labels, [torch.randn_like(p) for p in net.parameters()]


def test_products_agree_with_the_double_backward_on_a_smooth_network() -> None:
    net, images, labels, u = _smooth_problem()
    before = [p.detach().clone() for p in net.parameters()]

    def loss() -> torch.Tensor:
        return F.cross_entropy(net(images), labels)

    exact = bench_levers.double_backward(net, loss, u)
    assert bench_levers.relative(bench_levers.finite_difference(net, loss, u, 1e-4), exact) < 1e-6
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    assert bench_levers.relative(bench_levers.forward_over_reverse(net, images, labels, u), exact) < 1e-10
    assert bench_levers.relative(bench_levers.segmented(net, images, labels, u), exact) < 1e-10
    wrong = [2 * t for t in exact]  # the oracle distinguishes a factor of two
    assert bench_levers.relative(wrong, exact) == 1.0


def test_report_renders_the_levers_tables() -> None:
    fake = {
        "settings": {"model": "WRN", "batch": 2, "image_size": 8, "memory_env": {"A": "1"}, "steps": [0.1]},
        "memory": {"training_step": {"peak_above_setup_mb": 10.0, "vs_training_step": 1.0, "seconds": 0.5}},
        "errors": {"relu_float32": {"fd_0.1": 14.3, "forward_over_reverse": 1.5e-6, "segmented": 2e-7}},
    }
    text = "\n".join(report.levers_body(fake))
    assert "| `training_step` | 10 | 1.00 | 0.50 |" in text
    assert "| `relu_float32` | 1.43e+01 | 1.50e-06 | 2.00e-07 |" in text
