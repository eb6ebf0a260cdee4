"""scikit-learn's bundled handwritten digits as a 32x32 RGB datamodule (the embedded default: no download)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import v2

from .base import ImageDataModule

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def digits_tensors(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as images float ``(1797, 3, S, S)`` in ``[0, 1]`` and labels int64 ``(1797,)``.

    The 8x8 grey levels 0..16 are divided by 16, upscaled bilinearly (antialiased) to ``image_size``
    and replicated to 3 channels.
    """
    digits = load_digits()
    grey = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(
        grey, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    images = big.clamp(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(digits.target.astype(np.int64))


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified (train, test) split of the 1797 digits: 25 % test, ``random_state=0``.

    Independent of the run seed so that every seed is scored on the same test images.
    """
    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return np.sort(train), np.sort(test)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's ``load_digits`` (1797 8x8 digits, 10 classes) upscaled to 32x32, 3 channels.

    Held in memory as tensors; ``root`` and ``download`` are accepted for a uniform config and unused.
    The test set is a fixed stratified 25 % (450 images); the remaining 1347 are the training source
    that ``val_fraction`` splits. Training crop: ``RandomCrop(image_size, padding=image_size // 16)``
    (2 px at 32), no flip (digits are not mirror-symmetric).

    ``mean``/``std`` were measured on the 1347 training-source images at 32 px (all three channels are
    equal); ``tests/test_data.py`` recomputes them.
    """

    mean = (0.30522, 0.30522, 0.30522)
    std = (0.32354, 0.32354, 0.32354)
    _num_classes = 10

    default_batch_size = 64
    _tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def _check_image_size(self, image_size: int) -> None:
        if image_size < 8:
            raise ValueError(f"digits are 8x8; image_size must be >= 8, got {image_size}")

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tensors is None:
            self._tensors = digits_tensors(self.image_size)
        return self._tensors

    def train_source(self, download: bool) -> tuple[Dataset, np.ndarray]:
        """The 1347 training-source digits (fixed split) as a ``TensorDataset``."""
        images, labels = self._all()
        train, _ = digits_split()
        index = torch.from_numpy(train)
        return TensorDataset(images[index], labels[index]), labels[index].numpy()

    def test_source(self, download: bool) -> Dataset:
        """The 450 test digits (fixed split)."""
        images, labels = self._all()
        _, test = digits_split()
        index = torch.from_numpy(test)
        return TensorDataset(images[index], labels[index])

    def transforms(self) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
        """Train: padded random crop, no flip; eval: none (the tensors are ready)."""
        return v2.RandomCrop(self.image_size, padding=max(1, self.image_size // 16)), None
