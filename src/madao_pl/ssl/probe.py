"""The linear probe: a linear classifier on a frozen encoder's features (MoCo's evaluation protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad
from torch import Tensor, nn

from madao_pl.evaluation import ClassifierEvaluation


class LinearProbe(ClassifierEvaluation):
    """A linear classifier on a frozen encoder's features, trained with SGD on the labelled training split.

    The encoder stays in eval mode with no gradient (its BatchNorm statistics frozen too); the training
    images come from the datamodule's training loader (its crop / flip). Logs ``probe/train_loss``,
    ``probe/val_error``, and ``test/error`` from ``trainer.test``: the test error of the self-supervised task
    (the validation and test hooks are `madao_pl.evaluation.ClassifierEvaluation`'s).

    Args:
        encoder: normalised images ``(B, C, H, W)`` -> features ``(B, feature_dim)``.
        feature_dim: the features' width.
        num_classes: the classes of the probe.
        mean, std: per-channel normalisation of the ``[0, 1]`` images.
        lr, momentum, weight_decay: SGD's (paper, ImageNet: 30, 0.9, 0).
        milestones, gamma: the learning rate is multiplied by ``gamma`` at these epochs (paper: 60, 80; 0.1).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        lr: float = 30.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: Sequence[int] = (60, 80),
        gamma: float = 0.1,
    ) -> None:
        super().__init__(num_classes, val_prefix="probe/val_", val_loss=False, prog_bar=False)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
            raise ValueError(f"milestones must be epochs >= 1, got {list(milestones)!r}")
        self.encoder = encoder
        deactivate_requires_grad(self.encoder)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.milestones, self.gamma = list(milestones), gamma
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> LinearProbe:
        """Train mode for the classifier only: the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Logits of images ``(B, C, H, W)`` in [0, 1]."""
        with torch.no_grad():
            features = self.encoder((images - self.mean) / self.std)
        return self.classifier(features)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("probe/train_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        return [optimizer], [torch.optim.lr_scheduler.MultiStepLR(optimizer, self.milestones, self.gamma)]
