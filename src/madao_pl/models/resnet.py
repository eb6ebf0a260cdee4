"""torchvision ResNets, with the CIFAR stem for small images."""

from __future__ import annotations

from torch import nn
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
