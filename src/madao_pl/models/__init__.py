"""Networks for MADAO: Wide ResNets, torchvision ResNets (CIFAR stem for small images), a small CNN.

All take normalised images ``(B, 3, H, W)`` and return logits ``(B, num_classes)``; all use BatchNorm
and support double backward (the MADAO hyper step's Hessian-vector products).
"""

from __future__ import annotations

from torch import nn

from .resnet import network_segments, resnet
from .small_cnn import SmallCNN
from .wide_resnet import WideBasicBlock, WideResNet

MODEL_NAMES = ("wrn28_2", "wrn40_2", "wrn28_10", "resnet18", "resnet50", "cnn")


def build_model(name: str, num_classes: int, image_size: int = 32) -> nn.Module:
    """Build a network by name (the Hydra ``model`` group's choices).

    Args:
        name: one of ``wrn28_2``, ``wrn40_2``, ``wrn28_10``, ``resnet18``, ``resnet50``, ``cnn``.
        num_classes: output width.
        image_size: input side (selects the ResNet stem; the others work at any size).
    """
    if name.startswith("wrn") and name in MODEL_NAMES:
        depth, width = (int(part) for part in name[3:].split("_"))
        return WideResNet(depth=depth, widen_factor=width, num_classes=num_classes)
    if name in ("resnet18", "resnet50"):
        return resnet(name, num_classes=num_classes, image_size=image_size)
    if name == "cnn":
        return SmallCNN(num_classes=num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


__all__ = [
    "MODEL_NAMES",
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "build_model",
    "network_segments",
    "resnet",
]
