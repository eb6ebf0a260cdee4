"""LightningDataModules for MADAO: digits (embedded), torchvision data sets, ImageNet and image folders.

All yield ``(images, labels)``: images float32 ``(B, 3, H, W)`` in ``[0, 1]`` (not normalised; use the
datamodule's ``mean``/``std`` after the policy), labels int64 ``(B,)``. Besides the Lightning loaders,
``hyper_dataloader()`` serves the held-out hyper-validation split for the MADAO hyper step.
"""

from .base import (
    CorruptImageError,
    DatasetNotFoundError,
    ImageDataModule,
    TransformedSubset,
    load_rgb_image,
    stratified_split,
)
from .digits import DigitsDataModule
from .folder import FolderDataModule, ImageNetDataModule
from .stream import BatchStream
from .torchvision_sets import (
    AircraftDataModule,
    CarsDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    Flowers102DataModule,
    PetsDataModule,
    SVHNDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "AircraftDataModule",
    "BatchStream",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CarsDataModule",
    "CorruptImageError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "Flowers102DataModule",
    "FolderDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "PetsDataModule",
    "SVHNDataModule",
    "TorchvisionDataModule",
    "TransformedSubset",
    "load_rgb_image",
    "stratified_split",
]
