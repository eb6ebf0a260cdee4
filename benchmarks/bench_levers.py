"""Memory levers for the hyper step's second-order products, measured against the shipped double backward.

The hyper step's peak memory above set-up is about 3x a training step's (``results/cost.json``): its
``create_graph`` gradient keeps the first-order graph alive and each Hessian-vector product's double
backward peaks on top of it. Two ways to take ``H u`` without that graph, measured here on WRN-16-2 with
BatchNorm in train mode, batch 64, 32 px, one torch thread:

- ``finite_difference``: ``(G(theta + e u) - G(theta - e u)) / 2e`` of two ordinary gradients (DARTS, SAMA).
  Its error against the exact product is measured in float32 and float64 for perturbation norms ``e |u|``,
  on the ReLU network and on the same network with ``softplus(beta=20)`` in place of ReLU (a control: the
  smooth network's error falls as ``e^2``, the ReLU network's grows as ``e`` shrinks, about as ``e^-1/2``:
  some ``N e`` of its ``N`` activations cross their kink, each adding a jump of size ``1 / e`` that the exact
  product, with ``relu'' = 0``, does not have; float64 does not help).
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad`` (no graph kept between products;
  exact up to rounding).
- ``segmented``: the shipped ``hyper.segmented`` product (:class:`madao_pl.segmented.SegmentedProducts`):
  forward-over-reverse one residual block at a time from the kept block boundaries (exact).

Each memory probe runs in its own process under a fixed glibc mmap threshold (the RSS then follows the
live tensors): the peak RSS above the set-up of one training step (forward, backward, SGD step), of the
shipped product (``create_graph`` gradient, then one double backward) and of each lever's one product.

Run: ``python -m benchmarks.bench_levers --out benchmarks/results/levers.json`` (about a minute).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from functools import partial
from types import SimpleNamespace
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from benchmarks import common
from madao_pl.hypergrad import second_order_vjp
from madao_pl.models import WideResNet, network_segments, wide_resnet
from madao_pl.segmented import SegmentedProducts

BATCH, SIZE, DEPTH, WIDTH, SEED = 64, 32, 16, 2, 0
STEPS = (1e-1, 1e-2, 1e-3, 1e-4)
"""Perturbation norms ``e |u|`` of the finite differences."""
PROBES = ("training_step", "double_backward", "forward_over_reverse", "finite_difference", "segmented")
MMAP_ENV = {**common.LIVE_MEMORY_ENV, "OMP_NUM_THREADS": "1"}
NETWORKS = {
    "relu_float32": (torch.float32, False),
    "relu_float64": (torch.float64, False),
    "softplus_float64": (torch.float64, True),
}
"""The networks whose products' errors are measured: (dtype, ReLU replaced by ``softplus(beta=20)``)."""


def problem(dtype: torch.dtype) -> tuple[nn.Module, Tensor, Tensor]:
    """The seeded WRN (train mode), normalised images and labels, in ``dtype``."""
    torch.manual_seed(SEED)
    net = WideResNet(DEPTH, WIDTH, 10).to(dtype)
    g = torch.Generator().manual_seed(SEED + 1)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(dtype)
    return net, (images - 0.5) / 0.25, torch.randint(0, 10, (BATCH,), generator=g)


def finite_difference(net: nn.Module, loss, u: list[Tensor], step: float) -> list[Tensor]:
    """``(G(theta + e u) - G(theta - e u)) / 2e`` with ``e = step / |u|``; the parameters copied back."""
    params = list(net.parameters())
    e = step / float(torch.sqrt(sum((t.double() ** 2).sum() for t in u)))
    saved = [p.detach().clone() for p in params]
    ends = []
    for sign in (e, -e):
        with torch.no_grad():
            for p, start, t in zip(params, saved, u, strict=True):
                p.copy_(start + sign * t)
        ends.append(torch.autograd.grad(loss(), params))
    with torch.no_grad():
        for p, start in zip(params, saved, strict=True):
            p.copy_(start)
    return [(a - b) / (2 * e) for a, b in zip(*ends, strict=True)]


def double_backward(net: nn.Module, loss, u: list[Tensor]) -> list[Tensor]:
    """The shipped product: ``d/dtheta <df/dtheta, u>`` through the ``create_graph`` gradient."""
    params = list(net.parameters())
    return list(second_order_vjp(torch.autograd.grad(loss(), params, create_graph=True), params)(u))


def forward_over_reverse(net: nn.Module, images: Tensor, labels: Tensor, u: list[Tensor]) -> list[Tensor]:
    """``torch.func.jvp`` of ``torch.func.grad``; switches ``net``'s BatchNorm layers to untracked batch
    statistics (as in train mode, without the in-place update ``torch.func`` refuses) for good."""
    names = [n for n, _ in net.named_parameters()]
    buffers = dict(net.named_buffers())
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False  # batch statistics, as in train mode, and no in-place update

    def loss(*params: Tensor) -> Tensor:
        state = {**dict(zip(names, params, strict=True)), **buffers}
        return F.cross_entropy(functional_call(net, state, (images,)), labels)

    def gradient(*params: Tensor) -> tuple[Tensor, ...]:
        return grad(loss, argnums=tuple(range(len(params))))(*params)

    return list(jvp(gradient, tuple(p.detach() for p in net.parameters()), tuple(u))[1])


def segmented(net: nn.Module, images: Tensor, labels: Tensor, u: list[Tensor]) -> list[Tensor]:
    """The shipped segmented product ``H u`` (one block's activations at a time)."""
    return list(SegmentedProducts(network_segments(net), list(net.parameters()), images, labels)(u)[0])


def relative(a: list[Tensor], b: list[Tensor]) -> float:
    """``|a - b| / |b|`` of two tuples taken as one vector, in float64."""
    flat_a, flat_b = (torch.cat([t.double().reshape(-1) for t in v]) for v in (a, b))
    return float((flat_a - flat_b).norm() / flat_b.norm())


def errors(dtype: torch.dtype, smooth: bool) -> dict[str, float]:
    """Relative error against the exact product of the finite differences per step (ReLU: also of
    forward-over-reverse); ``smooth``: the control network with softplus in place of ReLU."""
    net, images, labels = problem(dtype)
    g = torch.Generator().manual_seed(SEED + 2)
    u = [torch.randn(p.shape, generator=g).to(dtype) for p in net.parameters()]

    def loss() -> Tensor:
        return F.cross_entropy(net(images), labels)

    smooth_f = SimpleNamespace(**{**vars(F), "relu": partial(F.softplus, beta=20.0)})  # for the WRN's F.relu
    with mock.patch.object(wide_resnet, "F", smooth_f) if smooth else contextlib.nullcontext():
        exact = double_backward(net, loss, u)
        out = {f"fd_{step:g}": relative(finite_difference(net, loss, u, step), exact) for step in STEPS}
    if not smooth:
        out["segmented"] = relative(segmented(net, images, labels, u), exact)
        out["forward_over_reverse"] = relative(forward_over_reverse(net, images, labels, u), exact)
    return out


def probe(name: str) -> dict[str, float]:
    """In this process: the peak RSS above set-up (MiB) of one ``name`` computation."""
    torch.set_num_threads(1)
    net, images, labels = problem(torch.float32)
    u = [torch.randn_like(p) for p in net.parameters()]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)

    def loss() -> Tensor:
        return F.cross_entropy(net(images), labels)

    setup, start = common.rss_mb(), time.perf_counter()
    if name == "training_step":
        loss().backward()
        optimizer.step()
    elif name == "double_backward":
        double_backward(net, loss, u)
    elif name == "forward_over_reverse":
        forward_over_reverse(net, images, labels, u)
    elif name == "segmented":
        segmented(net, images, labels, u)
    else:
        finite_difference(net, loss, u, 1e-2)
    return {"peak_above_setup_mb": common.peak_rss_mb() - setup, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    args = common.cli(__doc__, argv, common.RESULTS / "levers.json", {}, probe)
    if args is None:
        return 0
    memory, specs = {}, {name: name for name in PROBES}
    with common.work_dir(None) as work:
        for name, row in common.run_cases("benchmarks.bench_levers", specs, work, MMAP_ENV):
            if "error" in row:
                raise RuntimeError(f"memory probe {name} failed:\n{row['traceback_tail']}")
            memory[name] = row
    step = memory["training_step"]["peak_above_setup_mb"]
    for row in memory.values():
        row["vs_training_step"] = row["peak_above_setup_mb"] / step
    torch.set_num_threads(1)
    settings = {"model": f"WideResNet({DEPTH}, {WIDTH}, 10)", "batch": BATCH, "image_size": SIZE,
                "steps": list(STEPS), "memory_env": MMAP_ENV, "seed": SEED}  # fmt: skip
    report = {
        "benchmark": "memory levers for the hyper step's products",
        **common.stamp("benchmarks.bench_levers", argv),
        "settings": settings,
        "memory": memory,
        "errors": {name: errors(dtype, smooth) for name, (dtype, smooth) in NETWORKS.items()},
    }
    common.write_json(args.out, report)
    print(json.dumps({"memory": memory}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
