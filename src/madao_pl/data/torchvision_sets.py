"""Datamodules on torchvision's data set classes: CIFAR-10/100, SVHN and the fine-grained 224-px sets.

Each opens torchvision's own class on its on-disk format (and its download code), reads the labels
without decoding images, and leaves splitting, transforms and loaders to :class:`ImageDataModule`.
torchvision's "Dataset not found" ``RuntimeError`` and download failures become a
:class:`DatasetNotFoundError` naming the path looked at and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets

from .base import (
    DOWNLOAD_HINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetNotFoundError,
    ImageDataModule,
    crop_flip_transforms,
    labels_of,
    load_rgb_image,
    resized_crop_transforms,
    translate_not_found,
)


class TorchvisionDataModule(ImageDataModule):
    """A datamodule over one torchvision data set class (abstract: subclasses implement ``open_split``).

    Class constants: ``dataset_name`` (for messages), ``data_dir`` (what torchvision looks for under
    ``root``), ``train_splits`` (concatenated into the training source), ``test_split``, and
    ``download_hint`` (the fix named in a not-found error).
    """

    dataset_name: ClassVar[str] = ""
    data_dir: ClassVar[str] = ""
    train_splits: ClassVar[tuple[str, ...]] = ("train",)
    test_split: ClassVar[str] = "test"
    download_hint: ClassVar[str] = DOWNLOAD_HINT

    def open_split(self, split: str, download: bool) -> Dataset:
        """torchvision's data set for ``split`` under ``root``, without transform."""
        raise NotImplementedError

    def path_of(self, split: str) -> str:
        """The path under ``root`` that torchvision looks at for ``split``."""
        return os.path.join(self.root, self.data_dir)

    def _open(self, split: str, download: bool) -> Dataset:
        try:
            with translate_not_found(self.dataset_name, self.path_of(split), self.download_hint):
                return self.open_split(split, download)
        except DatasetNotFoundError:
            raise
        except OSError as err:  # a file missing inside the folder, or a failed download
            where = self.path_of(split)
            fix = (
                f"Without network access, place torchvision's files for {self.dataset_name} at '{where}' "
                "(copied from a machine that downloaded them) and run with `download=False`."
                if download
                else self.download_hint
            )
            action = "download" if download else "read"
            raise DatasetNotFoundError(
                f"could not {action} {self.dataset_name} ({split} split) at '{where}': {err}. {fix}"
            ) from err

    def train_source(self, download: bool) -> tuple[Dataset, np.ndarray]:
        """The ``train_splits`` concatenated, with their labels."""
        parts = [self._open(split, download) for split in self.train_splits]
        labels = np.concatenate([labels_of(part) for part in parts])
        return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), labels

    def test_source(self, download: bool) -> Dataset:
        """The ``test_split``."""
        return self._open(self.test_split, download)


class _NativeSizeDataModule(TorchvisionDataModule):
    """32x32 sets: images used at their native size; crop with 4-px zero padding (+ flip)."""

    native_size: ClassVar[int] = 32
    flip: ClassVar[bool] = True

    def _check_image_size(self, image_size: int) -> None:
        if image_size != self.native_size:
            raise ValueError(
                f"{self.dataset_name} images are {self.native_size}x{self.native_size}; "
                f"set `image_size={self.native_size}` (got {image_size})"
            )

    def transforms(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """Train: ``RandomCrop(32, padding=4)`` (+ flip); eval: conversion to float only."""
        return crop_flip_transforms(self.image_size, padding=4, flip=self.flip)


class CIFAR10DataModule(_NativeSizeDataModule):
    """CIFAR-10 (50k train / 10k test, 32x32, 10 classes) from the python pickles in
    ``root/cifar-10-batches-py``. ``std`` is the true per-pixel standard deviation."""

    dataset_name = "CIFAR-10"
    data_dir = "cifar-10-batches-py"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    _num_classes = 10

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.CIFAR10``, train or test."""
        return datasets.CIFAR10(self.root, train=split == "train", download=download)


class CIFAR100DataModule(_NativeSizeDataModule):
    """CIFAR-100 (fine labels, 100 classes) from ``root/cifar-100-python``."""

    dataset_name = "CIFAR-100"
    data_dir = "cifar-100-python"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    _num_classes = 100

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.CIFAR100``, train or test."""
        return datasets.CIFAR100(self.root, train=split == "train", download=download)


class SVHNDataModule(_NativeSizeDataModule):
    """SVHN (train 73k / test 26k; ``extra`` unused) from ``root/{train,test}_32x32.mat``.

    Digit 0 is label 0 (torchvision maps the file's 10 to 0). Crop without flip: flipped digits are
    other symbols.
    """

    dataset_name = "SVHN"
    data_dir = ""
    flip = False
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    _num_classes = 10

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.SVHN``, train or test."""
        return datasets.SVHN(self.root, split=split, download=download)

    def path_of(self, split: str) -> str:
        """``root/<split>_32x32.mat`` (the .mat files lie directly in ``root``)."""
        return os.path.join(self.root, f"{split}_32x32.mat")


class _FineGrainedDataModule(TorchvisionDataModule):
    """224-px sets: ``RandomResizedCrop`` + flip for training, resize + centre crop for evaluation,
    ImageNet statistics."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    default_batch_size = 64
    default_image_size = 224

    def transforms(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """Train: ``RandomResizedCrop`` + flip; eval: ``Resize(image_size * 256 / 224)`` + centre crop."""
        return resized_crop_transforms(self.image_size)


class Flowers102DataModule(_FineGrainedDataModule):
    """Oxford Flowers-102 (102 classes) from ``root/flowers-102``; trains on train + val (2040 images),
    tests on the 6149-image test split."""

    dataset_name = "Flowers-102"
    data_dir = "flowers-102"
    train_splits = ("train", "val")
    _num_classes = 102

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.Flowers102`` with the file-naming image loader."""
        return datasets.Flowers102(self.root, split=split, download=download, loader=load_rgb_image)


class PetsDataModule(_FineGrainedDataModule):
    """Oxford-IIIT Pet (37 breeds) from ``root/oxford-iiit-pet``: trainval / test, category labels."""

    dataset_name = "Oxford-IIIT Pet"
    data_dir = "oxford-iiit-pet"
    train_splits = ("trainval",)
    _num_classes = 37

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.OxfordIIITPet`` with ``target_types="category"``."""
        return datasets.OxfordIIITPet(self.root, split=split, target_types="category", download=download)


class AircraftDataModule(_FineGrainedDataModule):
    """FGVC-Aircraft (100 variants) from ``root/fgvc-aircraft-2013b``: trainval / test."""

    dataset_name = "FGVC-Aircraft"
    data_dir = "fgvc-aircraft-2013b"
    train_splits = ("trainval",)
    _num_classes = 100

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.FGVCAircraft`` at ``annotation_level="variant"``."""
        return datasets.FGVCAircraft(
            self.root, split=split, annotation_level="variant", download=download, loader=load_rgb_image
        )


class CarsDataModule(_FineGrainedDataModule):
    """Stanford Cars (196 classes) from ``root/stanford_cars``: train / test.

    The data can no longer be downloaded (its URL is dead). With ``download=true`` and the data
    missing, torchvision is still asked to download and its refusal is reported with where to put
    the files.
    """

    dataset_name = "Stanford Cars"
    data_dir = "stanford_cars"
    _num_classes = 196
    download_hint = (
        "Stanford Cars cannot be downloaded any more: put it at <root>/stanford_cars as torchvision "
        "expects (devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat, "
        "cars_train/, cars_test/) and set `root` to <root>."
    )

    def _present(self, split: str) -> bool:
        base = self.path_of(split)
        annotations = (
            os.path.join(base, "devkit", "cars_train_annos.mat")
            if split == "train"
            else os.path.join(base, "cars_test_annos_withlabels.mat")
        )
        images = os.path.join(base, "cars_train" if split == "train" else "cars_test")
        return (
            os.path.isdir(os.path.join(base, "devkit"))
            and os.path.isfile(annotations)
            and os.path.isdir(images)
        )

    def open_split(self, split: str, download: bool) -> Dataset:
        """``torchvision.datasets.StanfordCars``; asks torchvision to download only when data is missing."""
        if download and not self._present(split):
            try:
                return datasets.StanfordCars(self.root, split=split, download=True, loader=load_rgb_image)
            except ValueError as err:
                raise DatasetNotFoundError(
                    f"{self.dataset_name} not found at '{self.path_of(split)}' and torchvision cannot "
                    f"download it (torchvision: {err}). {self.download_hint}"
                ) from err
        return datasets.StanfordCars(self.root, split=split, download=False, loader=load_rgb_image)
