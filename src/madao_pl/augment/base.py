"""The policy base class and the one description schema every policy reports itself in.

Every policy is a :class:`Policy`: an :class:`torch.nn.Module` that maps a batch of images
``(B, C, H, W)`` in ``[0, 1]`` to an augmented batch of the same shape, on the device the batch lives on.
Policies differ only in what their stages draw (:meth:`Policy.sample`); :meth:`Policy.forward` applies
every stage with the shared :func:`~madao_pl.augment.stage.apply_stage`, so a comparison between two
policies differs in the policy and nothing else.

Description schema (:meth:`Policy.describe`; callbacks, logs and the saved JSON read it)::

    {
        "policy": name,                  # the class's ``name``
        "num_stages": K,
        "stages": [stage_0, ..., stage_{K-1}],
        ...                              # optional policy-specific keys
    }

where each ``stage_k`` is :func:`describe_stage`'s ``{op name: {"selection", "apply", "magnitude"}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from madao_pl.augment.ops import OP_NAMES, OPERATIONS
from madao_pl.augment.stage import StageSample, apply_stage, check_images, check_value_range

__all__ = ["IDENTITY", "Policy", "StageDescription", "describe_stage"]

IDENTITY = "Identity"
"""The optional "do nothing" selection choice of MADAO policies (described after the 14 ops)."""

StageDescription = dict[str, dict[str, float | None]]
"""One stage in the description schema: ``{op name: {"selection", "apply", "magnitude"}}`` (see
:func:`describe_stage`)."""


def describe_stage(
    selection: Sequence[float], apply: Sequence[float], magnitude: Sequence[float], identity: bool = False
) -> StageDescription:
    """One stage in the description schema: ``{op name: {"selection", "apply", "magnitude"}}``.

    Keys are every operation name, in ``OP_NAMES`` order; per operation:

    - ``"selection"``: P(the operation is chosen) in this stage;
    - ``"apply"``: P(it is applied | chosen), the apply probability;
    - ``"magnitude"``: its magnitude mu in ``[0, 1]``, or ``None`` for the operations without one
      (Invert, AutoContrast, Equalize).

    A policy with the "do nothing" choice adds :data:`IDENTITY` last: its selection probability, apply 0 (it
    never changes an image, so ``sum selection x apply`` stays the chance that the stage changes one) and
    magnitude ``None``.

    Args:
        selection: 14 selection probabilities, in ``OP_NAMES`` order (then Identity's, with ``identity``).
        apply: 14 apply probabilities, in ``OP_NAMES`` order.
        magnitude: 14 magnitudes on the full op table, in ``OP_NAMES`` order (the entries of ops without
            a magnitude are ignored).
        identity: whether ``selection`` has the Identity choice's entry last.

    Returns:
        ``{name: {"selection": float, "apply": float, "magnitude": float | None}}`` for the 14 ops
        (and Identity).
    """
    stage = {}
    for i, name in enumerate(OP_NAMES):
        has_magnitude = OPERATIONS[i].has_magnitude
        stage[name] = {
            "selection": float(selection[i]),
            "apply": float(apply[i]),
            "magnitude": float(magnitude[i]) if has_magnitude else None,
        }
    if identity:
        stage[IDENTITY] = {"selection": float(selection[len(OP_NAMES)]), "apply": 0.0, "magnitude": None}
    return stage


class Policy(nn.Module):
    """Base class of all augmentation policies: ``forward(images) -> images`` on the shared ops.

    Subclasses implement :attr:`num_stages`, :meth:`sample` (what each stage draws) and :meth:`describe`
    (the values, in the schema of this module's docstring); :meth:`forward` runs
    :func:`~madao_pl.augment.stage.apply_stage` once per stage. Whether a policy learns is whether it
    has parameters that require grad.

    Randomness: every policy draws from ``generator`` (forward keyword) or else ``self.generator``. Give
    each DDP rank its own seeded generator so ranks draw different augmentations; give two policies equal
    seeds to get equal draws.

    Attributes:
        name: the policy's name in :meth:`describe` (class attribute).
        generator: default :class:`torch.Generator` for the draws, or ``None`` for torch's global one.
    """

    name: ClassVar[str] = "policy"

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    @property
    def num_stages(self) -> int:
        """Number of stages K (operations applied in sequence to each image)."""
        raise NotImplementedError(f"{type(self).__name__} must implement the num_stages property")

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """Draw what every stage applies to each of ``batch_size`` images, on ``device``; ``labels``
        ``(batch_size,)`` for class-conditional policies (the others ignore them).

        Returns:
            :attr:`num_stages` :class:`~madao_pl.augment.stage.StageSample`, in the order they apply,
            each of ``(batch_size,)`` tensors.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sample()")

    def describe(self) -> dict[str, Any]:
        """The policy's per-stage, per-operation probabilities and magnitudes, in the description schema
        (this module's docstring; each stage built by :func:`describe_stage`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement describe()")

    def penalty(self) -> Tensor | None:
        """A term the hyper step adds to the validation loss, a scalar with a graph to the parameters (its
        gradient joins the hypergradient), or ``None`` (the default: none)."""
        return None

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Augment ``images`` ``(B, C, H, W)`` in ``[0, 1]``; returns the same shape, on the same device.

        Args:
            images: the batch.
            generator: overrides ``self.generator`` for this call.
            labels: ``(B,)`` long, each image's class: needed by class-conditional policies only.
        """
        check_images(images)
        check_value_range(images)
        generator = generator if generator is not None else self.generator
        for stage in self.sample(images.shape[0], device=images.device, generator=generator, labels=labels):
            images = apply_stage(images, *stage)
        return images
