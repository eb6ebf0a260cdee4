"""A small convolutional network: fast on CPU at 32x32 (digits, tests, quick runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """conv3x3 (no bias) - BatchNorm - ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    )


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks (``width``, ``2 width``, ``4 width`` channels; the last two stride 2),
    global average pooling and a linear classifier. About 0.1 M parameters at ``width=32``.

    Args:
        num_classes: output width.
        width: channels of the first block.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be >= 1, got {num_classes}, {width}")
        self.features = nn.Sequential(
            conv_bn_relu(3, width, 1),
            conv_bn_relu(width, 2 * width, 2),
            conv_bn_relu(2 * width, 4 * width, 2),
        )
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        return _classify(self.fc, self.features(x))

    def segments(self) -> list[nn.Module]:
        """The forward as consecutive modules (each conv block, then the head), for
        :class:`madao_pl.segmented.SegmentedProducts`."""
        return [*self.features, _Head(self.fc)]


def _classify(fc: nn.Linear, features: Tensor) -> Tensor:
    return fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


class _Head(nn.Module):
    """The last segment of a :class:`SmallCNN`: global average pooling and its classifier ``fc``."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, features: Tensor) -> Tensor:
        return _classify(self.fc, features)
