"""Networks for MADAO: Wide ResNets, torchvision ResNets (CIFAR stem for small images), a small CNN.

All take normalised images ``(B, 3, H, W)`` and return logits ``(B, num_classes)``; all use BatchNorm
and support double backward (the MADAO hyper step's Hessian-vector products). Runs build them from the
Hydra config group ``model`` (``madao_pl/conf/model/*.yaml``), each file naming its class by ``_target_``.
"""

from __future__ import annotations

from .resnet import network_segments, resnet
from .small_cnn import SmallCNN
from .wide_resnet import WideBasicBlock, WideResNet

__all__ = [
    "SmallCNN",
    "WideBasicBlock",
    "WideResNet",
    "network_segments",
    "resnet",
]
