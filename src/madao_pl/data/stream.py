"""The batches the MADAO hyper step draws besides its own: an endless stream of held-out batches, and the
training batches of the inner steps just before it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["BatchStream", "RecentBatches", "hyper_dataloader"]


def hyper_dataloader(trainer: Any) -> Iterable[Any]:
    """The held-out loader of the datamodule ``trainer`` fits with; a clear error when it has none."""
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "hyper_dataloader"):
        raise RuntimeError(
            "MADAO needs held-out hyper-validation batches: pass a datamodule with a "
            "`hyper_dataloader()` method (see madao_pl.data.ImageDataModule) to trainer.fit."
        )
    return datamodule.hyper_dataloader()


class BatchStream:
    """Batches from ``make_loader()``, one at a time, starting a new pass whenever one ends.

    Each pass calls ``loader.sampler.set_epoch(pass number)`` where the sampler has it (a
    ``DistributedSampler`` then reshuffles, identically on every rank). :meth:`restart` begins a fresh
    pass (the module calls it at each training epoch, so a run resumed from an epoch checkpoint draws the
    same batches); :meth:`state_dict` holds the pass number for checkpoints.

    Args:
        make_loader: returns the loader (called lazily, at the first batch of each pass).
    """

    def __init__(self, make_loader: Callable[[], Iterable[Any]]) -> None:
        self.make_loader = make_loader
        self.passes = 0
        self._iterator: Iterator[Any] | None = None

    def restart(self) -> None:
        """Begin a new pass at the next batch (without advancing the pass number)."""
        self._iterator = None

    def _begin(self) -> Iterator[Any]:
        loader = self.make_loader()
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.passes)
        return iter(loader)

    def next(self) -> Any:
        """The next batch; a loader without any batch raises ``ValueError``."""
        if self._iterator is None:
            self._iterator = self._begin()
        try:
            return next(self._iterator)
        except StopIteration:
            self.passes += 1
            self._iterator = self._begin()
            try:
                return next(self._iterator)
            except StopIteration:
                raise ValueError(
                    "the hyper-validation loader yields no batch: give it at least one sample"
                ) from None

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes = int(state.get("passes", 0))
        self._iterator = None


class RecentBatches:
    """The last ``count`` training batches (raw images and labels), joined to the hyper step's own.

    With ``count = k - 1`` the hyper step differentiates through ``k`` batches: its own and the inner steps'
    just before it. ``count = 0`` keeps nothing and :meth:`join` returns the batch unchanged.
    """

    def __init__(self, count: int) -> None:
        self._batches: deque[tuple[Tensor, Tensor]] = deque(maxlen=count)

    def add(self, images: Tensor, labels: Tensor) -> None:
        """Keep one inner step's batch (the oldest falls out beyond ``count``)."""
        if self._batches.maxlen:
            self._batches.append((images, labels))

    def join(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The kept batches, oldest first, then ``(images, labels)``; forgets the kept ones."""
        if not self._batches:
            return images, labels
        joined = (
            torch.cat([*(b[0] for b in self._batches), images]),
            torch.cat([*(b[1] for b in self._batches), labels]),
        )
        self._batches.clear()
        return joined
