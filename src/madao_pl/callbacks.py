"""Callbacks for `madao_pl.module.MADAOModule`: warm-up, and recording how the policy evolves.

`PolicyHistoryCallback` writes ``policy_history.csv`` (one row per hyper step, stage and
operation), logs every op's selection probability, apply probability and magnitude to the
configured loggers after each hyper step (``policy/stage{k}/{op}/{selection|apply|magnitude}``),
and draws ``policy_evolution.png`` (selection probabilities stacked over epochs, like the
paper's Figures 2 and 4) and ``policy_parameters.png`` (apply probability and magnitude of the
most selected ops, like Figure 5) at each epoch end, with `madao_pl.plots`; for a class-conditional policy
also ``policy_classes.png`` (class x op effective use) and, when it has at most
:data:`MAX_CLASS_SERIES` classes, per-class values to the loggers
(``policy/class/<name>/<op>/use``: selection x apply summed over stages). The values are the
policy's own `Policy.describe()` (the schema of `madao_pl.augment.describe_stage`), so the CSV
columns and metric names are the schema's keys.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

from madao_pl.augment import Policy, StageDescription
from madao_pl.distributed import destroy_process_group_at_exit
from madao_pl.loggers import log_to_every_logger, logger_step
from madao_pl.plots import effective_use, plot_policy_classes, plot_policy_evolution, plot_policy_parameters

HISTORY_FIELDS = (
    "hyper_step",
    "epoch",
    "global_step",
    "stage",
    "op",
    "selection",
    "apply",
    "magnitude",
)
"""Columns of ``policy_history.csv``: where in training, then one op's values in the description schema."""


class WarmupCallback(pl.Callback):
    """No augmentation and no policy updates during the first ``warmup_epochs`` epochs.

    The state is derived from the epoch number, so a resumed run is in the right phase. At the start of
    training it warns when a learned policy will get fewer than ``min_hyper_steps`` hyper steps: the
    policy then barely leaves its initial values (the paper's CIFAR-10 runs take about 2,300).

    Args:
        warmup_epochs: epochs without augmentation and hyper steps, >= 0.
        min_hyper_steps: warn below this many planned hyper steps (0 = never warn), >= 0.
    """

    def __init__(self, warmup_epochs: int = 0, min_hyper_steps: int = 100) -> None:
        for name, value in (("warmup_epochs", warmup_epochs), ("min_hyper_steps", min_hyper_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.warmup_epochs = int(warmup_epochs)
        self.min_hyper_steps = int(min_hyper_steps)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        pl_module.warmup_active = trainer.current_epoch < self.warmup_epochs

    def planned_hyper_steps(self, trainer: pl.Trainer, inner_steps: int) -> int | None:
        """Hyper steps of the whole fit: the training batches after warm-up over ``inner_steps``
        (None when the length of an epoch is unknown)."""
        per_epoch = trainer.num_training_batches
        if not isinstance(per_epoch, int | float) or per_epoch == float("inf"):
            return None
        total = trainer.max_epochs * int(per_epoch) if trainer.max_epochs and trainer.max_epochs > 0 else None
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = trainer.max_steps if total is None else min(total, trainer.max_steps)
        if total is None:
            return None
        return max(0, total - self.warmup_epochs * int(per_epoch)) // inner_steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not getattr(pl_module, "learns_policy", False) or self.min_hyper_steps == 0:
            return
        planned = self.planned_hyper_steps(trainer, pl_module.inner_steps)
        if planned is not None and planned < self.min_hyper_steps:
            outcome = (
                "so the policy will not learn (policy.json will hold its initial values)"
                if planned == 0
                else "so the policy will stay close to its initial values"
            )
            rank_zero_warn(
                f"this run will take {planned} hyper steps (fewer than {self.min_hyper_steps}; the paper's "
                f"CIFAR-10 runs take about 2,300; counted per process, after warm-up), {outcome}. "
                "More hyper steps: fewer inner steps per hyper step (augment.inner_steps), fewer warm-up "
                "epochs (augment.warmup_epochs) or more epochs (dataset.epochs).",
                category=UserWarning,
            )


class ProcessGroupCleanup(pl.Callback):
    """Has every rank destroy its process group when its process exits (`destroy_process_group_at_exit`).

    Without it a CPU run on gloo (``trainer=ddp_cpu``) now and then fails after its work: a rank aborts as
    it exits. `madao_pl.run` adds it to every Trainer it builds; add it to your own Trainer's callbacks when
    you train with DDP on CPU.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        destroy_process_group_at_exit()


MAX_CLASS_SERIES = 20
"""Class-conditional policies with more classes log no per-class scalars (only the heat map)."""


def _class_metrics(policy: Any) -> dict[str, float]:
    """``policy/class/<name>/<op>/use`` for a class-conditional policy of at most :data:`MAX_CLASS_SERIES`
    classes (the expected number of times a stage applies the op to an image of the class), else ``{}``."""
    if not 0 < getattr(policy, "num_classes", 0) <= MAX_CLASS_SERIES:
        return {}
    metrics: dict[str, float] = {}
    for name, stages in policy.describe_classes().items():
        for stage in stages:
            for op, use in effective_use(stage).items():
                key = f"policy/class/{name}/{op}/use"
                metrics[key] = metrics.get(key, 0.0) + use
    return metrics


def _current_names(values: dict[str, Any]) -> dict[str, Any]:
    """One op's values (or a history row) as saved by an older version, with the current key (column)
    names: the apply probability was ``probability``."""
    return {("apply" if k == "probability" else k): v for k, v in values.items()}


def policy_snapshot(policy: Policy) -> list[StageDescription]:
    """The policy's stages as :meth:`Policy.describe` reports them: per stage ``{op name: {"selection",
    "apply", "magnitude" (None without one)}}``."""
    return policy.describe()["stages"]


class PolicyHistoryCallback(pl.Callback):
    """Record the learned policy after every hyper step; write CSV and plots; log to loggers.

    Args:
        output_dir: where ``policy_history.csv`` and the plots go (default: the trainer's
            ``default_root_dir``).
        top_k: how many of the most selected ops per stage `policy_parameters.png` shows.
        log_every: log the per-op values to the loggers every this many hyper steps.
        plot_every_n_epochs: redraw the two plots every this many epochs (each drawing takes a second or
            two); the CSV is written every epoch and both plots always at the end of fit. The plots draw
            every hyper step against the training progress, the warm-up (``WarmupCallback``) shaded.
    """

    def __init__(
        self, output_dir: str | None = None, top_k: int = 3, log_every: int = 1, plot_every_n_epochs: int = 1
    ) -> None:
        if int(plot_every_n_epochs) < 1:
            raise ValueError(f"plot_every_n_epochs must be an integer >= 1, got {plot_every_n_epochs}")
        self.output_dir = output_dir
        self.top_k = top_k
        self.log_every = max(1, int(log_every))
        self.plot_every_n_epochs = int(plot_every_n_epochs)
        self.rows: list[dict[str, Any]] = []
        self.points: list[tuple[float, list[StageDescription]]] = []  # (epochs of training, stages)
        self._seen_hyper_steps = -1
        self._warmup_epochs = 0.0

    def _dir(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _record(self, trainer: pl.Trainer, pl_module: Any, epochs: float) -> list[StageDescription]:
        hyper_steps = int(pl_module.hyper_steps)  # a plain int, also where the module keeps a tensor counter
        snapshot = policy_snapshot(pl_module.policy)
        self.points.append((epochs, snapshot))
        for k, ops in enumerate(snapshot):
            for name, values in ops.items():
                self.rows.append(
                    {
                        "hyper_step": hyper_steps,
                        "epoch": trainer.current_epoch,
                        "global_step": logger_step(trainer),
                        "stage": k,
                        "op": name,
                        **values,
                    }
                )
        self._seen_hyper_steps = hyper_steps
        return snapshot

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not pl_module.learns_policy:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                define = getattr(logger.experiment, "define_metric", None)
                if define is not None:  # a disabled run has no define_metric
                    define("hyper_step")
                    define("policy/*", step_metric="hyper_step")
                    define("hyper/*", step_metric="hyper_step")
        warmups = [c.warmup_epochs for c in trainer.callbacks if isinstance(c, WarmupCallback)]
        self._warmup_epochs = float(warmups[0]) if warmups else 0.0
        if self._seen_hyper_steps < 0:
            self._log(
                trainer, self._record(trainer, pl_module, float(trainer.current_epoch)), pl_module.policy
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not pl_module.learns_policy or int(pl_module.hyper_steps) == self._seen_hyper_steps:
            return
        per_epoch = trainer.num_training_batches
        done = (batch_idx + 1) / per_epoch if isinstance(per_epoch, int) and per_epoch > 0 else 1.0
        snapshot = self._record(trainer, pl_module, trainer.current_epoch + done)
        if self._seen_hyper_steps % self.log_every == 0:
            self._log(trainer, snapshot, pl_module.policy)

    def _log(self, trainer: pl.Trainer, snapshot: list[StageDescription], policy: Policy) -> None:
        """One row per hyper step to every logger, straight through ``log_metrics`` (not Lightning's
        ``log_every_n_steps`` throttle): ``hyper_step`` and ``policy/stage<k>/<op>/<value>``."""
        metrics: dict[str, float] = {"hyper_step": float(self._seen_hyper_steps)}
        for k, ops in enumerate(snapshot):
            for name, values in ops.items():
                for key, value in values.items():
                    if value is not None:
                        metrics[f"policy/stage{k}/{name}/{key}"] = value
        metrics.update(_class_metrics(policy))
        log_to_every_logger(trainer, metrics)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not pl_module.learns_policy:
            return
        if trainer.is_global_zero:
            self.write(trainer, plots=(trainer.current_epoch + 1) % self.plot_every_n_epochs == 0)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """The CSV and plots, and the learned policy as ``policy.json`` (for ``augment=replay`` or
        :meth:`ReplayPolicy.from_json`), in library use as in the app."""
        if pl_module.learns_policy and trainer.is_global_zero:
            self.write(trainer, final=True)
            if hasattr(pl_module.policy, "save_json"):
                pl_module.policy.save_json(self._dir(trainer) / "policy.json")

    def write(self, trainer: pl.Trainer, final: bool = False, plots: bool = True) -> None:
        """Write the CSV and (unless ``plots`` is false; always when ``final``) the plots (a class-conditional
        policy's heat map too), which W&B also gets, as images and as line-series charts (:meth:`charts`)."""
        out = self._dir(trainer)
        with open(out / "policy_history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        if not self.points or not (plots or final):
            return
        evolution = out / "policy_evolution.png"
        parameters = out / "policy_parameters.png"
        # the epochs done: at fit end Lightning has already counted the last one
        now = max(float(trainer.current_epoch + (0 if final else 1)), self.points[-1][0])
        points = [*self.points, (now, self.points[-1][1])]  # the last values hold to the end of the epoch
        plot_policy_evolution(points, evolution, warmup_epochs=self._warmup_epochs)
        plot_policy_parameters(points, parameters, top_k=self.top_k, warmup_epochs=self._warmup_epochs)
        images = [evolution, parameters]
        policy = trainer.lightning_module.policy
        if getattr(policy, "num_classes", 0):
            images.append(out / "policy_classes.png")
            plot_policy_classes(policy.describe_classes(), images[-1])
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("policy/plots", [str(image) for image in images])
                logger.experiment.log(self.charts())

    def charts(self) -> dict[str, Any]:
        """W&B line-series charts, one per stage and value (selection, apply, magnitude): every op's value
        against the hyper step, from every recorded hyper step."""
        import wandb

        steps = sorted({int(row["hyper_step"]) for row in self.rows})
        table: dict[tuple[int, str, str], dict[int, float]] = {}
        for row in self.rows:
            for key in ("selection", "apply", "magnitude"):
                if row.get(key) is not None:
                    series = table.setdefault((int(row["stage"]), key, row["op"]), {})
                    series[int(row["hyper_step"])] = row[key]
        charts = {}
        for stage in sorted({k[0] for k in table}):
            for key in ("selection", "apply", "magnitude"):
                ops = [op for (k, name, op) in table if k == stage and name == key]
                if ops:
                    series = [[table[(stage, key, op)].get(t) for t in steps] for op in ops]
                    charts[f"policy/charts/stage{stage}_{key}"] = wandb.plot.line_series(
                        xs=steps,
                        ys=series,
                        keys=ops,
                        title=f"stage {stage}: {key} per op",
                        xname="hyper_step",
                    )
        return charts

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "points": self.points, "seen": self._seen_hyper_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [_current_names(row) for row in state_dict.get("rows", [])]
        points = state_dict.get("points", state_dict.get("epoch_snapshots", []))  # older: one per epoch
        self.points = [
            (float(x), [{op: _current_names(v) for op, v in ops.items()} for ops in stages])
            for x, stages in points
        ]
        self._seen_hyper_steps = int(state_dict.get("seen", -1))
