"""Datamodules on ``ImageFolder`` trees: any user folder, and ImageNet laid out as train/ and val/ folders.

These cannot be downloaded; a missing folder raises :class:`DatasetNotFoundError` saying where to put
the images. Images are decoded by :func:`load_rgb_image`, so a corrupt file fails naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CorruptImageError,
    DatasetNotFoundError,
    ImageDataModule,
    load_rgb_image,
    resized_crop_transforms,
    stratified_split,
)


class _ImageFolderDataModule(ImageDataModule):
    """Shared logic: class discovery, folder opening with clear errors, optional held-out test split.

    Subclasses set ``train_dir``, ``test_dir`` (``None``: hold out ``test_fraction`` of the training
    folder as the test set) and ``layout_hint``.
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    layout_hint = ""
    default_batch_size = 64
    default_image_size = 224

    def __init__(
        self, *, test_fraction: float = 0.2, test_split_seed: int = 0, verify: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.verify, self._verified = bool(verify), False
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.test_split_seed = int(test_split_seed)
        self.test_indices: np.ndarray | None = None
        self._classes: list[str] | None = None
        self._train_folder: ImageFolder | None = None
        self.pool_indices: np.ndarray | None = None  # folder indices of the training source

    @property
    def train_dir(self) -> str:
        """Folder of training images, one sub-folder per class."""
        raise NotImplementedError

    @property
    def test_dir(self) -> str | None:
        """Folder of test images with the same class sub-folders, or ``None``."""
        raise NotImplementedError

    def _missing(self, path: str, err: Exception) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"no image-folder data set at '{path}' ({err}). This data cannot be downloaded "
            f"(`download` has no effect): {self.layout_hint}"
        )

    @property
    def class_names(self) -> list[str]:
        """The class folder names (label order)."""
        return list(self.classes)

    @property
    def classes(self) -> list[str]:
        """Sorted class folder names of the training folder (scanned once)."""
        if self._classes is None:
            try:
                self._classes, _ = find_classes(self.train_dir)
            except (FileNotFoundError, NotADirectoryError) as err:
                raise self._missing(self.train_dir, err) from err
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of class folders in the training folder."""
        return len(self.classes)

    def _open(self, path: str) -> ImageFolder:
        try:
            folder = ImageFolder(path, loader=load_rgb_image)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise self._missing(path, err) from err
        if folder.classes != self.classes:
            missing = sorted(set(self.classes) - set(folder.classes))
            extra = sorted(set(folder.classes) - set(self.classes))
            raise ValueError(
                f"the class folders of '{path}' differ from those of '{self.train_dir}' "
                f"(missing: {missing[:10]}, extra: {extra[:10]}); both need the same class sub-folders"
            )
        return folder

    def prepare_data(self) -> None:
        """With ``verify``: decode every image of both folders once, before training, and name every file
        that fails (instead of the first, mid-epoch)."""
        super().prepare_data()
        if not self.verify or self._verified:
            return
        bad = []
        for path in dict.fromkeys(
            p for d in (self.train_dir, self.test_dir) if d for p, _ in self._open(d).samples
        ):
            try:
                load_rgb_image(path)
            except CorruptImageError:
                bad.append(path)
        if bad:
            raise CorruptImageError(
                f"{len(bad)} image file(s) cannot be read: {', '.join(bad[:10])}{' ...' * (len(bad) > 10)}. "
                "Remove or replace them (re-download or re-export) and run again."
            )
        self._verified = True

    def _train_folder_and_pool(self) -> tuple[ImageFolder, np.ndarray]:
        if self._train_folder is None:
            folder = self._open(self.train_dir)
            labels = np.asarray(folder.targets, dtype=np.int64)
            pool = np.arange(len(labels))
            if self.test_dir is None:
                pool, self.test_indices = stratified_split(
                    pool, labels, self.test_fraction, self.test_split_seed, "test"
                )
            self._train_folder, self.pool_indices = folder, pool
        assert self.pool_indices is not None
        return self._train_folder, self.pool_indices

    def train_source(self, download: bool) -> tuple[Dataset, np.ndarray]:
        """The training folder (minus the held-out test part when there is no test folder)."""
        folder, pool = self._train_folder_and_pool()
        labels = np.asarray(folder.targets, dtype=np.int64)[pool]
        if self.test_dir is None:
            return Subset(folder, pool.tolist()), labels
        return folder, labels

    def test_source(self, download: bool) -> Dataset:
        """The test folder, or the held-out ``test_fraction`` of the training folder."""
        if self.test_dir is not None:
            return self._open(self.test_dir)
        folder, _ = self._train_folder_and_pool()
        assert self.test_indices is not None
        return Subset(folder, self.test_indices.tolist())

    def transforms(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        """Train: ``RandomResizedCrop`` + flip; eval: ``Resize(image_size * 256 / 224)`` + centre crop."""
        return resized_crop_transforms(self.image_size)


SPLIT_NAMES = ("test", "val", "valid", "validation")
"""Folder names read as the test split when they sit next to ``train/`` in a folder data set's root."""


class FolderDataModule(_ImageFolderDataModule):
    """Any image-classification data in ``ImageFolder`` layout: ``root/<class>/<image>``, or split folders
    ``root/train/<class>/<image>`` with ``root/test/...`` (or ``val/``): those are read as the splits, never
    as two classes named "train" and "test".

    Args:
        root: the training folder.
        test_root: an optional test folder with the same class sub-folders. Without it a stratified
            ``test_fraction`` of ``root`` is held out as the test set, seeded by ``test_split_seed``
            (fixed across run seeds, so every seed is scored on the same images). After ``setup``,
            ``test_indices`` and ``pool_indices`` hold the folder indices of the test set and of the
            training source; ``train_indices``/``hyper_indices`` index the training source (so the
            folder index of training sample k is ``pool_indices[train_indices[k]]``).
        test_fraction: fraction of ``root`` held out as the test set when there is no ``test_root``.
        test_split_seed: seed of that test split.
        The other arguments are :class:`ImageDataModule`'s; ``download`` has no effect.
    """

    layout_hint = (
        "put the training images at <root>/<class name>/<image file> (and optionally test images at "
        "<test_root>/<class name>/<image file>) and set `root` (and `test_root`)."
    )

    def __init__(self, root: str | None = None, test_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.test_root = None if test_root is None else os.path.expanduser(str(test_root))
        self._layout: tuple[str, str | None] | None = None

    def _split_layout(self) -> tuple[str, str | None]:
        """(training folder, test folder or None): ``root`` and ``test_root``, unless ``root`` holds split
        folders, ``train/`` and optionally one of :data:`SPLIT_NAMES`: then those (never read as classes)."""
        if self._layout is None:
            entries = set(os.listdir(self.root)) if os.path.isdir(self.root) else set()
            folders = {e for e in entries if os.path.isdir(os.path.join(self.root, e))}
            self._layout = (self.root, self.test_root)
            if "train" in folders:
                splits = [name for name in SPLIT_NAMES if name in folders]
                others = sorted(folders - {"train", *splits})
                if others:
                    raise ValueError(
                        f"'{self.root}' holds a train/ folder next to other folders ({others[:5]}): point "
                        "`root` at the folder of class folders, or keep only train/ and test/ (or val/)"
                    )
                test = os.path.join(self.root, splits[0]) if splits else None
                self._layout = (os.path.join(self.root, "train"), self.test_root or test)
        return self._layout

    @property
    def train_dir(self) -> str:
        """``root``, or ``root/train`` when ``root`` holds split folders."""
        return self._split_layout()[0]

    @property
    def test_dir(self) -> str | None:
        """``test_root``, else ``root/test`` (or another of ``SPLIT_NAMES``) next to ``root/train``."""
        return self._split_layout()[1]


class ImageNetDataModule(_ImageFolderDataModule):
    """ILSVRC-2012 as two ``ImageFolder`` trees: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``.

    The official validation set (50k) is the test set; 1 % of the training set is held out for
    hyper-validation by default. ``num_classes`` is the number of class folders (1000 for ImageNet).
    ImageNet cannot be downloaded automatically (licence); the validation images must be sorted into
    class folders (e.g. with the devkit's ground truth).
    """

    layout_hint = (
        "ImageNet cannot be downloaded automatically; put ILSVRC-2012 at <root>/train/<wnid>/*.JPEG and "
        "<root>/val/<wnid>/*.JPEG (validation images sorted into class folders) and set `root`."
    )

    default_root = "data/imagenet"
    default_batch_size = 256
    default_val_fraction = 0.01

    @property
    def train_dir(self) -> str:
        """``root/train``."""
        return os.path.join(self.root, "train")

    @property
    def test_dir(self) -> str:
        """``root/val``."""
        return os.path.join(self.root, "val")
