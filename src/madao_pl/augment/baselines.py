"""The fixed baseline policies on MADAO's op table (DESIGN.md §4): RandAugment, TrivialAugment,
AutoAugment and the identity.

They draw their stages with the same random helpers and run through the same
:func:`~madao_pl.augment.stage.apply_stage` as MADAO, so a comparison differs only in the policy. None of
them has parameters, and each is the same for every class (``labels`` are accepted and ignored).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from madao_pl.augment.autoaugment_tables import AUTOAUGMENT_POLICIES
from madao_pl.augment.base import Policy, describe_stage
from madao_pl.augment.ops import OP_NAMES, OPERATIONS
from madao_pl.augment.stage import (
    StageSample,
    check_images,
    check_value_range,
    draw_randint,
    draw_uniform,
    signs_from_uniform,
)

__all__ = [
    "AutoAugmentPolicy",
    "IdentityPolicy",
    "RandAugmentPolicy",
    "TrivialAugmentPolicy",
    "autoaugment_magnitude",
    "randaugment_magnitude",
]


def randaugment_magnitude(m: float, num_bins: int = 31) -> float:
    """RandAugment's integer magnitude M on the ``0 .. num_bins - 1`` scale -> ``mu = M / (num_bins - 1)``.

    With the default 31 bins (torchvision, M in 0..30) this is M / 30; the original paper's 0..10 scale
    is ``num_bins=11``. Geometric ops then match torchvision exactly (same maxima: shear 0.3, rotate 30
    degrees); torchvision's enhance ops reach ``1 +- 0.9 M/30`` where these reach ``1 +- M/30``.
    """
    if not 0 <= m <= num_bins - 1:
        raise ValueError(f"RandAugment magnitude must be in [0, {num_bins - 1}], got {m}")
    return float(m) / (num_bins - 1)


class RandAugmentPolicy(Policy):
    """RandAugment (Cubuk et al. 2020) on this op table: ``num_ops`` stages, each op uniform over all 14
    (Invert included, as the MADAO paper's baseline), always applied, every magnitude ``magnitude`` in
    ``[0, 1]`` (see :func:`randaugment_magnitude` for the integer M scale), fair random sign per sample."""

    name: ClassVar[str] = "randaugment"

    def __init__(self, num_ops: int = 2, magnitude: float = 0.5) -> None:
        super().__init__()
        if num_ops < 1:
            raise ValueError(f"num_ops must be >= 1, got {num_ops}")
        if not 0.0 <= magnitude <= 1.0:
            raise ValueError(
                f"magnitude must be in [0, 1], got {magnitude}; for RandAugment's integer M use "
                "randaugment_magnitude(M) (= M / 30)"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)

    @property
    def num_stages(self) -> int:
        """``num_ops``: one stage per operation applied."""
        return self.num_ops

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}"

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """Per stage: a uniform op index, apply weight 1, magnitude ``self.magnitude``, a fair sign."""
        device = torch.device(device)
        stages = []
        for _ in range(self.num_ops):
            op_index = draw_randint(len(OPERATIONS), (batch_size,), generator, device)
            sign = signs_from_uniform(draw_uniform((batch_size,), generator, device), torch.float32)
            ones = torch.ones(batch_size, device=device)
            stages.append(StageSample(op_index, ones, ones * self.magnitude, sign))
        return stages

    def describe(self) -> dict[str, Any]:
        """Every stage: selection 1/14, apply 1, magnitude ``self.magnitude`` for every op."""
        n = len(OPERATIONS)
        stage = describe_stage([1.0 / n] * n, [1.0] * n, [self.magnitude] * n)
        return {
            "policy": self.name,
            "num_stages": self.num_ops,
            "stages": [dict(stage) for _ in range(self.num_ops)],
        }


class TrivialAugmentPolicy(Policy):
    """TrivialAugment (Mueller & Hutter 2021) on this op table: one stage, one op uniform over the 14,
    always applied, magnitude uniform in [0, 1] per sample, fair random sign. (torchvision's
    TrivialAugmentWide also has an Identity op and wider ranges; this one uses the MADAO ranges.)
    ``describe()`` reports the mean magnitude 0.5."""

    name: ClassVar[str] = "trivialaugment"

    @property
    def num_stages(self) -> int:
        """One stage."""
        return 1

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """One stage: a uniform op index, apply weight 1, magnitude U[0, 1), a fair sign."""
        device = torch.device(device)
        op_index = draw_randint(len(OPERATIONS), (batch_size,), generator, device)
        uniform = draw_uniform((batch_size, 2), generator, device)
        ones = torch.ones(batch_size, device=device)
        return [StageSample(op_index, ones, uniform[:, 0], signs_from_uniform(uniform[:, 1], torch.float32))]

    def describe(self) -> dict[str, Any]:
        """Selection 1/14, apply 1, the mean magnitude 0.5 for every op; plus ``"magnitude_distribution"``."""
        n = len(OPERATIONS)
        return {
            "policy": self.name,
            "num_stages": 1,
            "magnitude_distribution": "uniform[0, 1] per sample",
            "stages": [describe_stage([1.0 / n] * n, [1.0] * n, [0.5] * n)],
        }


class IdentityPolicy(Policy):
    """No augmentation: returns the input batch itself (the crop/flip/cutout-only baseline)."""

    name: ClassVar[str] = "identity"

    @property
    def num_stages(self) -> int:
        """No stages."""
        return 0

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """Nothing to draw: an empty list."""
        return []

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """Check ``images`` ``(B, C, H, W)`` and return the same tensor (no copy)."""
        check_images(images)
        check_value_range(images)
        return images

    def describe(self) -> dict[str, Any]:
        """No stages."""
        return {"policy": self.name, "num_stages": 0, "stages": []}


_AA_LEVELS = 10  # AutoAugment's magnitude levels 0..9


def autoaugment_magnitude(op_name: str, level: int | None) -> float:
    """AutoAugment magnitude level (0..9) -> mu in [0, 1] on this op table, at AutoAugment's strength.

    torchvision's bins (10 levels, ``L / 9`` of each maximum) against this table's ranges:

    - ShearX/Y: factor ``0.3 L/9`` = ``0.3 mu`` -> ``mu = L/9``;
    - TranslateX/Y: ``150/331 L/9`` of the size = ``0.45 mu`` -> ``mu = (150/331) (L/9) / 0.45``, capped at
      1 (level 9 is 0.4532 there and 0.45 here; torchvision also rounds to whole pixels, this does not);
    - Rotate: ``30 L/9`` degrees -> ``mu = L/9``;
    - Color, Contrast, Brightness, Sharpness: factor ``1 +- 0.9 L/9`` = ``1 +- mu`` -> ``mu = 0.9 L/9``;
    - Posterize: keeps ``8 - round(4 L/9)`` bits = ``8 - round(4 mu)`` -> ``mu = round(4 L/9) / 4``;
    - Solarize: torchvision inverts the 8-bit values ``v >= 255 (1 - L/9)``, this op ``v >= 256 (1 - mu)``;
      ``mu = 1 - T / 256`` with ``T = ceil(255 (1 - L/9)) - 0.5`` (capped at 1) puts the threshold halfway
      between 8-bit levels, so exactly the same levels are inverted, whatever the float rounding;
    - Invert, AutoContrast, Equalize: no magnitude, ``level`` is ignored -> 0.
    """
    if op_name not in OP_NAMES:
        raise ValueError(f"unknown operation {op_name!r}; the operations are {list(OP_NAMES)}")
    if not OPERATIONS[OP_NAMES.index(op_name)].has_magnitude:
        return 0.0
    if level is None or not 0 <= level < _AA_LEVELS:
        raise ValueError(
            f"{op_name} needs an AutoAugment magnitude level in 0..{_AA_LEVELS - 1}, got {level}"
        )
    frac = level / (_AA_LEVELS - 1)
    if op_name in ("ShearX", "ShearY", "Rotate"):
        return frac
    if op_name == "Solarize":
        return min(1.0, 1.0 - (math.ceil(255 * (1 - frac) - 1e-9) - 0.5) / 256)
    if op_name in ("TranslateX", "TranslateY"):
        return min(1.0, (150.0 / 331.0) * frac / 0.45)
    if op_name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 0.9 * frac
    if op_name == "Posterize":
        return round(4 * frac) / 4
    raise ValueError(f"no AutoAugment magnitude mapping for {op_name!r}")


class AutoAugmentPolicy(Policy):
    """AutoAugment (Cubuk et al. 2019) with the published sub-policies
    (:data:`~madao_pl.augment.autoaugment_tables.AUTOAUGMENT_POLICIES`) on this op table: per sample
    one of the 25 sub-policies uniformly; stage 1 applies its first operation with its probability,
    stage 2 its second; magnitudes by :func:`autoaugment_magnitude`; signed ops take a fair random sign
    per stage, as torchvision does.

    ``describe()`` gives the per-stage marginals: selection = share of sub-policies with that op at that
    stage, apply and magnitude = their mean over those sub-policies (0 where the op does not occur);
    the sub-policies themselves are under ``"subpolicies"``.

    Args:
        policy: ``"cifar10"``, ``"svhn"`` or ``"imagenet"``.
    """

    name: ClassVar[str] = "autoaugment"

    def __init__(self, policy: str = "cifar10") -> None:
        super().__init__()
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {policy!r}; choose one of {sorted(AUTOAUGMENT_POLICIES)}"
            )
        self.policy = policy
        table = AUTOAUGMENT_POLICIES[policy]
        self.register_buffer(
            "_op_index",
            torch.tensor([[OP_NAMES.index(op) for op, _, _ in sub] for sub in table], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "_probability", torch.tensor([[p for _, p, _ in sub] for sub in table]), persistent=False
        )
        self.register_buffer(
            "_magnitude",
            torch.tensor([[autoaugment_magnitude(op, level) for op, _, level in sub] for sub in table]),
            persistent=False,
        )

    @property
    def num_stages(self) -> int:
        """Two stages: a sub-policy's first and second operation."""
        return 2

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"

    def sample(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """Per sample one sub-policy; stage k applies its k-th op with its probability, with a fair sign."""
        device = torch.device(device)
        choice = draw_randint(self._op_index.shape[0], (batch_size,), generator, device)
        uniform = draw_uniform((batch_size, 2, 2), generator, device)
        op_index = self._op_index.to(device)[choice]
        probability = self._probability.to(device)[choice]
        magnitude = self._magnitude.to(device)[choice]
        apply_weight = (uniform[..., 0] < probability).float()
        sign = signs_from_uniform(uniform[..., 1], torch.float32)
        return [
            StageSample(op_index[:, k], apply_weight[:, k], magnitude[:, k], sign[:, k]) for k in range(2)
        ]

    def describe(self) -> dict[str, Any]:
        """Per-stage marginals of the sub-policies (see the class doc), plus ``"autoaugment_policy"`` and
        ``"subpolicies"``."""
        table = AUTOAUGMENT_POLICIES[self.policy]
        stages = []
        for k in range(2):
            selection, apply, magnitude = [], [], []
            for name in OP_NAMES:
                rows = [sub[k] for sub in table if sub[k][0] == name]
                selection.append(len(rows) / len(table))
                apply.append(sum(p for _, p, _ in rows) / len(rows) if rows else 0.0)
                mus = [autoaugment_magnitude(name, level) for _, _, level in rows]
                magnitude.append(sum(mus) / len(mus) if mus else 0.0)
            stages.append(describe_stage(selection, apply, magnitude))
        return {
            "policy": self.name,
            "autoaugment_policy": self.policy,
            "num_stages": 2,
            "stages": stages,
            "subpolicies": [[list(op) for op in sub] for sub in table],
        }
