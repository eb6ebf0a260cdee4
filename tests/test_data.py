"""Datamodules on tiny copies of each data set written in its real on-disk format (no network).

torchvision verifies CIFAR / SVHN / Flowers102 files by MD5 against the published archives; tiny copies
cannot match, so the tests that load them replace only ``torchvision.datasets.utils.check_md5`` (the
comparison inside ``check_integrity``) by ``True``. File-existence checks and all loading code run as
they do on the real data. ``test_cifar_md5_is_really_checked`` shows the check is live without it.
"""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
import torchvision.datasets.utils as tv_utils
from PIL import Image
from torch.utils.data import DataLoader

from madao_pl.data import (
    AircraftDataModule,
    CarsDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CorruptImageError,
    DatasetNotFoundError,
    DigitsDataModule,
    Flowers102DataModule,
    FolderDataModule,
    ImageDataModule,
    ImageNetDataModule,
    PetsDataModule,
    SVHNDataModule,
)
from madao_pl.data.digits import digits_tensors

RNG = np.random.default_rng(0)


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accept any MD5 (tiny copies cannot match the published checksums); existence is still checked."""
    monkeypatch.setattr(tv_utils, "check_md5", lambda fpath, md5, **kwargs: True)


def write_jpeg(path: Path, size: tuple[int, int] = (20, 14), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)


def balanced_labels(classes: list[int], per_class: int) -> np.ndarray:
    labels = np.repeat(np.asarray(classes), per_class)
    return RNG.permutation(labels)


def all_batches(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def check_batch(images: torch.Tensor, labels: torch.Tensor, size: int, num_classes: int) -> None:
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape[1:] == (3, size, size) and labels.shape == (images.shape[0],)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() < num_classes


def check_datamodule(dm: ImageDataModule, n_source: int, test_labels: np.ndarray) -> None:
    """Split sizes / disjointness, and one batch from every loader; the test loader against its labels."""
    dm.setup()
    train, hyper = dm.train_indices, dm.hyper_indices
    assert len(train) + len(hyper) == n_source
    assert len(np.intersect1d(train, hyper)) == 0
    assert len(hyper) == int(np.ceil(dm.val_fraction * n_source))
    for loader in (dm.train_dataloader(), dm.hyper_dataloader(), dm.val_dataloader()):
        check_batch(*next(iter(loader)), dm.image_size, dm.num_classes)
    images, labels = all_batches(dm.test_dataloader())
    check_batch(images, labels, dm.image_size, dm.num_classes)
    np.testing.assert_array_equal(labels.numpy(), test_labels)
    pickle.dumps(dm.train_dataloader().dataset)  # spawn-started workers must be able to receive it


# ---------------------------------------------------------------------------------------------- digits
def test_digits_loaders_split_and_fixed_test_set() -> None:
    dm = DigitsDataModule(batch_size=32, seed=0)
    check_datamodule(dm, 1347, dm.test_source(False).tensors[1].numpy())
    assert len(dm.test_dataloader().dataset) == 450
    assert (len(dm.train_indices), len(dm.hyper_indices)) == (1212, 135)
    images, _ = next(iter(dm.train_dataloader()))
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    other = DigitsDataModule(batch_size=32, seed=5)
    other.setup()
    assert torch.equal(other.test_source(False).tensors[0], dm.test_source(False).tensors[0])


def test_digits_upscaling_and_constants_match_data() -> None:
    images, labels = digits_tensors(32)
    assert images.shape == (1797, 3, 32, 32) and labels.shape == (1797,)
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images / 16.0)
    # Bilinear upscaling by 4 preserves the image mean up to border effects of a few percent.
    assert torch.allclose(images[:, 0].double().mean(dim=(1, 2)), raw.mean(dim=(1, 2)), atol=0.03)
    assert images.min() >= 0 and images.max() <= 1
    dm = DigitsDataModule()
    dm.setup("fit")
    source = dm.train_source(False)[0].tensors[0].double()
    np.testing.assert_allclose(source.mean(dim=(0, 2, 3)).numpy(), dm.mean, atol=1e-4)
    np.testing.assert_allclose(source.std(dim=(0, 2, 3), unbiased=False).numpy(), dm.std, atol=1e-4)


def test_split_is_stratified_seeded_and_disjoint() -> None:
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup("fit")
    np.testing.assert_array_equal(a.hyper_indices, b.hyper_indices)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert not np.array_equal(a.hyper_indices, c.hyper_indices)
    labels = a.source_labels
    pool = np.bincount(labels, minlength=10)
    held = np.bincount(labels[a.hyper_indices], minlength=10)
    assert np.all(np.abs(held - 0.1 * pool) <= 1.0)  # stratified: per-class share within rounding
    assert np.array_equal(np.union1d(a.train_indices, a.hyper_indices), np.arange(1347))


def test_limit_train_caps_the_source_stratified() -> None:
    dm = DigitsDataModule(limit_train=200, val_fraction=0.1, seed=3)
    dm.setup("fit")
    assert len(dm.train_indices) + len(dm.hyper_indices) == 200 and len(dm.hyper_indices) == 20
    counts = np.bincount(dm.source_labels[np.union1d(dm.train_indices, dm.hyper_indices)], minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21


def test_hyper_and_val_loaders_are_unaugmented() -> None:
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    source_images = dm.train_source(False)[0].tensors[0]
    val_images, val_labels = all_batches(dm.val_dataloader())
    assert torch.equal(val_images, source_images[torch.from_numpy(dm.hyper_indices)])
    np.testing.assert_array_equal(val_labels.numpy(), dm.source_labels[dm.hyper_indices])
    loader = dm.hyper_dataloader(num_replicas=1, rank=0)
    positions = list(loader.sampler)
    hyper_images, _ = all_batches(loader)
    expected = source_images[torch.from_numpy(dm.hyper_indices[positions[: len(hyper_images)]])]
    assert torch.equal(hyper_images, expected)
    # Training crops differ from the source: padding 2 shifts most images (the centred crop of 25 keeps one).
    torch.manual_seed(0)
    train_images, _ = next(iter(dm.train_dataloader()))
    sources = source_images[torch.from_numpy(dm.train_indices)]
    unchanged = sum(any(torch.equal(image, source) for source in sources) for image in train_images)
    assert unchanged <= len(train_images) // 4


def test_hyper_loader_distributed_sampler_partitions_per_rank() -> None:
    dm = DigitsDataModule(batch_size=16, seed=4)
    dm.setup("fit")
    n = len(dm.hyper_indices)  # 135: padded to 136, 68 per rank
    loaders = [dm.hyper_dataloader(num_replicas=2, rank=r) for r in (0, 1)]
    for loader in loaders:
        loader.sampler.set_epoch(3)
    parts = [list(loader.sampler) for loader in loaders]
    assert len(parts[0]) == len(parts[1]) == 68
    assert set(parts[0]) | set(parts[1]) == set(range(n))
    assert len(set(parts[0]) & set(parts[1])) <= 1  # one padded duplicate at most
    assert all(loader.drop_last for loader in loaders) and len(loaders[0]) == 68 // 16
    _, labels = all_batches(loaders[1])
    np.testing.assert_array_equal(labels.numpy(), dm.source_labels[dm.hyper_indices[parts[1][:64]]])
    loaders[0].sampler.set_epoch(4)
    assert list(loaders[0].sampler) != parts[0]  # reshuffled each epoch
    same = DigitsDataModule(batch_size=16, seed=4)
    same.setup("fit")
    again = same.hyper_dataloader(num_replicas=2, rank=0)
    again.sampler.set_epoch(3)
    assert list(again.sampler) == parts[0]  # every rank derives the same permutation from the seed
    assert dm.hyper_dataloader(num_replicas=2, rank=1) is loaders[1]  # built once, reused
    with pytest.raises(ValueError, match="both num_replicas and rank"):
        dm.hyper_dataloader(num_replicas=2)


def test_small_hyper_split_keeps_its_partial_batch() -> None:
    dm = DigitsDataModule(batch_size=64, limit_train=300, val_fraction=0.1)
    dm.setup("fit")
    loader = dm.hyper_dataloader()
    assert not loader.drop_last and len(list(loader)) == 1
    assert dm.train_dataloader().drop_last


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.0)
    with pytest.raises(ValueError, match="image_size=32"):
        CIFAR10DataModule(image_size=64)
    dm = DigitsDataModule(batch_size=512, limit_train=100)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="stratified hyper-validation split"):
        DigitsDataModule(limit_train=40, val_fraction=0.1).setup("fit")


# ---------------------------------------------------------------------------------------------- CIFAR
def cifar_pixels(n: int, offset: int) -> np.ndarray:
    """Rows of 3072 bytes whose image k has the constant value (offset + 3k + c) % 256 in channel c."""
    values = (offset + 3 * np.arange(n)[:, None] + np.arange(3)[None, :]) % 256
    return np.repeat(values, 1024, axis=1).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_labels = []
    for i in range(1, 6):
        labels = balanced_labels(list(range(10)), per_batch // 10)
        train_labels.append(labels)
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": cifar_pixels(per_batch, 7 * i), "labels": labels.tolist()}, f)
    test_labels = balanced_labels(list(range(10)), 2)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": cifar_pixels(20, 0), "labels": test_labels.tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return np.concatenate(train_labels), test_labels


def test_cifar10_real_format(tmp_path: Path, no_md5: None) -> None:
    train_labels, test_labels = write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=8)
    check_datamodule(dm, 100, test_labels)
    np.testing.assert_array_equal(dm.source_labels, train_labels)
    images, _ = all_batches(dm.test_dataloader())
    # Exact pixel oracle: channel c of test image k is (3k + c) / 255 (no normalisation, CHW order).
    expected = torch.from_numpy(cifar_pixels(20, 0).reshape(20, 3, 32, 32).astype(np.float32))
    assert torch.allclose(images, expected / 255.0, rtol=0, atol=1e-7)
    assert torch.equal((images * 255).round(), expected)
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.num_classes == 10


def test_cifar_md5_is_really_checked(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="checksum") as info:
        CIFAR10DataModule(root=str(tmp_path)).setup()
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_cifar_download_skips_present_data_and_reports_failures(
    tmp_path: Path, no_md5: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(
        DatasetNotFoundError, match="could not download CIFAR-10.*network is unreachable"
    ) as raised:
        CIFAR10DataModule(root=str(tmp_path / "empty"), download=True).prepare_data()
    assert "place torchvision's files for CIFAR-10 at" in str(raised.value)
    assert "set `download=true`" not in str(raised.value).lower()  # it was set: no contradiction
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), download=True, batch_size=8)
    dm.prepare_data()  # present: torchvision's download() returns before touching the network
    dm.setup()
    assert len(dm.train_indices) == 90


def test_cifar100_real_format(tmp_path: Path, no_md5: None) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    classes = [0, 17, 42, 63, 99]
    train_labels = balanced_labels(classes, 10)
    test_labels = balanced_labels(classes, 2)
    for name, labels in (("train", train_labels), ("test", test_labels)):
        entry = {
            "data": cifar_pixels(len(labels), 1),
            "fine_labels": labels.tolist(),
            "coarse_labels": [0] * len(labels),
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=8)
    check_datamodule(dm, 50, test_labels)
    assert dm.num_classes == 100
    np.testing.assert_array_equal(np.bincount(dm.source_labels[dm.hyper_indices], minlength=100)[classes], 1)


# ---------------------------------------------------------------------------------------------- SVHN
def test_svhn_real_format(tmp_path: Path, no_md5: None) -> None:
    def write(name: str, labels: np.ndarray) -> None:
        n = len(labels)
        x = np.zeros((32, 32, 3, n), dtype=np.uint8)
        x[:, :, :, :] = ((5 * np.arange(n)[None, :] + np.arange(3)[:, None]) % 256).astype(np.uint8)
        sio.savemat(tmp_path / name, {"X": x, "y": labels.reshape(n, 1).astype(np.uint8)})

    train_file_labels = balanced_labels(list(range(1, 11)), 6)  # the file's 10 is digit 0
    test_file_labels = balanced_labels(list(range(1, 11)), 1)
    write("train_32x32.mat", train_file_labels)
    write("test_32x32.mat", test_file_labels)
    dm = SVHNDataModule(root=str(tmp_path), batch_size=8, val_fraction=0.2)
    check_datamodule(dm, 60, test_file_labels % 10)
    np.testing.assert_array_equal(dm.source_labels, train_file_labels % 10)
    images, _ = all_batches(dm.test_dataloader())
    expected = (5 * torch.arange(10)[:, None] + torch.arange(3)[None, :]).float() / 255.0
    assert torch.allclose(images[:, :, 7, 11], expected, rtol=0, atol=1e-7)
    assert not any("Flip" in type(t).__name__ for t in dm.transforms()[0].transforms)
    assert any("Flip" in type(t).__name__ for t in CIFAR10DataModule().transforms()[0].transforms)


# ---------------------------------------------------------------------------------------------- fine-grained
def test_flowers102_real_format(tmp_path: Path, no_md5: None) -> None:
    base = tmp_path / "flowers-102"
    classes = [1, 30, 60, 90, 102]  # 1-based in imagelabels.mat
    per_split = {"trnid": 2, "valid": 2, "tstid": 1}
    labels, ids, next_id = [], {key: [] for key in per_split}, 1
    for key, count in per_split.items():
        for cls in classes:
            for _ in range(count):
                write_jpeg(base / "jpg" / f"image_{next_id:05d}.jpg")
                labels.append(cls)
                ids[key].append(next_id)
                next_id += 1
    sio.savemat(base / "imagelabels.mat", {"labels": np.asarray(labels)[None, :]})
    sio.savemat(base / "setid.mat", {key: np.asarray(v)[None, :] for key, v in ids.items()})
    dm = Flowers102DataModule(root=str(tmp_path), batch_size=4, image_size=32, val_fraction=0.25)
    label_of = dict(zip(range(1, next_id), np.asarray(labels) - 1, strict=True))
    check_datamodule(dm, 20, np.asarray([label_of[i] for i in ids["tstid"]]))
    expected_source = [label_of[i] for i in ids["trnid"] + ids["valid"]]  # train then val
    np.testing.assert_array_equal(dm.source_labels, expected_source)
    assert dm.num_classes == 102


def test_pets_real_format(tmp_path: Path) -> None:
    base = tmp_path / "oxford-iiit-pet"
    (base / "annotations" / "trimaps").mkdir(parents=True)
    breeds = {1: "Abyssinian", 2: "american_bulldog", 20: "great_pyrenees", 37: "yorkshire_terrier"}
    test_labels = []
    for split, count in (("trainval", 4), ("test", 1)):
        lines = []
        for label, breed in breeds.items():
            for i in range(count):
                name = f"{breed}_{split}{i}"
                write_jpeg(base / "images" / f"{name}.jpg", size=(18, 25))
                lines.append(f"{name} {label} {1 if breed[0].isupper() else 2} 1")
                if split == "test":
                    test_labels.append(label - 1)
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    dm = PetsDataModule(root=str(tmp_path), batch_size=4, image_size=32, val_fraction=0.25)
    check_datamodule(dm, 16, np.asarray(test_labels))
    assert set(dm.source_labels) == {0, 1, 19, 36} and dm.num_classes == 37


def test_aircraft_real_format(tmp_path: Path) -> None:
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = [f"Model {i:03d}-A" for i in range(100)]  # names with spaces, like "Boeing 737-700"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    used = [3, 50, 99]
    test_labels = []
    for split, count in (("trainval", 4), ("test", 2)):
        lines = []
        for cls in used:
            for i in range(count):
                image_id = f"{split[:2]}{cls:03d}{i}"
                write_jpeg(data / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {variants[cls]}")
                if split == "test":
                    test_labels.append(cls)
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    dm = AircraftDataModule(root=str(tmp_path), batch_size=4, image_size=32, val_fraction=0.25)
    check_datamodule(dm, 12, np.asarray(test_labels))
    assert set(dm.source_labels) == set(used) and dm.num_classes == 100


def write_cars(root: Path) -> np.ndarray:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    sio.savemat(
        base / "devkit" / "cars_meta.mat",
        {"class_names": np.asarray([f"Car {i}" for i in range(196)], dtype=object)},
    )
    test_labels = []
    for split, count, annotation_file in (
        ("train", 3, base / "devkit" / "cars_train_annos.mat"),
        ("test", 1, base / "cars_test_annos_withlabels.mat"),
    ):
        records = np.zeros(3 * count, dtype=[("fname", object), ("class", object)])
        for k, cls in enumerate(np.repeat([1, 100, 196], count)):  # 1-based class ids
            fname = f"{k:05d}.jpg"
            write_jpeg(base / f"cars_{split}" / fname)
            records[k] = (fname, int(cls))
            if split == "test":
                test_labels.append(cls - 1)
        sio.savemat(annotation_file, {"annotations": records})
    return np.asarray(test_labels)


def test_cars_real_format_and_dead_download(tmp_path: Path) -> None:
    test_labels = write_cars(tmp_path)
    dm = CarsDataModule(root=str(tmp_path), batch_size=3, image_size=32, val_fraction=1 / 3, download=True)
    dm.prepare_data()  # data present: torchvision is not asked to download
    check_datamodule(dm, 9, test_labels)
    assert set(dm.source_labels) == {0, 99, 195} and dm.num_classes == 196
    with pytest.raises(DatasetNotFoundError, match="original URL is broken") as info:
        CarsDataModule(root=str(tmp_path / "none"), download=True).prepare_data()
    assert str(tmp_path / "none" / "stanford_cars") in str(info.value)


# ---------------------------------------------------------------------------------------------- folders
def write_folder(
    root: Path, classes: list[str], per_class: int, ext: str = "JPEG", mode: str = "RGB"
) -> None:
    for cls in classes:
        for i in range(per_class):
            write_jpeg(root / cls / f"{cls}_{i}.{ext}", size=(24, 17), mode=mode)


def test_imagenet_folders(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537", "n09999999"]
    write_folder(tmp_path / "train", wnids, 10)
    write_folder(tmp_path / "val", wnids, 2)
    dm = ImageNetDataModule(root=str(tmp_path), batch_size=4, image_size=32, val_fraction=0.1, num_workers=0)
    assert dm.num_classes == 3
    check_datamodule(dm, 30, np.repeat([0, 1, 2], 2))


def test_folder_held_out_test_split(tmp_path: Path) -> None:
    write_folder(tmp_path, ["cat", "dog", "eel", "fox"], 10, ext="png", mode="L")  # grayscale sources
    dms = [FolderDataModule(root=str(tmp_path), batch_size=4, image_size=16, seed=s) for s in (0, 1)]
    for dm in dms:
        dm.setup()
    first, second = dms
    assert first.num_classes == 4
    np.testing.assert_array_equal(first.test_indices, second.test_indices)  # test split fixed across seeds
    assert not np.array_equal(first.hyper_indices, second.hyper_indices)
    assert len(first.test_indices) == 8 and np.all(np.bincount(np.arange(40)[first.test_indices] // 10) == 2)
    assert len(first.train_indices) + len(first.hyper_indices) == 32
    # train/hyper index the training pool (a subset of the folder) which excludes the test images
    pool = first.pool_indices
    assert len(np.intersect1d(pool, first.test_indices)) == 0 and len(pool) == 32
    np.testing.assert_array_equal(first.source_labels, pool // 10)
    images, labels = all_batches(first.test_dataloader())
    check_batch(images, labels, 16, 4)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    np.testing.assert_array_equal(labels.numpy(), first.test_indices // 10)
    check_batch(*next(iter(first.train_dataloader())), 16, 4)


def test_folder_with_test_root_and_class_mismatch(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ["a", "b"], 10)
    write_folder(tmp_path / "test", ["a", "b"], 3)
    write_folder(tmp_path / "other", ["a", "c"], 1)
    dm = FolderDataModule(
        root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), batch_size=4, image_size=24
    )
    check_datamodule(dm, 20, np.repeat([0, 1], 3))
    bad = FolderDataModule(root=str(tmp_path / "train"), test_root=str(tmp_path / "other"), image_size=24)
    with pytest.raises(ValueError, match="missing: \\['b'\\], extra: \\['c'\\]"):
        bad.setup("test")


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_folder_root_with_split_folders_reads_them_as_splits(tmp_path: Path, test_name: str) -> None:
    """root/train/<class> + root/test/<class>: two splits of the same classes, not classes named train/test;
    train/ next to class folders is refused with the fix."""
    write_folder(tmp_path / "train", ["a", "b", "c"], 10)
    write_folder(tmp_path / test_name, ["a", "b", "c"], 2)
    dm = FolderDataModule(root=str(tmp_path), batch_size=4, image_size=24)
    assert dm.classes == ["a", "b", "c"]
    check_datamodule(dm, 30, np.repeat([0, 1, 2], 2))
    write_folder(tmp_path / "d", ["x"], 1)
    with pytest.raises(ValueError, match=r"holds a train/ folder next to other folders \(\['d'\]\)"):
        FolderDataModule(root=str(tmp_path), image_size=24).setup("fit")


@pytest.mark.parametrize(("damage", "num_workers"), [("garbage", 0), ("truncated", 0), ("garbage", 1)])
def test_corrupt_image_names_the_file(tmp_path: Path, damage: str, num_workers: int) -> None:
    write_folder(tmp_path / "train", ["a", "b"], 4)
    write_folder(tmp_path / "test", ["a", "b"], 2)
    bad = tmp_path / "test" / "b" / "b_1.JPEG"
    good = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if damage == "garbage" else good[: len(good) // 2])
    dm = FolderDataModule(
        root=str(tmp_path / "train"),
        test_root=str(tmp_path / "test"),
        batch_size=2,
        image_size=16,
        val_fraction=0.5,
        num_workers=num_workers,
    )
    with pytest.raises(CorruptImageError, match=f"cannot read image file '{bad}'"):
        all_batches(dm.test_dataloader())


def test_verify_names_every_unreadable_file_before_training(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", ["a", "b"], 5)
    write_folder(tmp_path / "test", ["a", "b"], 2)
    broken = [tmp_path / "train" / "a" / "a_3.JPEG", tmp_path / "test" / "b" / "b_0.JPEG"]
    for path in broken:
        path.write_bytes(b"not an image")
    FolderDataModule(root=str(tmp_path), image_size=16).prepare_data()  # without verify: nothing read yet
    with pytest.raises(CorruptImageError, match="2 image file") as raised:
        FolderDataModule(root=str(tmp_path), image_size=16, verify=True).prepare_data()
    assert all(str(path) in str(raised.value) for path in broken)


# ---------------------------------------------------------------------------------------------- missing data
@pytest.mark.parametrize(
    ("cls", "looked_at", "fix"),
    [
        (CIFAR10DataModule, "cifar-10-batches-py", "`download=True`"),
        (CIFAR100DataModule, "cifar-100-python", "`download=True`"),
        (SVHNDataModule, "train_32x32.mat", "`download=True`"),
        (Flowers102DataModule, "flowers-102", "`download=True`"),
        (PetsDataModule, "oxford-iiit-pet", "`download=True`"),
        (AircraftDataModule, "fgvc-aircraft-2013b", "`download=True`"),
        (CarsDataModule, "stanford_cars", "cannot be downloaded"),
        (ImageNetDataModule, "train", "ImageNet cannot be downloaded"),
        (FolderDataModule, "", "cannot be downloaded"),
    ],
)
def test_missing_data_error_names_path_and_fix(tmp_path: Path, cls: type, looked_at: str, fix: str) -> None:
    root = tmp_path / "nothing_here"
    with pytest.raises(DatasetNotFoundError) as info:
        cls(root=str(root)).setup("fit")
    message = str(info.value)
    assert os.path.join(str(root), looked_at).rstrip(os.sep) in message
    assert fix in message
    assert isinstance(info.value, FileNotFoundError)


def test_hyper_batch_size_sets_the_hyper_step_batch_only() -> None:
    """``hyper_batch_size`` changes the hyper-validation batch (drop_last kept), nothing else; bad sizes are
    refused naming the argument."""
    dm = DigitsDataModule(batch_size=16, hyper_batch_size=100)
    dm.setup("fit")
    sizes = [len(labels) for _, labels in dm.hyper_dataloader()]
    assert sizes == [100] and len(dm.hyper_indices) == 135  # 135 held out, the last 35 dropped
    assert next(iter(dm.train_dataloader()))[1].shape == (16,) and dm.eval_batch_size == 16
    assert [len(y) for _, y in DigitsDataModule(batch_size=16, hyper_batch_size=200).hyper_dataloader()] == [
        135
    ]
    assert DigitsDataModule(batch_size=16).hyper_batch_size == 16
    with pytest.raises(ValueError, match="hyper_batch_size=0"):
        DigitsDataModule(hyper_batch_size=0)
