"""madao_pl.fit_state: the checkpoint's "madao" entry round-trips (and old or empty entries load), and
start_policy names a class-conditional policy and gives it this rank's generator."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import torch

from madao_pl.augment import MADAOPolicy
from madao_pl.data.stream import BatchStream
from madao_pl.fit_state import checkpoint_entry, restore_checkpoint_entry, start_policy
from madao_pl.rng import rank_generator


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)  # noqa: NPY002 (the global state)


def test_checkpoint_entry_round_trips_through_a_weights_only_load() -> None:
    stream = BatchStream(lambda: [1, 2])
    for _ in range(5):
        stream.next()  # into the third pass
    generator = rank_generator(torch.device("cpu"), rank=1)
    torch.rand(4, generator=generator)
    buffer = io.BytesIO()
    torch.save(checkpoint_entry(True, stream, generator), buffer)
    expected = _draws()

    _draws()  # move every global generator on
    fresh = BatchStream(lambda: [1, 2])
    buffer.seek(0)
    warmup, state = restore_checkpoint_entry(torch.load(buffer, weights_only=True), fresh)
    assert warmup is True and fresh.state_dict() == stream.state_dict() == {"passes": 2}
    assert torch.equal(state, generator.get_state())
    again = _draws()
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_an_entry_without_keys_loads_as_a_fresh_start() -> None:
    stream = BatchStream(lambda: [1])
    stream.passes = 3
    assert restore_checkpoint_entry({}, stream) == (False, None)
    assert stream.passes == 0


def test_start_policy_takes_matching_class_names_and_a_rank_generator() -> None:
    cpu = torch.device("cpu")
    policy = MADAOPolicy(num_classes=3)
    start_policy(
        policy, device=cpu, rank=0, datamodule=SimpleNamespace(class_names=["a", "b"]), generator_state=None
    )
    assert policy.class_names == ["0", "1", "2"]  # two names for three classes: left as they were
    assert torch.equal(policy.generator.get_state(), rank_generator(cpu, 0).get_state())

    resumed = rank_generator(cpu, 2)
    torch.rand(5, generator=resumed)
    policy = MADAOPolicy(num_classes=3)
    names = SimpleNamespace(class_names=("cat", "dog", "eel"))
    start_policy(policy, device=cpu, rank=2, datamodule=names, generator_state=resumed.get_state())
    assert policy.class_names == ["cat", "dog", "eel"]
    assert torch.equal(policy.generator.get_state(), resumed.get_state())

    own = policy.generator
    start_policy(policy, device=cpu, rank=0, datamodule=None, generator_state=None)
    assert policy.generator is own  # a policy that has a generator keeps it
