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

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from benchmarks.common import ROOT, stamp, write_json
from madao_pl.hypergrad import second_order_vjp
from madao_pl.models import WideResNet, network_segments, wide_resnet
from madao_pl.segmented import SegmentedProducts

BATCH, SIZE, DEPTH, WIDTH, SEED = 64, 32, 16, 2, 0
STEPS = (1e-1, 1e-2, 1e-3, 1e-4)
"""Perturbation norms ``e |u|`` of the finite differences."""
PROBES = ("training_step", "double_backward", "forward_over_reverse", "finite_difference", "segmented")
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}


class Softplus(nn.Module):
    """``softplus(beta=20)``: the smooth stand-in for ReLU of the control network."""

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, beta=20.0)


def problem(dtype: torch.dtype) -> tuple[nn.Module, Tensor, Tensor]:
    """The seeded WRN (train mode), normalised images and labels, in ``dtype``."""
    torch.manual_seed(SEED)
    net = WideResNet(DEPTH, WIDTH, 10).to(dtype)
    g = torch.Generator().manual_seed(SEED + 1)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g).to(dtype)
    return net, (images - 0.5) / 0.25, torch.randint(0, 10, (BATCH,), generator=g)


class _SmoothFunctional:
    """``torch.nn.functional`` with ``relu`` replaced by :class:`Softplus` (the WRN calls ``F.relu``)."""

    def __getattr__(self, name: str) -> Any:
        return Softplus() if name == "relu" else getattr(F, name)


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

    with mock.patch.object(wide_resnet, "F", _SmoothFunctional()) if smooth else contextlib.nullcontext():
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

    setup = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"peak_above_setup_mb": peak - setup, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/levers.json"))
    parser.add_argument("--probe", choices=PROBES, help="internal: print one memory probe's JSON")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return 0
    memory = {}
    for name in PROBES:
        command = [sys.executable, "-m", "benchmarks.bench_levers", "--probe", name]
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **MMAP_ENV}, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"memory probe {name} failed:\n{done.stderr[-3000:]}")
        memory[name] = json.loads(done.stdout.strip().splitlines()[-1])
    step = memory["training_step"]["peak_above_setup_mb"]
    for row in memory.values():
        row["vs_training_step"] = row["peak_above_setup_mb"] / step
    torch.set_num_threads(1)
    settings = {"model": f"WideResNet({DEPTH}, {WIDTH}, 10)", "batch": BATCH, "image_size": SIZE,
                "steps": list(STEPS), "memory_env": MMAP_ENV, "seed": SEED}  # fmt: skip
    report = {
        "benchmark": "memory levers for the hyper step's products",
        **stamp("benchmarks.bench_levers", argv),
    }
    write_json(
        args.out,
        {
            **report,
            "settings": settings,
            "memory": memory,
            "errors": {
                "relu_float32": errors(torch.float32, False),
                "relu_float64": errors(torch.float64, False),
                "softplus_float64": errors(torch.float64, True),
            },
        },
    )
    print(json.dumps({"memory": memory}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
