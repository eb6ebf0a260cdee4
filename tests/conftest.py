"""Shared fixtures: composing the real Hydra configs with tiny limits, offline W&B, few threads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A few-step digits fit on CPU: small, quiet, deterministic.
TINY = [
    "dataset=digits",
    "model=cnn",
    "model.net.width=8",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "dataset.datamodule.batch_size=16",
    "dataset.datamodule.limit_train=160",
    "augment.warmup_epochs=0",
    "augment.inner_steps=3",
]


def compose_config(output_dir: Path | str, *overrides: str) -> DictConfig:
    """Compose madao_pl's real config tree with the given overrides and an output directory."""
    overrides = [*overrides, f"paths.output_dir={output_dir}"]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        return compose("config", overrides=overrides)


@pytest.fixture
def tiny_cfg(tmp_path: Path):
    """Factory: a tiny digits config writing into tmp_path (extra overrides win)."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(tmp_path, *TINY, *overrides)

    return make


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run a test with one intra-op thread (tiny problems: more threads only add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
