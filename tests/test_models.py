"""Networks: shapes, stems, parameter counts, BatchNorm, and the double backward MADAO's hyper step needs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from madao_pl.models import SmallCNN, WideResNet, resnet
from madao_pl.run import CONF, build
from tests.conftest import compose_config

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if not p.stem.startswith("_"))
"""The choices of the Hydra ``model`` group: its files, less the shared ``_*`` ones."""


def net_from_config(model: str, num_classes: int, image_size: int = 32) -> nn.Module:
    """The network of ``model=<model>``, built as a run builds it: the real config tree composed, its
    ``model.net`` node instantiated by :func:`madao_pl.run.build` for ``num_classes`` (``image_size`` is
    ``dataset.image_size``, which the ResNet configs read)."""
    cfg = compose_config("/tmp/unused", f"model={model}", f"dataset.image_size={image_size}")
    return build(cfg, "model.net", num_classes=num_classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_32px_and_batchnorm(name: str) -> None:
    model = net_from_config(name, num_classes=7, image_size=32)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 7)
    assert torch.isfinite(out).all()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_stems_by_image_size(arch: str) -> None:
    small = resnet(arch, num_classes=5, image_size=32)
    large = resnet(arch, num_classes=5, image_size=224)
    assert (
        small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.padding == (1, 1)
    )
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    small.eval()
    large.eval()
    with torch.no_grad():
        assert small(torch.rand(1, 3, 32, 32)).shape == (1, 5)
        if arch == "resnet18":  # resnet50 at 224 px is slow on a shared CPU; same stem code, checked above
            assert large(torch.rand(1, 3, 224, 224)).shape == (1, 5)
    # The CIFAR stem keeps 32x32 through the stem: the last stage sees 4x4 maps, not 1x1.
    features: dict[str, torch.Size] = {}

    def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        features["layer4"] = output.shape

    small.layer4.register_forward_hook(record)
    with torch.no_grad():
        small(torch.rand(1, 3, 32, 32))
    assert features["layer4"][-2:] == (4, 4)


def test_cnn_and_wrn_at_224px() -> None:
    for model in (SmallCNN(num_classes=3), WideResNet(depth=10, widen_factor=1, num_classes=3)):
        model.eval()
        with torch.no_grad():
            assert model(torch.rand(1, 3, 224, 224)).shape == (1, 3)


@pytest.mark.parametrize(("depth", "width", "expected"), [(28, 2, 1.467e6), (28, 10, 36.48e6)])
def test_wrn_parameter_counts(depth: int, width: int, expected: float) -> None:
    # Published counts: WRN-28-2 1.47 M, WRN-28-10 36.5 M (10 classes).
    count = n_params(WideResNet(depth=depth, widen_factor=width, num_classes=10))
    assert abs(count - expected) / expected < 0.02


def test_wrn_structure() -> None:
    model = WideResNet(depth=40, widen_factor=2, num_classes=10)
    assert len(model.block1) == len(model.block2) == len(model.block3) == 6
    assert model.fc.in_features == 128
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(depth=27)


def test_resnet_unknown_arch_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet50"):
        resnet("resnet34", num_classes=10)


def test_wrn_dropout_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = WideResNet(depth=10, widen_factor=1, num_classes=4, dropout=0.5)
    x = torch.rand(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def _functional_loss(model: nn.Module, y: torch.Tensor):
    """Cross-entropy of ``model`` as a pure function of (parameter list, images); BatchNorm buffers are
    cloned per call so train-mode running-statistic updates never touch shared state."""
    names = [name for name, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())

    def loss(params: list[torch.Tensor] | tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(names, params, strict=True)), **{k: b.clone() for k, b in buffers.items()}}
        return F.cross_entropy(torch.func.functional_call(model, state, (x,)), y)

    return loss


def _dot(a: list[torch.Tensor] | tuple[torch.Tensor, ...], b: list[torch.Tensor] | tuple[torch.Tensor, ...]):
    return sum((p * q).sum() for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["cnn", "wrn28_2"])
def test_double_backward_matches_forward_over_reverse(name: str) -> None:
    """The hyper step's second derivatives by double backward (train-mode BatchNorm, float64):
    H v and the mixed derivative d<grad_theta f, v>/dx agree with forward-over-reverse (torch.func.jvp of
    the gradient, an independent autodiff path) to 1e-10, and u.Hv = v.Hu. (Finite differences are no
    oracle here: ReLU kinks make the gradient jump, so a central difference of it is off by O(1/eps).)"""
    torch.manual_seed(0)
    model = net_from_config(name, num_classes=5, image_size=8).double().train()
    loss = _functional_loss(model, torch.tensor([0, 1, 2, 3]))
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    v = [torch.randn_like(p) for p in params]
    u = [torch.randn_like(p) for p in params]
    w = torch.randn_like(x)

    grads = torch.autograd.grad(loss(params, x), params, create_graph=True)
    hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
    hu = torch.autograd.grad(grads, params, grad_outputs=u, retain_graph=True)
    mixed = torch.autograd.grad(grads, x, grad_outputs=v)[0]

    primal = tuple(p.detach() for p in params)
    x0 = x.detach()
    _, hv_fwd = torch.func.jvp(lambda *ps: torch.func.grad(lambda q: loss(q, x0))(ps), primal, tuple(v))
    _, mixed_fwd = torch.func.jvp(
        lambda xx: _dot(torch.func.grad(lambda q: loss(q, xx))(primal), v), (x0,), (w,)
    )

    exact = torch.cat([h.reshape(-1) for h in hv])
    oracle = torch.cat([h.reshape(-1) for h in hv_fwd])
    assert oracle.norm() > 0
    assert (exact - oracle).norm() / oracle.norm() < 1e-10
    assert torch.isclose((mixed * w).sum(), mixed_fwd, rtol=1e-10, atol=0)
    assert mixed.abs().sum() > 0
    assert torch.isclose(_dot(u, hv), _dot(v, hu), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["resnet18"])
def test_double_backward_runs_through_resnet(name: str) -> None:
    model = net_from_config(name, num_classes=3, image_size=4).train()
    params = list(model.parameters())
    x = torch.rand(2, 3, 4, 4)
    loss = F.cross_entropy(model(x), torch.tensor([0, 2]))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(grads, params, grad_outputs=[torch.ones_like(g) for g in grads])
    assert all(torch.isfinite(h).all() for h in hv)
    assert sum(h.abs().sum() for h in hv) > 0
