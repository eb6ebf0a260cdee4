"""Logging helpers: one row per hyper step to every logger, and a CSV logger that never loses rows.

`log_to_every_logger` sends a row straight to each logger's ``log_metrics`` at the step they plot against
(`logger_step`): hyper steps come every ``inner_steps`` batches, and Lightning's ``self.log`` would keep
only those that fall on a ``log_every_n_steps`` boundary. `log_hyper_step` is the row of one hyper step
(and the warning when its policy step was skipped).

Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts, and rewrites the file
with only the columns its own process has seen when new ones appear. Both lose work here: a run
resumed from ``last.ckpt`` (a new process) would wipe the earlier epochs' metrics, and with
``ddp_spawn`` the test phase (new worker processes) cannot append its columns to the file the fit
phase wrote. `CSVLogger` keeps the file and merges the header instead.
"""

from __future__ import annotations

import csv
import warnings
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

if TYPE_CHECKING:
    from torch import Tensor, nn

    from madao_pl.hyperstep import HyperStepResult


def logger_step(trainer: pl.Trainer) -> int:
    """The step the loggers plot against: training batches taken (``trainer.global_step`` also counts the
    policy optimiser's steps)."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def log_to_every_logger(trainer: pl.Trainer, metrics: dict[str, Any]) -> None:
    """``metrics`` to every logger of ``trainer`` once, from global rank 0, at :func:`logger_step`."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(trainer))


def log_hyper_step(
    trainer: pl.Trainer,
    result: HyperStepResult,
    hypergrad: Tensor,
    *,
    finite: bool,
    policy: nn.Module,
    hyper_steps: int,
    skipped: int,
) -> None:
    """The ``hyper/*`` row (and ``policy/entropy``, if the policy has one) of hyper step ``hyper_steps`` to
    every logger; when its (rank-averaged, flat) ``hypergrad`` was not ``finite``, so that the policy step
    was skipped (``skipped`` so far, this one included), a RuntimeWarning at the module's training step."""
    if not finite:
        warnings.warn(
            f"non-finite hypergradient at hyper step {hyper_steps} (global step "
            f"{trainer.global_step}): policy step skipped ({skipped} skipped so far)",
            RuntimeWarning,
            stacklevel=3,  # MADAOModule.training_step, the caller of the module's _hyper_step
        )
    metrics = {
        "hyper_step": float(hyper_steps),
        "hyper/val_loss": float(result.val_loss),
        "hyper/grad_norm": float(hypergrad.norm()) if finite else float("nan"),
        "hyper/hvps": float(result.info.hvps),
        "hyper/skipped": float(skipped),
        "hyper/steps": float(hyper_steps),
    }
    if result.info.alpha is not None:
        metrics["hyper/neumann_alpha"] = result.info.alpha
    if hasattr(policy, "entropy"):
        metrics["policy/entropy"] = float(policy.entropy().detach())
    log_to_every_logger(trainer, metrics)  # every hyper step, whatever log_every_n_steps is


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's ExperimentWriter, appending to an existing metrics.csv with a merged header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            existing = reader.fieldnames or []
        self.metrics_keys = sorted(set(existing) | set(fieldnames))
        with self._fs.open(self.metrics_file_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger with `AppendingExperimentWriter`: resumed runs and ddp_spawn test
    phases append to ``metrics.csv`` instead of replacing it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
