"""The supervised evaluation `madao_pl.module.MADAOModule` and `madao_pl.ssl.LinearProbe` inherit: validation
and test of a classifier.

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
    over all ranks), by default.

    Args:
        num_classes: the number of classes of the logits.
        val_prefix: what the validation metrics' names start with: ``{val_prefix}loss`` and
            ``{val_prefix}error`` (the linear probe's: ``probe/val_``).
        val_loss: whether to log ``{val_prefix}loss`` (the linear probe logs its error alone).
        prog_bar: whether ``{val_prefix}error`` is shown on the progress bar.
    """

    def __init__(
        self, num_classes: int, *, val_prefix: str = "val/", val_loss: bool = True, prog_bar: bool = True
    ) -> None:
        super().__init__()
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self._val_prefix, self._log_val_loss, self._val_prog_bar = val_prefix, val_loss, prog_bar

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_accuracy.update(logits, labels)
        if self._log_val_loss:
            loss = F.cross_entropy(logits, labels)
            self.log(f"{self._val_prefix}loss", loss, sync_dist=True, batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        error = 1.0 - self.val_accuracy.compute()
        self.log(f"{self._val_prefix}error", error, prog_bar=self._val_prog_bar)
        self.val_accuracy.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.test_accuracy.update(self(batch[0]), batch[1])

    def on_test_epoch_end(self) -> None:
        self.log("test/error", 1.0 - self.test_accuracy.compute())
        self.test_accuracy.reset()
