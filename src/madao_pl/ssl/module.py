"""MoCo v2 pre-training with a learned (or fixed) augmentation policy: the Lightning side of ``task=ssl``.

:class:`MoCoModule` is :class:`madao_pl.module.MADAOModule` with another task: the inner steps, the
warm-up, the hyper step (`madao_pl.hyperstep.hyper_step`, the same code), DDP averaging, counters and
checkpoints are the supervised module's; what changes is what the policy augments and what ``f`` and ``g``
are (its ``views``, ``training_loss`` and ``validation_loss``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from madao_pl.augment import Policy
from madao_pl.module import MADAOModule
from madao_pl.ssl.moco import MoCo


class MoCoModule(MADAOModule):
    """Contrastive pre-training (MoCo v2) whose two views get the policy after the base crop/flip.

    Each training image gives two base views (``views``: random crop and flip, each with its own draws);
    the policy augments both, each image with its own draws, as the paper does for key and query. Then:

    - ``f`` (inner steps and the hyper step's training loss) is InfoNCE of the policy-augmented views: the
      queries go through the query encoder and head, the graph the hyper step differentiates; the keys
      come from the momentum encoder and the negatives from the queue, both constants, as in MoCo. So the
      hypergradient reaches the policy through the query views (DESIGN.md §12).
    - ``g`` (the hyper step's held-out loss) is InfoNCE of held-out images under the base views only, no
      policy, with the network in eval mode and the same queue.

    Why this ``g`` is not degenerate: the policy never touches ``g``'s images, so ``g`` depends on ``phi``
    only through the weights the policy trains, ``theta*(phi)``. Had ``g`` been computed on policy-augmented
    views, the policy could lower it directly by making the two views alike (no augmentation at all, the
    trivial optimum of a contrastive loss); as it is, ``g`` rewards the augmentation under which the
    encoder learns to tell unseen images apart from the queue's negatives under natural variation (crop,
    flip): instance discrimination that generalises, which is what the features are for. The queue is
    constant inside a hyper step, so ``g`` is one fixed function of ``theta``.

    Each training step starts with the key encoder's momentum update and ends by enqueueing that step's keys,
    gathered from every rank (MoCo's order). Shuffle BN is not done: each rank's query and key batches are
    normalised by their own statistics. Class-conditional policies need labels and are refused.

    Args:
        net: the :class:`~madao_pl.ssl.MoCo` network.
        policy, optimizer, scheduler, policy_optimizer: as for ``MADAOModule``.
        views: the base view transform on device, ``(B, C, H, W)`` in [0, 1] -> the same with fresh random
            draws per call (a kornia ``AugmentationSequential`` of crop and flip).
        **kwargs: ``MADAOModule``'s keyword arguments (``num_classes`` is unused here but accepted).
    """

    def __init__(
        self,
        net: MoCo,
        policy: Policy,
        optimizer: Any,
        scheduler: Any = None,
        policy_optimizer: Any = None,
        *,
        views: nn.Module,
        **kwargs: Any,
    ) -> None:
        if not isinstance(net, MoCo):
            raise ValueError(f"net must be a madao_pl.ssl.MoCo network, got {type(net).__name__}")
        if getattr(policy, "num_classes", 0):
            raise ValueError(
                "policy: a class-conditional policy needs labels, which self-supervised pre-training does "
                "not use: choose a global policy (augment=madao)"
            )
        kwargs.setdefault("num_classes", 2)  # the supervised metrics' width: unused, there is no classifier
        super().__init__(net, policy, optimizer, scheduler, policy_optimizer, **kwargs)
        self.base_views = views
        self._keys: Tensor | None = None
        # identical on every rank (each enqueues the keys of all ranks): no need for DDP to broadcast them
        self._ddp_params_and_buffers_to_ignore += ["net.queue", "net.queue_pointer"]

    def views(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, None]:
        """Two base views of each image, stacked ``(2B, C, H, W)``: the queries', then the keys'."""
        with torch.no_grad():
            return torch.cat([self.base_views(images), self.base_views(images)]), None

    def training_loss(self, inputs: Tensor, labels: Tensor | None) -> Tensor:
        """``f``: InfoNCE of the (augmented, normalised) views; keeps this step's keys for the queue."""
        loss, self._keys = self.net.contrastive(inputs)
        return loss

    def validation_loss(self, inputs: Tensor, labels: Tensor | None) -> Tensor:
        """``g``: InfoNCE of the held-out images' base views (the queue left as it is)."""
        return self.net.contrastive(inputs)[0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Momentum update, the supervised module's step with this task's ``f``, then enqueue the keys."""
        self.net.momentum_update()
        loss = super().training_step(batch, batch_idx)
        keys = self.all_gather(self._keys)  # (world, B, D) under DDP, else (B, D)
        self.net.enqueue(keys.reshape(-1, keys.shape[-1]))
        self._keys = None
        return loss

    def _contrastive_loss(self, images: Tensor) -> Tensor:
        views, _ = self.views(images, None)
        return self.validation_loss(self.normalize(views), None)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        self.log("val/loss", self._contrastive_loss(images), sync_dist=True, batch_size=len(images))

    def on_validation_epoch_end(self) -> None:
        """Nothing to compute: ``val/loss`` is logged per batch (there is no classifier to score)."""

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images = batch[0]
        self.log("test/loss", self._contrastive_loss(images), sync_dist=True, batch_size=len(images))

    def on_test_epoch_end(self) -> None:
        """Nothing to compute: the test error of pre-training is the linear probe's (`LinearProbe`)."""
