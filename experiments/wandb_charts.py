"""Draw the policy charts an offline W&B run holds, as one PNG: what its dashboard shows.

A run with ``logger=wandb`` logs, per stage, line-series charts of every op's selection probability, apply
probability and magnitude against the hyper step (``policy/charts/stage<k>_<value>``). Offline
(``WANDB_MODE=offline``) their data sits in the run's ``files/media/table/policy/charts/*.table.json``; this
reads the last table of each chart and draws them on a grid (stages x values).

Run: ``python experiments/wandb_charts.py outputs/.../wandb/offline-run-<id> [--out charts.png]``
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from madao_pl.augment import OP_NAMES  # noqa: E402

VALUES = ("selection", "apply", "magnitude")
TABLE = re.compile(r"stage(\d+)_(selection|apply|magnitude)_table_(\d+)_[0-9a-f]+\.table\.json")


def last_tables(run_dir: Path) -> dict[tuple[int, str], dict]:
    """(stage, value) -> the chart's table logged last (highest W&B step in the file name)."""
    found: dict[tuple[int, str], tuple[int, Path]] = {}
    for path in (run_dir / "files" / "media" / "table" / "policy" / "charts").glob("*.table.json"):
        match = TABLE.fullmatch(path.name)
        if match:
            key, step = (int(match[1]), match[2]), int(match[3])
            if key not in found or step > found[key][0]:
                found[key] = (step, path)
    return {key: json.loads(path.read_text()) for key, (_, path) in found.items()}


def draw(tables: dict[tuple[int, str], dict], out: Path) -> None:
    """One panel per stage and value: a line per op against the hyper step (one colour per op throughout)."""
    stages = sorted({stage for stage, _ in tables})
    fig, axes = plt.subplots(len(stages), len(VALUES), figsize=(15, 3.6 * len(stages)), squeeze=False)
    for (stage, value), table in tables.items():
        ax, column = axes[stages.index(stage), VALUES.index(value)], table["columns"]
        series: dict[str, list[tuple[float, float]]] = {}
        for row in table["data"]:
            item = dict(zip(column, row, strict=True))
            if item["lineVal"] is not None:
                series.setdefault(item["lineKey"], []).append((item["step"], item["lineVal"]))
        for op, points in series.items():
            color = plt.get_cmap("tab20")(OP_NAMES.index(op)) if op in OP_NAMES else None
            ax.plot(*zip(*points, strict=True), label=op, linewidth=1, color=color)
        ax.set_title(f"policy/charts/stage{stage}_{value}")
        ax.set_xlabel("hyper_step")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an offline run: .../wandb/offline-run-<date>-<id>")
    parser.add_argument("--out", type=Path, default=Path("wandb_policy_charts.png"))
    args = parser.parse_args(argv)
    tables = last_tables(args.run_dir)
    if not tables:
        parser.error(f"no policy chart tables under {args.run_dir}/files/media/table/policy/charts")
    draw(tables, args.out)
    print(f"wrote {args.out} ({len(tables)} charts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
