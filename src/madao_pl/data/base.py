"""Shared machinery of the image datamodules: the held-out split, the CPU transforms, the errors.

Every datamodule yields ``(images, labels)`` with images float32 ``(B, 3, H, W)`` in ``[0, 1]`` (not
normalised: the augmentation policy runs on device on ``[0, 1]`` images and the Lightning module
normalises with ``mean``/``std`` afterwards) and labels int64 ``(B,)``.

The training source is split once, stratified and seeded, into a training subset and a held-out
hyper-validation subset (MADAO's validation loss ``g``). The held-out subset serves both the hyper
step (``hyper_dataloader``, shuffled) and model selection curves (``val_dataloader``, sequential);
neither ever sees training-time augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DOWNLOAD_HINT = "Set `download=True` to download it there, or point `root` at a copy."


def default_workers(most: int = 4) -> int:
    """Loader workers for this machine: the CPU cores this process may use, less one for the training
    loop, at most ``most``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(most, cores - 1))


class DatasetNotFoundError(FileNotFoundError):
    """A data set is missing (or incomplete / fails its checksum) at the path the datamodule looked at.

    The message names that path and the fix: ``download=True`` for the downloadable sets, or where to put
    the files for those that cannot be downloaded (ImageNet, Stanford Cars, folders). Arguments are named in
    backticks, which ``madao_pl.run`` rewrites as their config keys (``dataset.download=true``).
    """


class CorruptImageError(OSError):
    """An image file could not be decoded; the message names the file so it can be removed or replaced."""


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to a 3-channel RGB PIL image (grayscale / palette / CMYK are converted).

    Replaces torchvision's ``default_loader`` so that an unreadable, truncated or non-image file fails
    with an error that names the file instead of PIL's anonymous "cannot identify image file".

    Raises:
        CorruptImageError: the file cannot be opened or fully decoded.
    """
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except OSError as err:  # includes PIL.UnidentifiedImageError and truncated-file errors
        raise CorruptImageError(
            f"cannot read image file '{os.fspath(path)}': {err}. Remove or replace this file "
            "(re-download or re-export it) and run again."
        ) from err


@contextmanager
def translate_not_found(name: str, path: str | os.PathLike, hint: str = DOWNLOAD_HINT) -> Iterator[None]:
    """Re-raise torchvision's ``RuntimeError("Dataset not found ...")`` as a :class:`DatasetNotFoundError`.

    Args:
        name: human name of the data set (for the message).
        path: the directory or file torchvision looked at.
        hint: how to fix it (download flag, or where to put the files).
    """
    try:
        yield
    except RuntimeError as err:
        if "not found" not in str(err).lower():
            raise
        raise DatasetNotFoundError(
            f"{name} not found (missing, incomplete or failing its checksum) at '{os.fspath(path)}' "
            f"(torchvision: {err}). {hint}"
        ) from err


def labels_of(dataset: Dataset) -> np.ndarray:
    """Class labels of a torchvision data set without decoding any image.

    Looks for the attribute each torchvision class keeps its labels in (``targets``: CIFAR /
    ImageFolder; ``labels``: SVHN; ``_labels``: Flowers102 / OxfordIIITPet / FGVCAircraft;
    ``_samples``: StanfordCars) and returns them as an int64 array ``(N,)``.
    """
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return np.asarray(values, dtype=np.int64).reshape(-1)
    samples = getattr(dataset, "_samples", None)
    if samples is not None:
        return np.asarray([label for _, label in samples], dtype=np.int64)
    raise TypeError(
        f"cannot read the labels of {type(dataset).__name__} without decoding it: expected one of the "
        "attributes targets, labels, _labels or _samples"
    )


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, held_out: float | int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held-out), stratified by ``labels[indices]``, seeded, disjoint.

    Args:
        indices: candidate indices ``(N,)`` into ``labels``.
        labels: class label of every sample of the source.
        held_out: fraction in (0, 1) or absolute count of the held-out part (sklearn's ``test_size``:
            a fraction is rounded up).
        seed: ``random_state`` of the split; the same seed gives the same split.
        what: name of the held-out part, for the error message.

    Returns:
        ``(kept, held_out)`` index arrays, each sorted.

    Raises:
        ValueError: stratification is impossible (a class with a single sample, or fewer held-out
            samples than classes), with the fix.
    """
    try:
        kept, held = train_test_split(
            indices, test_size=held_out, stratify=labels[indices], random_state=seed, shuffle=True
        )
    except ValueError as err:
        raise ValueError(
            f"cannot make a stratified {what} split of {len(indices)} samples "
            f"({len(np.unique(labels[indices]))} classes, held-out size {held_out}): {err}. Every class "
            "needs at least 2 samples and the held-out part at least one sample per class: use more data "
            "(raise or unset `limit_train`) or a larger fraction."
        ) from err
    return np.sort(np.asarray(kept, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


class TransformedSubset(Dataset):
    """The samples ``indices`` of ``source`` with ``transform`` applied to the image.

    Several subsets share one source with different transforms (augmented training subset,
    un-augmented held-out subset). Returns ``(image, label)`` with the image a plain float tensor
    ``(3, H, W)`` (tv_tensor wrappers removed so collation gives a plain tensor) and the label an int.
    """

    def __init__(self, source: Dataset, indices: Sequence[int], transform: Callable[[Any], Any] | None):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        image, label = self.source[int(self.indices[position])]
        if self.transform is not None:
            image = self.transform(image)
        return image.as_subclass(torch.Tensor), int(label)


def crop_flip_transforms(image_size: int, padding: int, flip: bool) -> tuple[v2.Compose, v2.Compose]:
    """CIFAR-style CPU transforms: (train, eval) for images already at ``image_size``.

    Train: zero-padded random crop (+ horizontal flip when ``flip``); eval: conversion only. Both end
    in float32 ``[0, 1]`` tensors with 3 channels.
    """
    head = [v2.ToImage(), v2.RGB()]
    tail = [v2.ToDtype(torch.float32, scale=True)]
    augment: list[Any] = [v2.RandomCrop(image_size, padding=padding)]
    if flip:
        augment.append(v2.RandomHorizontalFlip())
    return v2.Compose(head + augment + tail), v2.Compose(head + tail)


def resized_crop_transforms(image_size: int) -> tuple[v2.Compose, v2.Compose]:
    """ImageNet-style CPU transforms: (train, eval).

    Train: ``RandomResizedCrop(image_size)`` + horizontal flip; eval: resize the short side to
    ``int(image_size * 256 / 224)`` then ``CenterCrop(image_size)``. Both end in float32 ``[0, 1]``
    tensors with 3 channels.
    """
    head = [v2.ToImage(), v2.RGB()]
    tail = [v2.ToDtype(torch.float32, scale=True)]
    train = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    evaluate = [v2.Resize(int(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(head + train + tail), v2.Compose(head + evaluate + tail)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ImageDataModule(pl.LightningDataModule):
    """Base class of the image-classification datamodules used by MADAO.

    Subclasses provide the training and test sources (a ``Dataset`` of ``(image, int label)`` with no
    transform, plus the training labels), the class constants ``mean``/``std`` and the transforms.
    This class does the seeded stratified hyper-validation split and builds the four loaders.

    Args:
        root: directory the data set lives in (or is downloaded to).
        batch_size: training batch size.
        eval_batch_size: batch size of ``val_dataloader``/``test_dataloader`` (``None``: ``batch_size``).
        hyper_batch_size: batch size of ``hyper_dataloader``, the held-out batch of each hyper step
            (``None``: ``batch_size``, as the paper); a larger one lowers the hypergradient's noise.
        num_workers: DataLoader worker processes (None: :func:`default_workers`).
        val_fraction: fraction of the training source held out for hyper-validation, in (0, 1).
        seed: seed of the hyper-validation split (and of the ``limit_train`` subsample).
        download: download the data if missing (on rank 0, in ``prepare_data``).
        image_size: side of the square images the loaders yield.
        pin_memory: pin host memory in the loaders (for GPU training).
        limit_train: optional cap on the training source (training + hyper-validation together):
            a stratified, seeded subsample of this many samples is taken *before* the split, so the
            training subset has about ``limit_train * (1 - val_fraction)`` samples. For quick runs.

    Attributes:
        num_classes: number of classes of the data set.
        mean, std: per-channel statistics of the training images in ``[0, 1]`` (for the module's
            normalisation; the loaders do not normalise).
        train_indices, hyper_indices: after ``setup``: the sorted, disjoint indices into the training
            source of the training and hyper-validation subsets.
        source_labels: after ``setup``: the label of every sample of the training source.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    _num_classes: int = 0
    # What `None` means for root, batch_size, val_fraction and image_size: subclasses change these
    # instead of repeating the constructor.
    default_root: ClassVar[str] = "data"
    default_batch_size: ClassVar[int] = 128
    default_val_fraction: ClassVar[float] = 0.1
    default_image_size: ClassVar[int] = 32

    def __init__(
        self,
        root: str | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int | None = 0,
        val_fraction: float | None = None,
        seed: int = 0,
        download: bool = False,
        image_size: int | None = None,
        pin_memory: bool = False,
        limit_train: int | None = None,
        hyper_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        root = self.default_root if root is None else root
        batch_size = self.default_batch_size if batch_size is None else batch_size
        val_fraction = self.default_val_fraction if val_fraction is None else val_fraction
        image_size = self.default_image_size if image_size is None else image_size
        if batch_size < 1 or any(b is not None and b < 1 for b in (eval_batch_size, hyper_batch_size)):
            raise ValueError(
                f"batch sizes must be >= 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}, "
                f"hyper_batch_size={hyper_batch_size}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in (0, 1) (MADAO needs a held-out split), got {val_fraction}"
            )
        if num_workers is None:
            num_workers = default_workers()
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self._check_image_size(int(image_size))
        if limit_train is not None and limit_train < 2:
            raise ValueError(f"limit_train must be None or >= 2, got {limit_train}")
        self.root = os.path.expanduser(str(root))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else int(batch_size)
        self.hyper_batch_size = int(hyper_batch_size) if hyper_batch_size is not None else int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.download = bool(download)
        self.image_size = int(image_size)
        self.pin_memory = bool(pin_memory)
        self.limit_train = None if limit_train is None else int(limit_train)
        self.train_indices: np.ndarray | None = None
        self.hyper_indices: np.ndarray | None = None
        self.source_labels: np.ndarray | None = None
        self._train_set: TransformedSubset | None = None
        self._hyper_set: TransformedSubset | None = None
        self._test_set: TransformedSubset | None = None
        self._hyper_loaders: dict[tuple[int, int] | None, DataLoader] = {}

    def _check_image_size(self, image_size: int) -> None:
        """Refuse an image size this data set cannot be used at (subclasses narrow it)."""
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")

    # ---------------------------------------------------------------- what subclasses provide
    @property
    def num_classes(self) -> int:
        """Number of classes (the network's output width)."""
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        """The classes' names, label order (class-conditional policies name theirs so): "0", "1", ...
        unless the data set has names (an image folder's class folders)."""
        return [str(c) for c in range(self.num_classes)]

    def train_source(self, download: bool) -> tuple[Dataset, np.ndarray]:
        """The full training source (no transform) and its labels ``(N,)``; ``download`` if missing."""
        raise NotImplementedError

    def test_source(self, download: bool) -> Dataset:
        """The test set (no transform); ``download`` if missing."""
        raise NotImplementedError

    def transforms(self) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
        """(train, eval) CPU transforms, each mapping a source image to a float ``(3, S, S)`` tensor
        (``None``: the source already yields such tensors)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Download the training and test data when ``download`` is set (Lightning: rank 0 only)."""
        if self.download:
            self.train_source(download=True)
            self.test_source(download=True)

    def setup(self, stage: str | None = None) -> None:
        """Open the data and make the split (idempotent; ``stage`` picks fit / test parts)."""
        if stage in (None, "fit", "validate") and self.train_indices is None:
            self._setup_train()
        if stage in (None, "test", "predict") and self._test_set is None:
            _, eval_transform = self.transforms()
            test = self.test_source(download=self._download_in_setup())
            self._test_set = TransformedSubset(test, np.arange(len(test)), eval_transform)

    def _download_in_setup(self) -> bool:
        # Under DDP Lightning has downloaded in prepare_data on rank 0; ranks must not race to download.
        return self.download and not _distributed()

    def _setup_train(self) -> None:
        source, labels = self.train_source(download=self._download_in_setup())
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(source):
            raise RuntimeError(f"{len(labels)} labels for {len(source)} training samples")
        if len(labels) == 0:
            raise ValueError(f"the training data at '{self.root}' is empty")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"training labels span [{labels.min()}, {labels.max()}], outside [0, {self.num_classes - 1}] "
                f"for {type(self).__name__} with num_classes={self.num_classes}"
            )
        pool = np.arange(len(labels))
        if self.limit_train is not None and self.limit_train < len(pool):
            pool, _ = stratified_split(pool, labels, len(pool) - self.limit_train, self.seed, "limit_train")
        train, hyper = stratified_split(pool, labels, self.val_fraction, self.seed, "hyper-validation")
        train_transform, eval_transform = self.transforms()
        self.source_labels = labels
        self.train_indices, self.hyper_indices = train, hyper
        self._train_set = TransformedSubset(source, train, train_transform)
        self._hyper_set = TransformedSubset(source, hyper, eval_transform)

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def _fit_sets(self) -> tuple[TransformedSubset, TransformedSubset]:
        if self._train_set is None or self._hyper_set is None:
            self.setup("fit")
        assert self._train_set is not None and self._hyper_set is not None
        return self._train_set, self._hyper_set

    def train_dataloader(self) -> DataLoader:
        """Training subset, CPU crop/flip, shuffled, ``drop_last=True``."""
        train, _ = self._fit_sets()
        if len(train) < self.batch_size:
            raise ValueError(
                f"the training subset has {len(train)} samples, fewer than batch_size={self.batch_size}, "
                "so drop_last leaves no batch: lower the batch size or raise `limit_train`"
            )
        return self._loader(train, self.batch_size, shuffle=True, drop_last=True)

    def hyper_dataloader(self, num_replicas: int | None = None, rank: int | None = None) -> DataLoader:
        """Hyper-validation batches for the MADAO hyper step: un-augmented, shuffled, ``hyper_batch_size``.

        When ``torch.distributed`` is initialised (or ``num_replicas``/``rank`` are given) a
        ``DistributedSampler`` seeded by ``seed`` gives each rank its own part, padded so all ranks
        have the same number of batches; the caller calls ``loader.sampler.set_epoch(e)`` to reshuffle.
        ``drop_last`` is on whenever a rank's part holds at least one full batch. The loader is built
        once per (num_replicas, rank) and returned again on later calls, so persistent workers are
        reused across hyper-validation epochs.

        Args:
            num_replicas: world size (default: from ``torch.distributed`` when initialised).
            rank: this process's rank (default: from ``torch.distributed`` when initialised).
        """
        _, hyper = self._fit_sets()
        if num_replicas is None and rank is None and _distributed():
            num_replicas, rank = dist.get_world_size(), dist.get_rank()
        if (num_replicas is None) != (rank is None):
            raise ValueError("give both num_replicas and rank, or neither")
        key = None if num_replicas is None or rank is None else (int(num_replicas), int(rank))
        if key not in self._hyper_loaders:
            if key is None:
                size = self.hyper_batch_size
                loader = self._loader(hyper, size, shuffle=True, drop_last=len(hyper) >= size)
            else:
                sampler = DistributedSampler(
                    hyper, num_replicas=key[0], rank=key[1], shuffle=True, seed=self.seed
                )
                size = self.hyper_batch_size
                loader = self._loader(hyper, size, sampler=sampler, drop_last=len(sampler) >= size)
            self._hyper_loaders[key] = loader
        return self._hyper_loaders[key]

    def val_dataloader(self) -> DataLoader:
        """The held-out hyper-validation subset, un-augmented, in order (validation curves)."""
        _, hyper = self._fit_sets()
        return self._loader(hyper, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test set, un-augmented, in order; under DDP each rank takes its own shard with no
        padding, so every test image is counted exactly once."""
        if self._test_set is None:
            self.setup("test")
        assert self._test_set is not None
        sampler = UnpaddedShardSampler(self._test_set) if _distributed() else None
        return self._loader(self._test_set, self.eval_batch_size, shuffle=False, sampler=sampler)


class UnpaddedShardSampler(DistributedSampler):
    """Rank r of W takes indices r, r + W, r + 2W, ... and nothing else: no duplicated padding
    (unlike DistributedSampler), so metrics summed over ranks count each sample once. Ranks may get
    one batch more or less, so use it only where no per-batch collective runs (evaluation).
    A DistributedSampler subclass, so Lightning keeps it instead of injecting its own."""

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
