"""torchvision ResNets, with the CIFAR stem for small images."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models

RESNET_ARCHS = ("resnet18", "resnet50")
CIFAR_STEM_MAX_SIZE = 64


def resnet(arch: str = "resnet18", num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """A randomly initialised torchvision ResNet-18/50 with ``num_classes`` outputs.

    For ``image_size <= 64`` the ImageNet stem (7x7 stride-2 conv + max-pool, a 4x downsampling that
    leaves 1x1 feature maps at 32 px) is replaced by the CIFAR stem: conv3x3 stride 1 padding 1 and
    no max-pool.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"``.
        num_classes: output width.
        image_size: input side, which picks the stem.
    """
    if arch not in RESNET_ARCHS:
        raise ValueError(f"unknown ResNet arch {arch!r}; choose one of {', '.join(RESNET_ARCHS)}")
    model = getattr(models, arch)(weights=None, num_classes=num_classes)
    if image_size <= CIFAR_STEM_MAX_SIZE:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


class _ResNetStem(nn.Module):
    """conv1-bn1-relu-maxpool of a torchvision ResNet (its own modules)."""

    def __init__(self, net: models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class _ResNetHead(nn.Module):
    """avgpool-flatten-fc of a torchvision ResNet (its own modules)."""

    def __init__(self, net: models.ResNet) -> None:
        super().__init__()
        self.avgpool, self.fc = net.avgpool, net.fc

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))


def network_segments(net: nn.Module) -> list[nn.Module]:
    """``net``'s forward as consecutive modules, for :class:`madao_pl.segmented.SegmentedProducts`:
    ``net.segments()`` where the network defines it (WideResNet, SmallCNN, your own), a torchvision ResNet's
    stem, blocks and head, or an ``nn.Sequential``'s children.

    Raises:
        ValueError: for any other network, naming what to add.
    """
    if callable(getattr(net, "segments", None)):
        return list(net.segments())
    if isinstance(net, models.ResNet):
        blocks = [block for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for block in layer]
        return [_ResNetStem(net), *blocks, _ResNetHead(net)]
    if isinstance(net, nn.Sequential):
        return list(net)
    raise ValueError(
        f"segmented products need the network split into consecutive segments, and {type(net).__name__} "
        "does not say how: give it a segments() method returning the modules whose composition is its "
        "forward, make it an nn.Sequential, or set segmented=False"
    )
