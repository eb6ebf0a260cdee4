"""The policy figures: how the learned policy evolves over training (paper Figures 2, 4 and 5).

Both functions take the per-epoch snapshots :class:`madao_pl.callbacks.PolicyHistoryCallback` keeps:
a list of ``(epoch, stages)`` where ``stages`` is :meth:`madao_pl.augment.Policy.describe`'s
``"stages"``, one :data:`~madao_pl.augment.StageDescription` per stage. They write a PNG and return
nothing; matplotlib runs on its non-interactive Agg backend, so they work without a display.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from madao_pl.augment import OP_NAMES, StageDescription  # noqa: E402

__all__ = ["plot_policy_evolution", "plot_policy_parameters"]


def plot_policy_evolution(snapshots: list[tuple[int, list[StageDescription]]], path: Path) -> None:
    """Per stage, the 14 selection probabilities stacked over epochs (paper Figures 2 and 4).

    Args:
        snapshots: ``(epoch, stages)`` in epoch order, at least one.
        path: the PNG to write (one panel per stage).
    """
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
    snapshots: list[tuple[int, list[StageDescription]]], path: Path, top_k: int = 3
) -> None:
    """Apply probability p and magnitude mu of the most selected ops per stage (paper Figure 5).

    Args:
        snapshots: ``(epoch, stages)`` in epoch order, at least one.
        path: the PNG to write (one panel per stage).
        top_k: per stage, how many ops to show: the most selected in the last snapshot.
    """
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
                [snap[k][name]["apply"] for _, snap in snapshots],
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
