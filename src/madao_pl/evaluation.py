"""The supervised evaluation `madao_pl.module.MADAOModule` inherits: validation and test of a classifier.

A subclass with another task replaces these hooks (`madao_pl.ssl.MoCoModule` logs its contrastive loss).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy


class ClassifierEvaluation(pl.LightningModule):
    """Validation and test hooks for a LightningModule whose ``forward`` maps un-augmented images to logits:
    ``val/loss`` (cross-entropy, per batch), ``val/error`` and ``test/error`` (1 - top-1 accuracy, per epoch,
    over all ranks).

    Args:
        num_classes: the number of classes of the logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_accuracy.update(logits, labels)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        self.log("val/error", 1.0 - self.val_accuracy.compute(), prog_bar=True)
        self.val_accuracy.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.test_accuracy.update(self(batch[0]), batch[1])

    def on_test_epoch_end(self) -> None:
        self.log("test/error", 1.0 - self.test_accuracy.compute())
        self.test_accuracy.reset()
