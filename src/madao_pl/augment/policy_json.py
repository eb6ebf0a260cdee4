"""The policy JSON format of :class:`~madao_pl.augment.MADAOPolicy` and
:class:`~madao_pl.augment.ReplayPolicy` (``to_dict``, written by ``save_json``, read by ``from_dict`` /
``load_json`` / ``from_json``)::

    {
        "format": "madao_pl.policy", "version": 1,
        "policy": "madao" (or "replay"), "num_stages": K,
        "temperature": tau, "bernoulli_temperature": tau_b, "eps": eps,
        "dtype": "float32",                      # dtype of the raw values
        "op_names": [...14] (+ "Identity"), "magnitude_ops": [...11],   # the op table the values refer to
        "raw": {"logits": K x 14 (15), "probability_raw": K x 14, "magnitude_raw": K x 11,
                # class-conditional only: the offsets, C x K x (14 (15), 14, 11)
                "logits_offset": ..., "probability_offset": ..., "magnitude_offset": ...},
        "class_names": [...C],                   # class-conditional only
        "classes": {name: [stage, ...]},         # class-conditional only: each class's describe() stages
        "describe": {...}                        # Policy.describe(), for humans; not read back
    }

The raw values are exact (float32 -> Python float round-trips); loading checks the format, the version
and that the op table is the current one."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from madao_pl.augment.base import IDENTITY
from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES

__all__ = ["FORMAT", "FORMAT_VERSION", "OFFSETS", "RAW", "parse_policy"]

FORMAT = "madao_pl.policy"
FORMAT_VERSION = 1
RAW = ("logits", "probability_raw", "magnitude_raw")
"""The raw values every saved policy holds."""
OFFSETS = ("logits_offset", "probability_offset", "magnitude_offset")
"""The per-class offsets a class-conditional policy also holds."""


def parse_policy(data: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Check a saved policy dict (format, version, op table, shapes) and return its raw tensors (saved dtype;
    the offsets if class-conditional) and settings (``class_names`` if class-conditional)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"not a saved madao_pl policy (expected format {FORMAT!r}); save one with MADAOPolicy.save_json"
        )
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"saved policy has format version {data.get('version')}, this code reads {FORMAT_VERSION}"
        )
    op_names = list(data["op_names"])
    if op_names not in (list(OP_NAMES), [*OP_NAMES, IDENTITY]) or list(data["magnitude_ops"]) != list(
        MAGNITUDE_OPS
    ):
        raise ValueError(
            "the saved policy refers to another operation table: saved "
            f"{data['op_names']} (magnitude ops {data['magnitude_ops']}), current {list(OP_NAMES)} "
            f"(magnitude ops {list(MAGNITUDE_OPS)}); load it with the madao_pl version that saved it"
        )
    dtype = getattr(torch, data.get("dtype", "float32"))
    k = int(data["num_stages"])
    expected = {
        "logits": (k, len(op_names)),
        "probability_raw": (k, len(OP_NAMES)),
        "magnitude_raw": (k, len(MAGNITUDE_OPS)),
    }
    names = data.get("class_names")
    if names is not None:
        widths = {"logits_offset": len(op_names), "probability_offset": len(OP_NAMES)}
        for key in OFFSETS:
            expected[key] = (len(names), k, widths.get(key, len(MAGNITUDE_OPS)))
    tensors = {}
    for key, shape in expected.items():
        value = torch.tensor(data["raw"][key], dtype=torch.float64)
        if tuple(value.shape) != shape:
            raise ValueError(f"saved policy: raw {key} has shape {tuple(value.shape)}, expected {shape}")
        tensors[key] = value.to(dtype)
    settings = {
        "temperature": float(data["temperature"]),
        "bernoulli_temperature": float(data["bernoulli_temperature"]),
        "eps": float(data["eps"]),
    }
    if names is not None:
        settings["class_names"] = [str(n) for n in names]
    return tensors, settings
