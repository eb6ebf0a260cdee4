"""Callbacks for `madao_pl.module.MADAOModule`: warm-up, and recording how the policy evolves.

`PolicyHistoryCallback` writes ``policy_history.csv`` (one row per hyper step, stage and
operation), logs every op's selection probability, apply probability and magnitude to the
configured loggers after each hyper step, and draws ``policy_evolution.png`` (selection
probabilities stacked over epochs, like the paper's Figures 2 and 4) and
``policy_parameters.png`` (apply probability and magnitude of the most selected ops, like
Figure 5) at each epoch end.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.loggers import WandbLogger  # noqa: E402

from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES  # noqa: E402

HISTORY_FIELDS = (
    "hyper_step",
    "epoch",
    "global_step",
    "stage",
    "op",
    "selection",
    "probability",
    "magnitude",
)


class WarmupCallback(pl.Callback):
    """No augmentation and no policy updates during the first ``warmup_epochs`` epochs.

    The state is derived from the epoch number, so a resumed run is in the right phase.
    """

    def __init__(self, warmup_epochs: int = 0) -> None:
        if int(warmup_epochs) < 0:
            raise ValueError(f"augment.warmup_epochs must be an integer >= 0, got {warmup_epochs}")
        self.warmup_epochs = int(warmup_epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        pl_module.warmup_active = trainer.current_epoch < self.warmup_epochs


def policy_snapshot(policy: Any) -> list[dict[str, dict[str, float | None]]]:
    """Per stage, per op: selection probability, apply probability, magnitude (None without one)."""
    selection = policy.selection_probabilities().detach().cpu()
    probability = policy.apply_probabilities().detach().cpu()
    magnitude = policy.magnitudes().detach().cpu()
    stages = []
    for k in range(selection.shape[0]):
        ops = {}
        for i, name in enumerate(OP_NAMES):
            mag = float(magnitude[k, MAGNITUDE_OPS.index(name)]) if name in MAGNITUDE_OPS else None
            ops[name] = {
                "selection": float(selection[k, i]),
                "probability": float(probability[k, i]),
                "magnitude": mag,
            }
        stages.append(ops)
    return stages


class PolicyHistoryCallback(pl.Callback):
    """Record the learned policy after every hyper step; write CSV and plots; log to loggers.

    Args:
        output_dir: where ``policy_history.csv`` and the plots go (default: the trainer's
            ``default_root_dir``).
        top_k: how many of the most selected ops per stage `policy_parameters.png` shows.
        log_every: log the per-op values to the loggers every this many hyper steps.
        plot_every_n_epochs: redraw the two plots every this many epochs (each drawing takes a second or
            two); the CSV is written every epoch and both plots always at the end of fit.
    """

    def __init__(
        self, output_dir: str | None = None, top_k: int = 3, log_every: int = 1, plot_every_n_epochs: int = 1
    ) -> None:
        if int(plot_every_n_epochs) < 1:
            raise ValueError(
                f"callbacks.policy_history.plot_every_n_epochs must be >= 1, got {plot_every_n_epochs}"
            )
        self.output_dir = output_dir
        self.top_k = top_k
        self.log_every = max(1, int(log_every))
        self.plot_every_n_epochs = int(plot_every_n_epochs)
        self.rows: list[dict[str, Any]] = []
        self.epoch_snapshots: list[tuple[int, list[dict[str, dict[str, float | None]]]]] = []
        self._seen_hyper_steps = -1

    def _dir(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _record(self, trainer: pl.Trainer, pl_module: Any) -> list[dict[str, dict[str, float | None]]]:
        snapshot = policy_snapshot(pl_module.policy)
        for k, ops in enumerate(snapshot):
            for name, values in ops.items():
                self.rows.append(
                    {
                        "hyper_step": pl_module.hyper_steps,
                        "epoch": trainer.current_epoch,
                        "global_step": trainer.global_step,
                        "stage": k,
                        "op": name,
                        **values,
                    }
                )
        self._seen_hyper_steps = pl_module.hyper_steps
        return snapshot

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.learns_policy and self._seen_hyper_steps < 0:
            self._record(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not pl_module.learns_policy or pl_module.hyper_steps == self._seen_hyper_steps:
            return
        snapshot = self._record(trainer, pl_module)
        if pl_module.hyper_steps % self.log_every == 0:
            metrics = {}
            for k, ops in enumerate(snapshot):
                for name, values in ops.items():
                    for key, value in values.items():
                        if value is not None:
                            metrics[f"policy/stage{k}/{name}/{key}"] = value
            pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not pl_module.learns_policy:
            return
        self.epoch_snapshots.append((trainer.current_epoch + 1, policy_snapshot(pl_module.policy)))
        if trainer.is_global_zero:
            self.write(trainer, plots=(trainer.current_epoch + 1) % self.plot_every_n_epochs == 0)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.learns_policy and trainer.is_global_zero:
            self.write(trainer, final=True)

    def write(self, trainer: pl.Trainer, final: bool = False, plots: bool = True) -> None:
        """Write the CSV and (unless ``plots`` is false) both plots; at the end of fit (``final``) with W&B
        also log the plots as images."""
        out = self._dir(trainer)
        with open(out / "policy_history.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        if not self.epoch_snapshots or not (plots or final):
            return
        evolution = out / "policy_evolution.png"
        parameters = out / "policy_parameters.png"
        plot_policy_evolution(self.epoch_snapshots, evolution)
        plot_policy_parameters(self.epoch_snapshots, parameters, top_k=self.top_k)
        if final:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image("policy/plots", [str(evolution), str(parameters)])

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "epoch_snapshots": self.epoch_snapshots, "seen": self._seen_hyper_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.epoch_snapshots = [tuple(item) for item in state_dict.get("epoch_snapshots", [])]
        self._seen_hyper_steps = int(state_dict.get("seen", -1))


def plot_policy_evolution(snapshots: list[tuple[int, list[dict[str, dict[str, Any]]]]], path: Path) -> None:
    """Per stage, the 14 selection probabilities stacked over epochs (paper Figures 2 and 4)."""
    epochs = [epoch for epoch, _ in snapshots]
    num_stages = len(snapshots[0][1])
    fig, axes = plt.subplots(1, num_stages, figsize=(6 * num_stages, 4), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for k in range(num_stages):
        stacks = [[snap[k][name]["selection"] for _, snap in snapshots] for name in OP_NAMES]
        ax = axes[0, k]
        ax.stackplot(epochs, stacks, labels=OP_NAMES, colors=colors[: len(OP_NAMES)])
        ax.set_title(f"stage {k + 1}: selection probability")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.set_xlim(min(epochs), max(epochs) if len(epochs) > 1 else min(epochs) + 1)
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_policy_parameters(
    snapshots: list[tuple[int, list[dict[str, dict[str, Any]]]]], path: Path, top_k: int = 3
) -> None:
    """Apply probability p and magnitude mu of the most selected ops per stage (paper Figure 5)."""
    epochs = [epoch for epoch, _ in snapshots]
    final = snapshots[-1][1]
    num_stages = len(final)
    fig, axes = plt.subplots(1, num_stages, figsize=(6 * num_stages, 4), squeeze=False)
    for k in range(num_stages):
        ranked = sorted(OP_NAMES, key=lambda name: final[k][name]["selection"], reverse=True)[:top_k]
        ax = axes[0, k]
        for j, name in enumerate(ranked):
            color = plt.get_cmap("tab10")(j)
            ax.plot(
                epochs,
                [snap[k][name]["probability"] for _, snap in snapshots],
                color=color,
                label=f"{name} p",
            )
            if final[k][name]["magnitude"] is not None:
                mags = [snap[k][name]["magnitude"] for _, snap in snapshots]
                ax.plot(epochs, mags, color=color, linestyle="--", label=f"{name} mu")
        ax.set_title(f"stage {k + 1}: top-{top_k} ops, p (solid) and mu (dashed)")
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
