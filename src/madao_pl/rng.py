"""The global random states (Python, NumPy, torch CPU and CUDA), for a resume that ends where the
uninterrupted run ends. Stored in types that ``torch.load(weights_only=True)`` accepts."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_states", "rank_generator", "set_rng_states"]


def get_rng_states() -> dict[str, Any]:
    """Every global generator's state, as a dict of tensors, ints, floats and tuples."""
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global state is the point)
    states: dict[str, Any] = {
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


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned."""
    kind, keys, position, has_gauss, cached = states["numpy"]
    random.setstate(states["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def rank_generator(device: torch.device, rank: int, state: torch.Tensor | None = None) -> torch.Generator:
    """A generator on ``device`` for one DDP rank's augmentation draws: seeded from torch's initial seed and
    the rank (so ranks draw differently and a seeded run repeats), or set to a checkpointed ``state``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(torch.initial_seed() + 1_000_003 * rank)
    if state is not None:
        generator.set_state(state)
    return generator
