"""Hydra entry point: ``python -m madao_pl.run [overrides]``.

Composes ``madao_pl/conf`` (groups dataset, model, augment, trainer, logger, callbacks),
checks the settings, builds every object by ``_target_``, fits, tests, and writes into the run
directory: ``results.json``, ``policy.json``, ``policy_history.csv``,
``policy_evolution.png``, ``policy_parameters.png``, ``checkpoints/last.ckpt`` and the
logger's files. Hydra builds objects only; the logic lives in the modules it names.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from madao_pl.data import DatasetNotFoundError


class ConfigError(ValueError):
    """A configuration value outside its valid range; the message names the key."""


def check_config(cfg: DictConfig) -> None:
    """Refuse out-of-range settings before anything is built, one line naming key and range."""
    aug = cfg.augment
    checks = [
        ("augment.inner_steps", aug.inner_steps, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        (
            "augment.warmup_epochs",
            aug.warmup_epochs,
            lambda v: isinstance(v, int) and v >= 0,
            "an integer >= 0",
        ),
        (
            "augment.neumann_steps",
            aug.neumann_steps,
            lambda v: isinstance(v, int) and v >= 0,
            "an integer >= 0",
        ),
        ("augment.neumann_alpha", aug.neumann_alpha, lambda v: _number(v) and v > 0, "a number > 0"),
        ("augment.neumann_tol", aug.neumann_tol, lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
        (
            "augment.hyper_chunks",
            aug.hyper_chunks,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "an integer >= 1",
        ),
        ("augment.hyper_recompute", aug.hyper_recompute, lambda v: isinstance(v, bool), "true or false"),
        ("augment.temperature", aug.temperature, lambda v: _number(v) and v > 0, "a number > 0"),
        (
            "augment.method",
            aug.method,
            lambda v: v in ("neumann", "cg", "exact"),
            "one of neumann, cg, exact",
        ),
        ("dataset.epochs", cfg.dataset.epochs, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
        ("dataset.cutout", cfg.dataset.cutout, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
        ("dataset.lr", cfg.dataset.lr, lambda v: _number(v) and v > 0, "a number > 0"),
    ]
    for key, value, valid, expected in checks:
        if not valid(value):
            raise ConfigError(f"{key}={value!r} is invalid: it must be {expected}")
    _check_launch(cfg)
    if cfg.trainer.get("sync_batchnorm", False):
        raise ConfigError(
            "trainer.sync_batchnorm=true is not supported: SyncBatchNorm has no double backward, which the "
            "MADAO hyper step needs; use trainer.sync_batchnorm=false"
        )


def _check_launch(cfg: DictConfig) -> None:
    """Refuse a local multirun with strategy=ddp: Lightning's ddp launcher re-runs the command
    line in child processes, which would re-launch the whole sweep from every rank."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    strategy = str(cfg.trainer.get("strategy", "auto"))
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and strategy.startswith("ddp") and strategy != "ddp_spawn":
        if "submitit" not in launcher:
            raise ConfigError(
                f"trainer.strategy={strategy} cannot run inside a local Hydra multirun (its child processes "
                "would re-launch the sweep): use hydra/launcher=slurm for clusters, or "
                "trainer.strategy=ddp_spawn locally"
            )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def output_dir(cfg: DictConfig) -> Path:
    """The run directory (Hydra's, or paths.output_dir when composed outside @hydra.main)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; write the run's outputs; return results.json's content."""
    check_config(cfg)
    out = output_dir(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset.datamodule)
    num_classes = cfg.dataset.num_classes
    if num_classes is None:
        datamodule.prepare_data()
        datamodule.setup("fit")
        num_classes = datamodule.num_classes
    net = instantiate(cfg.model.net, num_classes=num_classes)
    policy = instantiate(cfg.augment.policy)
    module = instantiate(
        cfg.module, net=net, policy=policy, num_classes=num_classes, mean=datamodule.mean, std=datamodule.std
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.test:
        test_metrics = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (test_metrics[0] if test_metrics else {}).items()})

    results = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "augment": cfg.augment.name,
        "seed": cfg.seed,
        "inner_steps": cfg.augment.inner_steps,
        "warmup_epochs": cfg.augment.warmup_epochs,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "test_error": metrics.get("test/error"),
        "val_error": metrics.get("val/error"),
        "hyper_steps": module.hyper_steps,
        "skipped_hyper_steps": module.skipped_hyper_steps,
        "hvps": module.total_hvps,
        "hvps_per_hyper_step": module.total_hvps / module.hyper_steps if module.hyper_steps else None,
        "fit_seconds": fit_seconds,
        "device": str(module.device),
        "world_size": trainer.world_size,
        "policy": policy.describe(),
        "metrics": metrics,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        if hasattr(policy, "save_json"):
            policy.save_json(out / "policy.json")
    _finish_wandb(loggers)
    return results


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so that the next multirun job starts a new one."""
    if any(type(logger).__name__ == "WandbLogger" for logger in loggers):
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: returns the test error (for sweepers that optimise it)."""
    try:
        results = train(cfg)
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    error = results.get("test_error")
    print(f"test error: {100 * error:.2f}%" if error is not None else "no test error (test=false)")
    print(f"outputs in {HydraConfig.get().runtime.output_dir}")
    return error


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    main()
