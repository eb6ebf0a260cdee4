"""The Lightning glue: inner SGD steps on policy-augmented batches, and every ``inner_steps``
steps one hyper step that moves the policy along the implicit hypergradient (paper Algorithm 1).

`MADAOModule` takes any backbone ``nn.Module``, any `madao_pl.augment` policy and any
datamodule that also provides ``hyper_dataloader()`` (un-augmented batches from the held-out
hyper-validation split). Fixed policies (RandAugment, AutoAugment, TrivialAugment, identity,
replay) run through the same module and never take a hyper step, so comparisons differ only in
the policy.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from madao_pl.augment.ops import cutout
from madao_pl.augment.policy import Policy
from madao_pl.hypergrad import METHODS
from madao_pl.hyperstep import hyper_step

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def _default_policy_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """RMSprop with lr 1e-2, the paper's policy optimiser (Appendix B)."""
    return torch.optim.RMSprop(params, lr=1e-2)


class MADAOModule(pl.LightningModule):
    """Image classifier trained with a (learned or fixed) on-device augmentation policy.

    Each training step is one inner SGD step on ``net`` with the augmented batch
    (policy without graph). For a learnable policy, after ``warmup_epochs`` (set by
    `madao_pl.callbacks.WarmupCallback`), every ``inner_steps``-th step is a hyper step: the
    augmented forward with the policy in the graph, df/dtheta with ``create_graph=True``,
    dg/dtheta on a hyper-validation batch with the network in eval mode, the implicit
    hypergradient (`madao_pl.hypergrad`), a policy step, then the network step with that same
    df/dtheta.

    Args:
        net: the classifier; takes normalised (B, 3, H, W) images, returns logits.
        policy: a `madao_pl.augment.policy.Policy`; learnable ones get hyper steps.
        optimizer: factory ``params -> Optimizer`` for the network (Hydra ``_partial_``).
        scheduler: optional factory ``optimizer -> LR scheduler``, stepped once per epoch.
        policy_optimizer: factory for the policy optimiser (default RMSprop, lr 1e-2).
        num_classes: number of classes (for the metrics).
        mean, std: per-channel normalisation applied on device after the policy.
        cutout: Cutout square side in pixels, applied after the policy (0 = off).
        inner_steps: s, network steps per hyper step (the s-th step is the hyper step).
        neumann_steps: J, terms of the Neumann series.
        neumann_alpha: alpha of the Neumann series.
        hypergrad_method: "neumann", "cg" or "exact" (see `madao_pl.hypergrad`).
        neumann_tol: relative tolerance of the adaptive Neumann series (0 = all J terms); the
            default 1e-4 keeps the sum within 1e-3 of the full J-term series (``madao_pl.hyperstep``).
        hyper_chunks: split the hyper step's second-order terms over this many chunks of the batch
            (memory-bounded; per-chunk BatchNorm statistics there, see ``madao_pl.hyperstep``); 1 = off.
        hyper_recompute: rebuild the double-backward graph for each product instead of keeping it
            (exact, less memory, more time).
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
        neumann_steps: int = 5,
        neumann_alpha: float = 1e-3,
        hypergrad_method: str = "neumann",
        neumann_tol: float = 1e-4,
        hyper_chunks: int = 1,
        hyper_recompute: bool = False,
    ) -> None:
        super().__init__()
        validate_hyper_settings(
            inner_steps=inner_steps,
            neumann_steps=neumann_steps,
            neumann_alpha=neumann_alpha,
            cutout=cutout,
            method=hypergrad_method,
            neumann_tol=neumann_tol,
            hyper_chunks=hyper_chunks,
            hyper_recompute=hyper_recompute,
        )
        for module in net.modules():
            if isinstance(module, nn.SyncBatchNorm):
                raise ValueError(
                    "SyncBatchNorm has no double backward, which the MADAO hyper step needs: "
                    "set trainer.sync_batchnorm=false (plain BatchNorm)."
                )
        self.automatic_optimization = False
        self.net = net
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.policy_optimizer_factory = policy_optimizer or _default_policy_optimizer
        self.num_classes = num_classes
        self.cutout_size = int(cutout)
        self.inner_steps = int(inner_steps)
        self.neumann_steps = int(neumann_steps)
        self.neumann_alpha = float(neumann_alpha)
        self.hypergrad_method = hypergrad_method
        self.neumann_tol = float(neumann_tol)
        self.hyper_chunks = int(hyper_chunks)
        self.hyper_recompute = bool(hyper_recompute)
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # Set by WarmupCallback; without it there is no warm-up.
        self.warmup_active = False
        # Training steps taken since warm-up ended (the hyper step is every inner_steps-th), hyper
        # steps taken, skipped (non-finite) and HVPs performed. Python ints while training; mirrored
        # into the `madao_counters` buffer whenever a state_dict is taken, so checkpoints and
        # ddp_spawn's hand-back carry them.
        self.inner_step = 0
        self.hyper_steps = 0
        self.skipped_hyper_steps = 0
        self.total_hvps = 0
        self.register_buffer("madao_counters", torch.zeros(len(_COUNTERS), dtype=torch.long))
        self.last_hyper_step_global = -1
        self.last_hypergrad_norm = float("nan")
        self._hyper_iter: Iterator | None = None
        self._pending_generator_state: Tensor | None = None
        self._hyper_epoch = 0
        # Keep the policy out of DDP's reducer: its gradient is the hypergradient, reduced by hand.
        self._ddp_params_and_buffers_to_ignore = [
            *(f"policy.{name}" for name, _ in policy.named_parameters()),
            *(f"policy.{name}" for name, _ in policy.named_buffers()),
            "madao_counters",
        ]

    # ------------------------------------------------------------------ properties
    @property
    def learns_policy(self) -> bool:
        """Whether the policy has trainable parameters (then hyper steps happen)."""
        return any(p.requires_grad for p in self.policy.parameters())

    def network_parameters(self) -> list[nn.Parameter]:
        """theta: the trainable parameters of the network."""
        return [p for p in self.net.parameters() if p.requires_grad]

    def policy_parameters(self) -> list[nn.Parameter]:
        """phi: the trainable parameters of the policy."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward pieces
    def forward(self, images: Tensor) -> Tensor:
        """Logits of un-augmented images in [0, 1] (normalised here)."""
        return self.net(self.normalize(images))

    def normalize(self, images: Tensor) -> Tensor:
        """Per-channel (x - mean) / std on device."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def augment(self, images: Tensor) -> Tensor:
        """Policy (unless warming up), then Cutout: (B, 3, H, W) in [0, 1] -> same."""
        if not self.warmup_active:
            images = self.policy(images)
        if self.cutout_size > 0:
            images = cutout(images, self.cutout_size)
        return images

    # ------------------------------------------------------------------ training
    def is_hyper_step(self) -> bool:
        """True when the coming training step must be a hyper step."""
        return self.learns_policy and not self.warmup_active and (self.inner_step + 1) % self.inner_steps == 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        net_opt = self._network_optimizer()
        if self.is_hyper_step():
            loss = self._hyper_step(images, labels, net_opt)
        else:
            with torch.no_grad():
                augmented = self.augment(images)
            loss = F.cross_entropy(self.net(self.normalize(augmented)), labels)
            net_opt.zero_grad()
            self.manual_backward(loss)
            net_opt.step()
        if not self.warmup_active:
            self.inner_step += 1
        self.log(
            "train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels)
        )
        return loss.detach()

    def _hyper_step(self, images: Tensor, labels: Tensor, net_opt: Any) -> Tensor:
        """One hyper step fused with the s-th inner step (DESIGN.md §5), by `madao_pl.hyperstep`.

        The network step uses the same augmented batch and ``df/dtheta`` as the hypergradient. Both
        gradients are averaged over DDP ranks here, together in one flat all-reduce: the hyper step takes
        them with ``torch.autograd.grad``, which DDP's reducer does not see.
        """
        params = self.network_parameters()
        hparams = self.policy_parameters()
        val_images, val_labels = self._next_hyper_batch()
        result = hyper_step(
            self.net,
            self.policy,
            images,
            labels,
            val_images,
            val_labels,
            normalize=self.normalize,
            cutout_size=self.cutout_size,
            alpha=self.neumann_alpha,
            steps=self.neumann_steps,
            method=self.hypergrad_method,
            tol=self.neumann_tol,
            chunks=self.hyper_chunks,
            recompute=self.hyper_recompute,
        )
        both = _all_reduce_mean(_flatten((*result.network_grads, *result.hypergrad)))
        policy_size = sum(h.numel() for h in hparams)
        network_grads, flat = both.split([both.numel() - policy_size, policy_size])
        finite = bool(torch.isfinite(flat).all())
        net_opt.zero_grad()
        _set_grads(params, network_grads)
        net_opt.step()
        self.hyper_steps += 1
        self.total_hvps += result.info.hvps
        self.last_hyper_step_global = self.global_step
        if finite:
            self._policy_step(hparams, flat)
            self.last_hypergrad_norm = float(flat.norm())
        else:
            self.skipped_hyper_steps += 1
            warnings.warn(
                f"non-finite hypergradient at hyper step {self.hyper_steps} "
                f"(global step {self.global_step}): "
                f"policy step skipped ({self.skipped_hyper_steps} skipped so far)",
                RuntimeWarning,
                stacklevel=2,
            )
        log = {
            "hyper/val_loss": result.val_loss,
            "hyper/grad_norm": self.last_hypergrad_norm,
            "hyper/hvps": float(result.info.hvps),
            "hyper/skipped": float(self.skipped_hyper_steps),
            "hyper/steps": float(self.hyper_steps),
            "policy/entropy": self.policy.entropy().detach(),
        }
        self.log_dict(log, on_step=True, on_epoch=False, batch_size=len(labels))
        return result.train_loss

    def _policy_step(self, hparams: list[nn.Parameter], flat_grad: Tensor) -> None:
        policy_opt = self._policy_optimizer()
        policy_opt.zero_grad()
        _set_grads(hparams, flat_grad)
        policy_opt.step()

    def on_train_epoch_start(self) -> None:
        # A fresh pass over the hyper-validation split each epoch: its order then depends only on
        # the epoch and the RNG state, so a run resumed from an epoch checkpoint draws the same batches.
        self._hyper_iter = None

    def _next_hyper_batch(self) -> tuple[Tensor, Tensor]:
        if self._hyper_iter is None:
            self._hyper_iter = self._make_hyper_iter()
        try:
            batch = next(self._hyper_iter)
        except StopIteration:
            self._hyper_epoch += 1
            self._hyper_iter = self._make_hyper_iter()
            batch = next(self._hyper_iter)
        images, labels = batch
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _make_hyper_iter(self) -> Iterator:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "hyper_dataloader"):
            raise RuntimeError(
                "MADAO needs held-out hyper-validation batches: pass a datamodule with a "
                "`hyper_dataloader()` method (see madao_pl.data.ImageDataModule) to trainer.fit."
            )
        loader = datamodule.hyper_dataloader()
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self._hyper_epoch)
        return iter(loader)

    def _network_optimizer(self) -> Any:
        optimizers = self.optimizers()
        return optimizers[0] if isinstance(optimizers, list) else optimizers

    def _policy_optimizer(self) -> Any:
        return self.optimizers()[1]

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def on_fit_start(self) -> None:
        """Start every rank from rank 0's policy; give each rank its own augmentation draws."""
        if dist.is_available() and dist.is_initialized():
            for tensor in list(self.policy.parameters()) + list(self.policy.buffers()):
                dist.broadcast(tensor.data, src=0)
        if getattr(self.policy, "generator", None) is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(torch.initial_seed() + 1_000_003 * self.global_rank)
            if self._pending_generator_state is not None:
                generator.set_state(self._pending_generator_state)
            self.policy.generator = generator

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_accuracy.update(logits, labels)
        self.log(
            "val/loss", F.cross_entropy(logits, labels), on_epoch=True, sync_dist=True, batch_size=len(labels)
        )

    def on_validation_epoch_end(self) -> None:
        self.log("val/error", 1.0 - self.val_accuracy.compute(), prog_bar=True, sync_dist=False)
        self.val_accuracy.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.test_accuracy.update(self(images), labels)

    def on_test_epoch_end(self) -> None:
        self.log("test/error", 1.0 - self.test_accuracy.compute())
        self.test_accuracy.reset()

    # ------------------------------------------------------------------ optimisers and state
    def configure_optimizers(self) -> Any:
        net_opt = self.optimizer_factory(self.network_parameters())
        optimizers = [net_opt]
        if self.learns_policy:
            optimizers.append(self.policy_optimizer_factory(self.policy_parameters()))
        schedulers = [] if self.scheduler_factory is None else [self.scheduler_factory(net_opt)]
        return optimizers, schedulers

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        self.madao_counters.copy_(torch.tensor([getattr(self, name) for name in _COUNTERS]))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "madao_counters" in state_dict:
            for name, value in zip(_COUNTERS, self.madao_counters.tolist(), strict=True):
                setattr(self, name, int(value))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides the state_dict (network, policy, counters): warm-up phase, RNG states."""
        checkpoint["madao"] = {"hyper_epoch": self._hyper_epoch, "warmup_active": self.warmup_active}
        generator = getattr(self.policy, "generator", None)
        if generator is not None:
            checkpoint["madao"]["policy_generator_state"] = generator.get_state()
        checkpoint["madao"]["rng"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("madao", {})
        self.warmup_active = bool(state.get("warmup_active", False))
        self._hyper_epoch = int(state.get("hyper_epoch", 0))
        self._pending_generator_state = state.get("policy_generator_state")
        if "rng" in state:
            _set_rng_states(state["rng"])


_COUNTERS = ("inner_step", "hyper_steps", "skipped_hyper_steps", "total_hvps")


def validate_hyper_settings(
    *,
    inner_steps: int,
    neumann_steps: int,
    neumann_alpha: float,
    cutout: int,
    method: str = "neumann",
    neumann_tol: float = 0.0,
    hyper_chunks: int = 1,
    hyper_recompute: bool = False,
) -> None:
    """Refuse settings outside their valid range with a one-line message naming the key."""
    if method not in METHODS:
        raise ValueError(f"augment.method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (math.isfinite(neumann_tol) and 0 <= neumann_tol < 1):
        raise ValueError(f"augment.neumann_tol must be in [0, 1) (0 = all J terms), got {neumann_tol}")
    if isinstance(hyper_chunks, bool) or int(hyper_chunks) != hyper_chunks or int(hyper_chunks) < 1:
        raise ValueError(f"augment.hyper_chunks must be an integer >= 1, got {hyper_chunks}")
    if not isinstance(hyper_recompute, bool):
        raise ValueError(f"augment.hyper_recompute must be true or false, got {hyper_recompute!r}")
    if int(inner_steps) < 1:
        raise ValueError(f"augment.inner_steps must be an integer >= 1, got {inner_steps}")
    if int(neumann_steps) < 0:
        raise ValueError(f"augment.neumann_steps must be an integer >= 0, got {neumann_steps}")
    if not (math.isfinite(neumann_alpha) and neumann_alpha > 0):
        raise ValueError(f"augment.neumann_alpha must be a finite number > 0, got {neumann_alpha}")
    if int(cutout) < 0:
        raise ValueError(f"dataset.cutout must be >= 0 pixels, got {cutout}")


def _rng_states() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch CPU and CUDA) for an exact resume, in types
    that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state is what we restore)
    states = {
        "python": random.getstate(),
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(cached),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    kind, keys, position, has_gauss, cached = states["numpy"]
    random.setstate(states["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _all_reduce_mean(flat: Tensor) -> Tensor:
    """Average a flat tensor over DDP ranks (identity without torch.distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = flat.contiguous()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / dist.get_world_size()
    return flat


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    """One flat tensor of every entry of ``tensors`` (for one all-reduce)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _set_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Give each parameter its slice of ``flat`` (in order) as its ``.grad``."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
