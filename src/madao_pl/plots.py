"""The policy figures: how the learned policy evolves over training (paper Figures 2, 4 and 5), and what a
class-conditional policy does per class (:func:`plot_policy_classes`).

Both functions take the points :class:`madao_pl.callbacks.PolicyHistoryCallback` keeps: a list of
``(epochs, stages)``, one per hyper step (and the start, and the end of the last epoch), where ``epochs`` is
the training progress in epochs (a float) and ``stages`` is :meth:`madao_pl.augment.Policy.describe`'s
``"stages"``. A policy holds its values until the next hyper step, so they are drawn as steps; the warm-up
epochs (no augmentation, no hyper step) are shaded. Stages are numbered from 0, as in the CSV and on the
loggers. They write a PNG and return nothing; matplotlib runs on its non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from madao_pl.augment import IDENTITY, StageDescription, get_operation  # noqa: E402
from madao_pl.augment.ops import BLEND_MAX, POSTERIZE_MAX_BITS, SOLARIZE_MAX  # noqa: E402

__all__ = ["effective_use", "plot_policy_classes", "plot_policy_evolution", "plot_policy_parameters"]

Points = list[tuple[float, list[StageDescription]]]


def _scaled(unit: str) -> Callable[[str, float], str]:
    return lambda name, mu: f"{mu * get_operation(name).max_value:.3g} {unit}"


UNITS: dict[str, Callable[[str, float], str]] = {
    "ShearX": _scaled("shear"),
    "ShearY": _scaled("shear"),
    "TranslateX": _scaled("x size"),
    "TranslateY": _scaled("x size"),
    "Rotate": _scaled("deg"),
    "Solarize": lambda name, mu: f"8-bit threshold {SOLARIZE_MAX * (1 - mu):.0f}",
    "Posterize": lambda name, mu: f"{8 - round(POSTERIZE_MAX_BITS * mu)} bits kept",
    **{
        name: lambda name, mu: f"factor {1 - BLEND_MAX * mu:.2f} or {1 + BLEND_MAX * mu:.2f}"
        for name in ("Color", "Contrast", "Brightness", "Sharpness")
    },
}
"""Magnitude ``mu`` in each op's own terms (see :mod:`madao_pl.augment.ops`), for the legend: Rotate
0.57 = 17.1 deg, Solarize 0.5 = 8-bit threshold 128, Posterize 0.5 = 6 bits kept, Contrast 0.3 = factor 0.70
or 1.30 (the sign is drawn per image)."""


def _label(name: str, key: str, value: float) -> str:
    """Legend entry; a magnitude also in the op's own terms (:data:`UNITS`) at its last value."""
    if key != "magnitude" or name not in UNITS:
        return f"{name} {key}"
    return f"{name} {key} (end {value:.2f} = {UNITS[name](name, value)})"


def _axes(num_stages: int) -> tuple[plt.Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(1, num_stages, figsize=(6 * num_stages, 4), squeeze=False)
    return fig, list(axes[0])


def _frame(ax: plt.Axes, xs: list[float], warmup_epochs: float) -> None:
    """x range, label and the shaded, labelled warm-up."""
    right = max(xs) if max(xs) > min(xs) else min(xs) + 1
    ax.set_xlim(min(xs), right)
    ax.set_xlabel("epoch")
    shown = min(warmup_epochs, right)  # a plot drawn during the warm-up shows only its part
    if shown > 0:
        ax.axvspan(0, shown, color="0.9", zorder=0)
        ax.axvline(shown, color="0.2", linestyle=":", zorder=3)  # visible over the stacked areas too
        ax.text(shown / 2, 0.98, "warm-up", transform=ax.get_xaxis_transform(), ha="center", va="top")


def plot_policy_evolution(points: Points, path: Path, warmup_epochs: float = 0.0) -> None:
    """Per stage, the 14 (15 with Identity) selection probabilities stacked against training progress
    (Figures 2 and 4).

    Args:
        points: ``(epochs, stages)`` in order, at least one.
        path: the PNG to write (one panel per stage).
        warmup_epochs: shaded at the left.
    """
    xs = [x for x, _ in points]
    colors = plt.get_cmap("tab20").colors
    fig, axes = _axes(len(points[0][1]))
    for k, ax in enumerate(axes):
        lower = [0.0] * len(points)
        for j, name in enumerate(points[-1][1][k]):
            upper = [
                low + stages[k][name]["selection"] for low, (_, stages) in zip(lower, points, strict=True)
            ]
            ax.fill_between(xs, lower, upper, step="post", color=colors[j], label=name, linewidth=0)
            lower = upper
        ax.set_title(f"stage {k}: selection probability")
        ax.set_ylim(0, 1)
        _frame(ax, xs, warmup_epochs)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_policy_parameters(points: Points, path: Path, top_k: int = 3, warmup_epochs: float = 0.0) -> None:
    """Apply probability (solid) and magnitude (dashed) of the ops with the highest selection probability at
    the last point, per stage (Figure 5); the y-axis spans the values drawn; geometric magnitudes are also
    given in their unit in the legend (Rotate 0.57 = 17.1 deg).

    Args:
        points: ``(epochs, stages)`` in order, at least one.
        path: the PNG to write (one panel per stage).
        top_k: per stage, how many ops to show: the most selected at the last point.
        warmup_epochs: shaded at the left.
    """
    xs, final = [x for x, _ in points], points[-1][1]
    fig, axes = _axes(len(final))
    for k, ax in enumerate(axes):
        ops = [name for name in final[k] if name != IDENTITY]  # Identity has no apply or magnitude
        ranked = sorted(ops, key=lambda name: final[k][name]["selection"], reverse=True)[:top_k]
        drawn: list[float] = []
        for j, name in enumerate(ranked):
            color = plt.get_cmap("tab10")(j)
            for key, style in (("apply", "-"), ("magnitude", "--")):
                if final[k][name][key] is None:
                    continue
                values = [stages[k][name][key] for _, stages in points]
                label = _label(name, key, values[-1])
                ax.step(xs, values, where="post", color=color, linestyle=style, label=label)
                drawn += values
        low, high = min(drawn), max(drawn)
        margin = max(0.02, 0.1 * (high - low))
        ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
        ax.set_title(f"stage {k}: top {top_k} by final selection probability")
        _frame(ax, xs, warmup_epochs)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def effective_use(stage: StageDescription) -> dict[str, float]:
    """Per operation, selection x apply probability: the chance that this stage applies it to an image
    (Identity, which never changes one, left out)."""
    return {name: v["selection"] * v["apply"] for name, v in stage.items() if name != IDENTITY}


def plot_policy_classes(classes: dict[str, list[StageDescription]], path: Path) -> None:
    """Per stage, a class x operation heat map of effective use (:func:`effective_use`) for a
    class-conditional policy (rows: classes in order; one colour scale for all stages).

    Args:
        classes: class name -> its stages (``describe_classes()`` of a class-conditional MADAO policy).
        path: the PNG to write.
    """
    names = list(classes)
    num_stages = len(classes[names[0]])
    ops = list(effective_use(classes[names[0]][0]))
    grids = [[[effective_use(classes[c][k])[op] for op in ops] for c in names] for k in range(num_stages)]
    high = max(max(max(row) for row in grid) for grid in grids) or 1.0
    height = min(2 + 0.25 * len(names), 40)
    fig, axes = plt.subplots(1, num_stages, figsize=(6 * num_stages, height), squeeze=False)
    for k, ax in enumerate(axes[0]):
        image = ax.imshow(
            grids[k], aspect="auto", cmap="viridis", vmin=0.0, vmax=high, interpolation="nearest"
        )
        ax.set_xticks(range(len(ops)), ops, rotation=90, fontsize=8)
        if len(names) <= 50:  # beyond that the rows are too thin to label
            ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("class")
        ax.set_title(f"stage {k}: effective use (selection x apply)")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
