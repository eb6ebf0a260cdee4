"""The Lightning glue: inner SGD steps on policy-augmented batches and, every ``inner_steps`` steps, one
hyper step that moves the policy along the implicit hypergradient (paper Algorithm 1, DESIGN.md §5).

`MADAOModule` takes any backbone, any `madao_pl.augment` policy and any datamodule that also provides
``hyper_dataloader()`` (un-augmented batches of a held-out split). Fixed policies (RandAugment, AutoAugment,
TrivialAugment, identity, replay) run through the same module and never take a hyper step, so comparisons
differ only in the policy. Another task changes three methods, ``views`` (what the policy augments),
``training_loss`` (f) and ``validation_loss`` (g): `madao_pl.ssl.MoCoModule` does, for ``task=ssl``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from madao_pl.augment import Policy, ops
from madao_pl.data.stream import BatchStream, RecentBatches, hyper_dataloader
from madao_pl.distributed import kept_out_of_ddp
from madao_pl.evaluation import ClassifierEvaluation
from madao_pl.fit_state import FitStateHooks
from madao_pl.hyperstep import (
    HyperStepConfig,
    augment_batch,
    check_integer,
    check_network,
    check_precision,
    hyper_step,
)
from madao_pl.loggers import log_hyper_step
from madao_pl.models import network_segments
from madao_pl.optimizers import POLICY_OPTIMIZER, OptimizerFactory, OptimizerHooks, SchedulerFactory

COUNTERS = ("inner_step", "hyper_steps", "skipped_hyper_steps", "total_hvps")


class MADAOModule(ClassifierEvaluation, FitStateHooks, OptimizerHooks):
    """Image classifier trained with a (learned or fixed) on-device augmentation policy.

    Each training step is one SGD step of ``net`` on the augmented batch (the network under the trainer's
    precision; the augmentation and the hyper step with autocast off: `madao_pl.hyperstep.PRECISIONS`).
    With a learnable policy, outside warm-up (``warmup_active``, set by `madao_pl.callbacks.WarmupCallback`),
    every ``inner_steps``-th step is a hyper step (`madao_pl.hyperstep.hyper_step`): the policy steps along
    the hypergradient and the network along that step's ``df/dtheta``. Counters are buffers, so checkpoints
    carry them. The base classes do the rest: validation and test (``val/loss``, ``val/error``,
    ``test/error``; `madao_pl.evaluation`), the policy's start and the checkpoint's extras
    (`madao_pl.fit_state`), the optimisers and their steps (`madao_pl.optimizers`).

    Args:
        net: the classifier; normalised ``(B, 3, H, W)`` images -> logits.
        policy: a `madao_pl.augment.Policy`; one with trainable parameters gets hyper steps.
        optimizer, scheduler: ``params -> Optimizer`` and ``optimizer -> LR scheduler`` (stepped per epoch)
            for the network (Hydra ``_partial_``); no scheduler if None.
        policy_optimizer: ``params -> Optimizer`` for the policy (default: the paper's RMSprop, lr 1e-2).
        num_classes: number of classes (metrics).
        mean, std: per-channel normalisation applied on device after the augmentation.
        cutout: Cutout square side in pixels after the policy (0 = off).
        inner_steps: s, network steps per hyper step (the s-th is the hyper step), >= 1.
        hyper: the hyper step's solver and memory settings.
        hyper_train_batches: k, training batches the hyper step differentiates through: its own and the
            k - 1 inner steps' before it (augmented afresh); its network step averages over all k
            (1: the paper's).
    """

    def __init__(
        self,
        net: nn.Module,
        policy: Policy,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        policy_optimizer: OptimizerFactory | None = None,
        *,
        num_classes: int,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        cutout: int = 0,
        inner_steps: int = 30,
        hyper: HyperStepConfig | None = None,
        hyper_train_batches: int = 1,
    ) -> None:
        super().__init__(num_classes)
        check_integer("inner_steps", inner_steps, 1)
        check_integer("cutout", cutout, 0)
        check_integer("hyper_train_batches", hyper_train_batches, 1)
        self.automatic_optimization = False
        self.net, self.policy = net, policy
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.policy_optimizer_factory = policy_optimizer or POLICY_OPTIMIZER
        self.cutout, self.inner_steps = cutout, inner_steps
        self.hyper = hyper if hyper is not None else HyperStepConfig()
        if self.hyper.segmented:
            self._check_segmented()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)
        for name in COUNTERS:
            self.register_buffer(name, torch.zeros((), dtype=torch.long))
        self.warmup_active = False
        self.hyper_batches = BatchStream(self._hyper_loader)  # a method, not a lambda: ddp_spawn pickles it
        self.recent_batches = RecentBatches(hyper_train_batches - 1)
        self._steps_since_warmup = 0  # the inner_step buffer's value, kept on the host (no sync per step)
        self._ddp_params_and_buffers_to_ignore = kept_out_of_ddp(policy, COUNTERS)

    @property
    def learns_policy(self) -> bool:
        """Whether the policy has trainable parameters (then hyper steps happen)."""
        return any(p.requires_grad for p in self.policy.parameters())

    def forward(self, images: Tensor) -> Tensor:
        """Logits of un-augmented images in [0, 1] (normalised here)."""
        return self.net(self.normalize(images))

    def normalize(self, images: Tensor) -> Tensor:
        """Per-channel ``(x - mean) / std`` on device."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def augment(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Policy (unless warming up), then Cutout: ``(B, 3, H, W)`` in [0, 1] -> the same; ``labels`` for
        a class-conditional policy."""
        if self.warmup_active:
            return ops.cutout(images, self.cutout) if self.cutout > 0 else images
        return augment_batch(self.policy, images, self.cutout, labels=labels)

    # ------------------------------------------------------------------ training
    def is_hyper_step(self) -> bool:
        """Whether the coming training step is a hyper step."""
        return (
            self.learns_policy
            and not self.warmup_active
            and (self._steps_since_warmup + 1) % self.inner_steps == 0
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if self.is_hyper_step():
            with record_function("madao/hyper_step"), self.autocast_off():
                loss = self._hyper_step(images, labels)
        else:
            with record_function("madao/inner_step"):
                with torch.no_grad(), self.autocast_off():
                    inputs, targets = self.views(images, labels)
                    augmented = self.augment(inputs, targets)
                loss = self.training_loss(self.normalize(augmented), targets)
                optimizer = self._optimizers()[0]
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
            if self.learns_policy and not self.warmup_active:
                self.recent_batches.add(images, labels)
        if not self.warmup_active:
            self._steps_since_warmup += 1
            self.inner_step.fill_(self._steps_since_warmup)
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images)
        )
        return loss.detach()

    def autocast_off(self) -> torch.autocast:
        """A context without autocast on this module's device: what must not run in 16 bits."""
        return torch.autocast(self.device.type, enabled=False)

    # ------------------------------------------------------------------ the task: what f and g are
    def views(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """What the policy augments and the losses read: here the images and labels themselves (the
        self-supervised task returns two views of each image and no labels)."""
        return images, labels

    def training_loss(self, inputs: Tensor, labels: Tensor | None) -> Tensor:
        """``f``: the cross-entropy of the network on normalised, augmented inputs."""
        return F.cross_entropy(self.net(inputs), labels)

    def validation_loss(self, inputs: Tensor, labels: Tensor | None) -> Tensor:
        """``g``: the loss of the normalised held-out batch (the network in eval mode), here ``f``'s form."""
        return F.cross_entropy(self.net(inputs), labels)

    def _hyper_step(self, images: Tensor, labels: Tensor) -> Tensor:
        """The s-th step: hyper step, then both optimiser steps with rank-averaged gradients (a non-finite
        hypergradient skips the policy's: counted, warned and logged)."""
        batch = self.views(*self.recent_batches.join(images, labels))
        val_images, val_labels = self.hyper_batches.next()  # not through Lightning: its dtype is set here
        val_batch = self.views(
            val_images.to(self.device, images.dtype, non_blocking=True),
            val_labels.to(self.device, non_blocking=True),
        )
        result = hyper_step(
            self.net, self.policy, batch, val_batch, normalize=self.normalize, cutout=self.cutout,
            config=self.hyper, loss=self.training_loss, val_loss=self.validation_loss,
        )  # fmt: skip
        hypergrad, finite = self.step_network_and_policy(result.network_grads, result.hypergrad)
        self.hyper_steps += 1
        self.total_hvps += result.info.hvps
        if not finite:
            self.skipped_hyper_steps += 1
        log_hyper_step(
            self.trainer, result, hypergrad, finite=finite, policy=self.policy,
            hyper_steps=int(self.hyper_steps), skipped=int(self.skipped_hyper_steps),
        )  # fmt: skip
        return result.train_loss

    def _check_segmented(self) -> None:
        """Refuse segmented products at build time, not at the first hyper step after the warm-up."""
        if type(self).training_loss is not MADAOModule.training_loss:
            raise ValueError(
                f"segmented=True takes f = the cross-entropy of the network's logits, and "
                f"{type(self).__name__} trains another loss: set segmented=False"
            )
        network_segments(self.net)  # a network that does not say how it splits gets a ValueError

    def _hyper_loader(self) -> Iterable[Any]:
        return hyper_dataloader(self._trainer)

    def on_train_epoch_start(self) -> None:
        self.hyper_batches.restart()

    def on_fit_start(self) -> None:
        """Check the network (Lightning may have converted its BatchNorm layers), the precision and that the
        held-out loader exists (not only after the warm-up), then start every rank from rank 0's policy, each
        with its own augmentation draws (`madao_pl.fit_state.FitStateHooks`)."""
        if self.learns_policy:
            check_network(self.net)
            check_precision(self.trainer.precision)
            hyper_dataloader(self._trainer)
        self._steps_since_warmup = int(self.inner_step)
        super().on_fit_start()
