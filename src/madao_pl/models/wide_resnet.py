"""Wide Residual Network for 32x32 inputs (Zagoruyko & Komodakis, 2016), pre-activation blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WideBasicBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3.

    When the width or resolution changes, the shortcut is a 1x1 convolution of the pre-activated
    input (as in the authors' code); otherwise it is the identity on the raw input.

    Args:
        in_planes, out_planes: channels in and out.
        stride: stride of the first convolution (and of the shortcut).
        dropout: dropout probability between the two convolutions.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_planes, H, W) -> (B, out_planes, H / stride, W / stride)``."""
        activated = F.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return residual + self.conv2(out)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR-sized images (works at any size: global average pooling).

    Stem conv3x3 to 16 channels, three groups of ``(depth - 4) / 6`` blocks with
    ``16k, 32k, 64k`` channels (strides 1, 2, 2), then BN-ReLU, global average pooling and a linear
    classifier. WRN-28-2 has 1.47 M parameters, WRN-28-10 36.5 M (10 classes).

    Args:
        depth: total depth, ``6n + 4``.
        widen_factor: width multiplier ``k``.
        num_classes: output width.
        dropout: dropout probability inside the blocks.
    """

    def __init__(
        self, depth: int = 28, widen_factor: int = 2, num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
            )
        if widen_factor < 1 or num_classes < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"need widen_factor >= 1, num_classes >= 1 and dropout in [0, 1); got {widen_factor}, "
                f"{num_classes}, {dropout}"
            )
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for group, stride in enumerate((1, 2, 2)):
            layers = [
                WideBasicBlock(
                    widths[group] if i == 0 else widths[group + 1],
                    widths[group + 1],
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(blocks_per_group)
            ]
            groups.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan-out) convolutions, unit BatchNorm, zero linear bias."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        return _head(self.bn, self.fc, self.block3(self.block2(self.block1(self.conv1(x)))))

    def segments(self) -> list[nn.Module]:
        """The forward as consecutive modules (stem, each block, head): what
        :class:`madao_pl.segmented.SegmentedProducts` checkpoints at."""
        return [self.conv1, *self.block1, *self.block2, *self.block3, WideResNetHead(self.bn, self.fc)]


def _head(bn: nn.BatchNorm2d, fc: nn.Linear, features: Tensor) -> Tensor:
    return fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(bn(features)), 1), 1))


class WideResNetHead(nn.Module):
    """The last segment of a :class:`WideResNet`: BN-ReLU, global average pooling, the linear classifier
    (the network's own ``bn`` and ``fc``)."""

    def __init__(self, bn: nn.BatchNorm2d, fc: nn.Linear) -> None:
        super().__init__()
        self.bn, self.fc = bn, fc

    def forward(self, features: Tensor) -> Tensor:
        """``(B, 64k, h, w)`` -> logits ``(B, num_classes)``."""
        return _head(self.bn, self.fc, features)
