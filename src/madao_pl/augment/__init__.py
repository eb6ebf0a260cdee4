"""Differentiable augmentation operations and policies (knows images, not training).

`OPERATIONS` is the table of the 14 ops; `MADAOPolicy` is the learnable policy; the fixed
baselines (`RandAugmentPolicy`, `AutoAugmentPolicy`, `TrivialAugmentPolicy`, `IdentityPolicy`)
and `ReplayPolicy` (a learned policy, frozen) run through the same `apply_stage`.
"""

from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES, OPERATIONS, Operation, cutout, get_operation
from madao_pl.augment.policy import (
    AutoAugmentPolicy,
    IdentityPolicy,
    MADAOPolicy,
    Policy,
    RandAugmentPolicy,
    ReplayPolicy,
    TrivialAugmentPolicy,
    apply_stage,
    build_policy,
)

__all__ = [
    "MAGNITUDE_OPS",
    "OPERATIONS",
    "OP_NAMES",
    "AutoAugmentPolicy",
    "IdentityPolicy",
    "MADAOPolicy",
    "Operation",
    "Policy",
    "RandAugmentPolicy",
    "ReplayPolicy",
    "TrivialAugmentPolicy",
    "apply_stage",
    "build_policy",
    "cutout",
    "get_operation",
]
