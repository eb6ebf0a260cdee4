"""Differentiable augmentation operations and policies (knows images, not training).

- :mod:`~madao_pl.augment.ops`: `OPERATIONS`, the table of the 14 ops, and `cutout`;
- :mod:`~madao_pl.augment.stage`: `StageSample`, `apply_stage` (one stage, grouped by op) and the
  random draws;
- :mod:`~madao_pl.augment.base`: `Policy` and `describe_stage`, the one description schema;
- :mod:`~madao_pl.augment.madao`: `MADAOPolicy` (trained with the network; optionally with an Identity
  choice and per-class offsets), `ReplayPolicy` (a learned policy, frozen);
- :mod:`~madao_pl.augment.policy_json`: their JSON format;
- :mod:`~madao_pl.augment.baselines`: `RandAugmentPolicy`, `TrivialAugmentPolicy`, `AutoAugmentPolicy`,
  `IdentityPolicy`, all through the same `apply_stage`;
- :mod:`~madao_pl.augment.autoaugment_tables`: the published AutoAugment sub-policies, as data.
"""

from madao_pl.augment.autoaugment_tables import AUTOAUGMENT_POLICIES
from madao_pl.augment.base import IDENTITY, Policy, StageDescription, describe_stage
from madao_pl.augment.baselines import (
    AutoAugmentPolicy,
    IdentityPolicy,
    RandAugmentPolicy,
    TrivialAugmentPolicy,
    autoaugment_magnitude,
    randaugment_magnitude,
)
from madao_pl.augment.madao import MADAOPolicy, ReplayPolicy
from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES, OPERATIONS, Operation, cutout, get_operation
from madao_pl.augment.stage import (
    StageSample,
    apply_stage,
    conditional_gumbels,
    conditional_logistic,
    relaxed_log_one_hot,
)

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "IDENTITY",
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
    "StageDescription",
    "StageSample",
    "TrivialAugmentPolicy",
    "apply_stage",
    "autoaugment_magnitude",
    "conditional_gumbels",
    "conditional_logistic",
    "cutout",
    "describe_stage",
    "get_operation",
    "randaugment_magnitude",
    "relaxed_log_one_hot",
]
