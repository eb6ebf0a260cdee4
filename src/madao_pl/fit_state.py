"""What `madao_pl.module.MADAOModule` keeps outside its ``state_dict``, so that DDP ranks agree and a
resumed run ends where the uninterrupted one ends.

At fit start (:func:`start_policy`): rank 0's policy on every rank, each rank with its own augmentation
generator, and a class-conditional policy named by the datamodule's classes. In checkpoints, under the
``"madao"`` key (:func:`checkpoint_entry`, :func:`restore_checkpoint_entry`): the warm-up flag, the held-out
stream's pass, the policy generator's state and the global RNG states (`madao_pl.rng`). The module's own
hooks call these (:class:`FitStateHooks`, a base class of the module), so a user's plain ``Trainer`` resumes
exactly without any callback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from madao_pl.distributed import broadcast_
from madao_pl.rng import get_rng_states, rank_generator, set_rng_states

if TYPE_CHECKING:
    from madao_pl.augment import Policy
    from madao_pl.data.stream import BatchStream

__all__ = ["FitStateHooks", "checkpoint_entry", "restore_checkpoint_entry", "start_policy"]


def start_policy(
    policy: Policy, *, device: torch.device, rank: int, datamodule: Any, generator_state: Tensor | None
) -> None:
    """Ready ``policy`` for a fit on DDP rank ``rank``.

    A class-conditional policy takes the datamodule's ``class_names`` when there are as many as its classes
    (``policy.json`` names them); every rank takes rank 0's parameters and buffers; a policy without a
    generator gets this rank's (`madao_pl.rng.rank_generator`), set to ``generator_state`` on a resume.
    """
    names = getattr(datamodule, "class_names", None)
    if getattr(policy, "num_classes", 0) and names is not None and len(names) == policy.num_classes:
        policy.class_names = list(names)
    broadcast_([*policy.parameters(), *policy.buffers()])
    if policy.generator is None:
        policy.generator = rank_generator(device, rank, generator_state)


def checkpoint_entry(
    warmup_active: bool, hyper_batches: BatchStream, generator: torch.Generator | None
) -> dict[str, Any]:
    """The checkpoint's ``"madao"`` entry: the warm-up phase, the held-out stream's state, the policy
    generator's state (None if it has none yet) and every global RNG state."""
    return {
        "warmup_active": warmup_active,
        "hyper_batches": hyper_batches.state_dict(),
        "policy_generator_state": generator.get_state() if generator is not None else None,
        "rng": get_rng_states(),
    }


def restore_checkpoint_entry(entry: dict[str, Any], hyper_batches: BatchStream) -> tuple[bool, Tensor | None]:
    """Undo :func:`checkpoint_entry` (``entry`` may lack any key, or be ``{}``): restores the held-out
    stream and the global RNG states; returns the warm-up flag and the policy generator's state (the
    generator itself is made at fit start, :func:`start_policy`)."""
    hyper_batches.load_state_dict(entry.get("hyper_batches", {}))
    if "rng" in entry:
        set_rng_states(entry["rng"])
    return bool(entry.get("warmup_active", False)), entry.get("policy_generator_state")


class FitStateHooks(pl.LightningModule):
    """The hooks that call this module's functions: ``on_fit_start`` (:func:`start_policy`),
    ``on_save_checkpoint`` and ``on_load_checkpoint`` (the checkpoint's ``"madao"`` entry).

    The subclass sets ``policy`` (a `madao_pl.augment.Policy`), ``hyper_batches`` (the held-out
    `madao_pl.data.stream.BatchStream`) and ``warmup_active``, as `madao_pl.module.MADAOModule` does.
    """

    policy: Policy
    hyper_batches: BatchStream
    warmup_active: bool
    _generator_state: Tensor | None = None  # the policy generator's, from a checkpoint, until fit start

    def on_fit_start(self) -> None:
        """Start every rank from rank 0's policy, each rank with its own augmentation draws
        (:func:`start_policy`)."""
        start_policy(
            self.policy, device=self.device, rank=self.global_rank,
            datamodule=getattr(self._trainer, "datamodule", None), generator_state=self._generator_state,
        )  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides the state_dict (network, policy, counters): warm-up phase, held-out stream, RNG states
        (:func:`checkpoint_entry`)."""
        checkpoint["madao"] = checkpoint_entry(self.warmup_active, self.hyper_batches, self.policy.generator)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Undo ``on_save_checkpoint`` (:func:`restore_checkpoint_entry`); a checkpoint without the entry
        loads as a fresh start."""
        entry = checkpoint.get("madao", {})
        self.warmup_active, self._generator_state = restore_checkpoint_entry(entry, self.hyper_batches)
