"""Tests of madao_pl.segmented (products one segment at a time) and of the hyper step's segmented mode.

Oracle: the double backward of a ``create_graph`` gradient (:func:`madao_pl.hypergrad.second_order_vjp`) on
the whole network, in float64, and the hyper step with its graph kept.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from madao_pl.hypergrad import second_order_vjp
from madao_pl.hyperstep import HyperStepConfig
from madao_pl.models import SmallCNN, WideResNet, network_segments, resnet
from madao_pl.segmented import SegmentedProducts
from tests.test_hyperstep import _rel, make_problem, run

pytestmark = pytest.mark.usefixtures("single_thread")


def _networks() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "wrn10_1": WideResNet(10, 1, 3),
        "cnn": SmallCNN(num_classes=3, width=4),
        "resnet18": resnet("resnet18", num_classes=3, image_size=8),
        "sequential": nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
        ),
    }


def _problem(net: nn.Module, dtype: torch.dtype = torch.float64, batch: int = 4):
    net = net.to(dtype).train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype)
    labels = torch.randint(0, 3, (batch,), generator=g)
    params = [p for p in net.parameters() if p.requires_grad]
    u = [torch.randn(p.shape, generator=g, dtype=dtype) for p in params]
    return net, images, labels, params, u


def _compose(segments: list[nn.Module], x: Tensor) -> Tensor:
    for segment in segments:
        x = segment(x)
    return x


@pytest.mark.parametrize("name", ["wrn10_1", "cnn", "resnet18", "sequential"])
def test_segments_compose_to_the_forward(name):
    """network_segments(net) applied in turn is net's forward, bit for bit, in train and eval mode."""
    net, images, *_ = _problem(_networks()[name])
    for mode in (True, False):
        net.train(mode)
        torch.testing.assert_close(_compose(network_segments(net), images), net(images), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["wrn10_1", "cnn", "resnet18", "sequential"])
def test_products_equal_the_double_backward(name):
    """H u and d/dx <df/dtheta, u> against the double backward of the whole network (float64, BatchNorm in
    train mode), and the running statistics untouched with tracking restored."""
    net, images, labels, params, u = _problem(_networks()[name])
    x = images.clone().requires_grad_(True)
    grads = torch.autograd.grad(F.cross_entropy(net(x), labels), params, create_graph=True)
    exact_hvp = second_order_vjp(grads, params)(u)
    (exact_input,) = second_order_vjp(grads, [x])(u)
    buffers = [b.clone() for b in net.buffers()]
    products = SegmentedProducts(network_segments(net), params, images, labels)
    hvp, input_product = products(u)
    assert _rel(hvp, exact_hvp) <= 1e-10
    assert _rel([input_product], [exact_input]) <= 1e-10
    for got, want in zip(net.buffers(), buffers, strict=True):
        assert torch.equal(got, want)
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    loss = F.cross_entropy(net(images), labels).detach()
    assert float(products.loss_value) == pytest.approx(float(loss), rel=1e-12)


def test_tied_parameters_sum_over_segments():
    """A parameter used by two segments gets the sum of both segments' products."""
    torch.manual_seed(0)
    shared = nn.Linear(5, 5)
    net = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (6,), generator=g)
    params = list(net.parameters())
    u = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    grads = torch.autograd.grad(F.cross_entropy(net(x), labels), params, create_graph=True)
    hvp, _ = SegmentedProducts(list(net), params, x, labels)(u)
    assert _rel(hvp, second_order_vjp(grads, params)(u)) <= 1e-12


def test_a_first_segment_without_parameters():
    """The Hessian product alone skips the first segment's input gradient, unless it has no parameters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, labels = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    params = list(net.parameters())
    u = [torch.randn_like(p) for p in params]
    grads = torch.autograd.grad(F.cross_entropy(net(x), labels), params, create_graph=True)
    hvp, _ = SegmentedProducts(list(net), params, x, labels)(u, inputs=False)
    assert _rel(hvp, second_order_vjp(grads, params)(u)) <= 1e-12


def test_segments_must_hold_every_trainable_parameter():
    net, images, labels, params, _ = _problem(_networks()["cnn"])
    with pytest.raises(ValueError, match="miss 2 of its"):
        SegmentedProducts(network_segments(net)[:-1], params, images, labels)


def test_partial_products_and_the_first_order_gradient():
    """parameters=False / inputs=False give the same products as the full pass; the first call that takes
    H u keeps df/dtheta, equal to the ordinary gradient (float64)."""
    net, images, labels, params, u = _problem(_networks()["wrn10_1"])
    products = SegmentedProducts(network_segments(net), params, images, labels)
    hvp, none = products(u, inputs=False)
    assert none is None
    gradient = torch.autograd.grad(F.cross_entropy(net(images), labels), params)
    assert _rel(products.gradient, gradient) <= 1e-12
    full_hvp, full_input = products(u)
    no_hvp, input_product = products(u, parameters=False)
    assert no_hvp is None
    assert _rel(hvp, full_hvp) == 0.0
    assert _rel([input_product], [full_input]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        products(u, parameters=False, inputs=False)


@pytest.mark.parametrize("settings", [{}, {"neumann_tol": 1e-4}, {"method": "cg", "cg_iterations": 3}])
def test_hyper_step_segmented_equals_keeping_the_graph(settings):
    """segmented=True: the same hypergradient, network gradient, losses, products and running statistics
    as the hyper step that keeps its create_graph graph (BatchNorm net, float64); the network gradient
    comes from the products' primal backward there, so it agrees to rounding."""
    net, policy, batches = make_problem(torch.float64)
    kept_net = copy.deepcopy(net)
    kept = run(kept_net, policy, batches, **settings)
    segmented = run(net, policy, batches, segmented=True, **settings)
    assert _rel(segmented.hypergrad, kept.hypergrad) <= 1e-10
    assert segmented.info.hvps == kept.info.hvps > 0
    assert _rel(segmented.network_grads, kept.network_grads) <= 1e-12
    assert segmented.train_loss.item() == kept.train_loss.item()
    assert segmented.val_loss.item() == kept.val_loss.item()
    for got, want in zip(net.buffers(), kept_net.buffers(), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("settings", [{"neumann_steps": 0}, {"direction_only": True}])
def test_hyper_step_segmented_without_products_first(settings):
    """No Hessian product before the mixed one (J = 0), and direction_only (which needs df/dtheta before
    the solve): the same results as keeping the graph."""
    net, policy, batches = make_problem(torch.float64)
    kept_net = copy.deepcopy(net)
    kept = run(kept_net, policy, batches, **settings)
    segmented = run(net, policy, batches, segmented=True, **settings)
    assert _rel(segmented.hypergrad, kept.hypergrad) <= 1e-10
    assert segmented.info.hvps == kept.info.hvps
    assert _rel(segmented.network_grads, kept.network_grads) <= 1e-12
    for got, want in zip(net.buffers(), kept_net.buffers(), strict=True):
        assert torch.equal(got, want)


def test_segmented_refuses_another_loss_and_other_networks():
    """The hyper step's f must be what the segments differentiate; a network must say how it splits; and
    the two memory modes exclude each other."""
    net, policy, (images, labels, val_images, val_labels) = make_problem(torch.float64)
    from madao_pl.hyperstep import hyper_step

    def doubled(inputs: Tensor, targets: Tensor | None) -> Tensor:
        return 2 * F.cross_entropy(net(inputs), targets)

    config = HyperStepConfig(segmented=True)
    with pytest.raises(ValueError, match="differentiate another function"):
        hyper_step(
            net, policy, (images, labels), (val_images, val_labels), normalize=lambda x: x,
            config=config, loss=doubled,
        )  # fmt: skip
    with pytest.raises(ValueError, match="labels: segmented products take f .* and this f has none"):
        hyper_step(
            net, policy, (images, None), (val_images, None), normalize=lambda x: x, config=config,
            loss=lambda inputs, _: net(inputs).square().mean(),
        )  # fmt: skip

    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x.mean((2, 3)))

    with pytest.raises(ValueError, match="Opaque does not say how"):
        network_segments(Opaque())
    with pytest.raises(ValueError, match="set at most one of them"):
        HyperStepConfig(recompute=True, segmented=True)


def test_the_module_refuses_segmented_products_it_cannot_take():
    """MADAOModule checks at build time: a network without segments, and a task with another loss (MoCo)."""
    from functools import partial

    from madao_pl.augment import MADAOPolicy
    from madao_pl.module import MADAOModule
    from tests.test_ssl import make_ssl_module

    config = HyperStepConfig(segmented=True)
    sgd = partial(torch.optim.SGD, lr=0.1)
    MADAOModule(SmallCNN(3, 4), MADAOPolicy(), sgd, num_classes=3, hyper=config)  # splits: accepted
    with pytest.raises(ValueError, match="Linear does not say how"):
        MADAOModule(nn.Linear(3, 3), MADAOPolicy(), sgd, num_classes=3, hyper=config)
    with pytest.raises(ValueError, match="MoCoModule trains another loss"):
        make_ssl_module(hyper=config)
