"""Summarise a Hydra multirun (or any tree of run directories) as the paper's tables.

Walks the given directories for ``results.json`` files (written by ``madao_pl.run``), groups the runs by
(dataset, model, augment) and prints test error (%) as "mean ± std (n)" over the seeds (sample
standard deviation, n - 1):

- default layout (paper Tables 2-4): one row per dataset / model, one column per augmentation method
  in the paper's order (baseline, autoaugment, randaugment, trivialaugment, madao, then any other);
- ``--by KEY`` (paper Figures 3 and 6: ``--by inner_steps``, ``--by warmup_epochs``): one row per
  dataset / model / method, one column per value of KEY (a results.json key or a dotted config key
  such as ``augment.inner_steps``; a unique suffix such as ``magnitude`` also works); ``--plot PNG``
  also draws it (mean against the value, the std as error bars).

Runs are averaged only when their configs agree on everything but the seed and paths: any other
config key that differs inside a (dataset, model, augment) group splits it, and the differing
values are shown in the column (or row) label, e.g. ``madao [inner_steps=5]``. Nothing is dropped
silently: an unreadable or incomplete ``results.json``, a run without a test error, a Hydra job
directory without ``results.json`` (failed or still running) and a seed that appears twice in one
cell are all listed under "Problems" (and on stderr); ``--strict`` then exits with status 1.

Run: ``python experiments/summarize.py multirun/2024-01-01_00-00-00 [--by inner_steps] [--out table.md]
[--plot figure.png]``
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

METHOD_ORDER = ("baseline", "autoaugment", "randaugment", "trivialaugment", "madao")
METHOD_ORDER += ("madao_class", "madao_paper", "madao_initial", "replay")
METHOD_LABELS = {
    "baseline": "Baseline",
    "autoaugment": "AutoAugment",
    "randaugment": "RandAugment",
    "trivialaugment": "TrivialAugment",
    "madao": "MADAO",
    "madao_class": "MADAO, class-conditional",
    "madao_paper": "MADAO (paper settings)",
    "madao_initial": "MADAO's initial policy, frozen",
    "replay": "MADAO's learned policy, replayed",
}
DATASET_ORDER = (
    "cifar10",
    "cifar100",
    "svhn",
    "imagenet",
    "flowers",
    "pets",
    "aircraft",
    "cars",
    "digits",
    "digits_low",
)
MODEL_ORDER = ("wrn28_2", "wrn40_2", "wrn28_10", "resnet18", "resnet50", "cnn")
# Config keys that may differ between replicas of one setting (seeds, where files go, logging).
IGNORED_KEYS = (
    "seed",
    "*.seed",
    # a replay's policy file comes from the MADAO run of its own seed: it differs between replicas
    "augment.path",
    "augment.policy.path",
    "ckpt_path",
    "paths.*",
    "*.root",
    "*.dirpath",
    "*.output_dir",
    "*.save_dir",
    "*.default_root_dir",
    "*.download",
    "*.num_workers",
    "logger.*",
    "hydra.*",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
)
# results.json's own copies of the sweep keys (also present, nested, in its config).
TOP_LEVEL_KEYS = ("inner_steps", "warmup_epochs")
REQUIRED = ("dataset", "model", "augment")
# results.json's numbers kept with each run (the first two are the error rates a table can show).
METRICS = ("test_error", "val_error", "fit_seconds", "hyper_steps")


@dataclass(frozen=True)
class Run:
    """One finished run: where it is, its identity, its metrics, and its flattened settings."""

    path: Path
    dataset: str
    model: str
    augment: str
    seed: Any
    metrics: dict[str, float | None]
    settings: dict[str, Any]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table (benchmarks/report.py renders its tables with it too)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


@dataclass
class Cell:
    """The runs of one table cell and their statistics (in %)."""

    values: list[float] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    @property
    def paths(self) -> list[Path]:
        return [run.path for run in self.runs]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single run."""
        return statistics.stdev(self.values) if self.n > 1 else None

    def text(self) -> str:
        """'mean ± std (n)' with two decimals; 'mean (1)' for one run."""
        std = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.mean:.2f}{std} ({self.n})"


@dataclass
class Table:
    """Rows x columns of cells, in display order, plus what the layout is."""

    row_header: list[str]
    rows: list[tuple[str, ...]]
    columns: list[str]
    cells: dict[tuple[tuple[str, ...], str], Cell]
    metric: str
    by: str | None = None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; lists are leaves (made hashable as tuples)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list):
        return {prefix.rstrip("."): json.dumps(data, sort_keys=True)}
    return {prefix.rstrip("."): data}


def _ignored(key: str) -> bool:
    return any(fnmatch(key, pattern) for pattern in IGNORED_KEYS)


def _valid_error(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )


def read_run(path: Path, metric: str) -> tuple[Run | None, str | None]:
    """Parse one ``results.json``; (run, None) or (None, what is wrong with it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"unreadable ({type(error).__name__}: {error})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    missing = [key for key in REQUIRED if not isinstance(data.get(key), str)]
    if missing:
        return None, f"no {', '.join(missing)} (not a madao_pl results.json?)"
    value = data.get(metric)
    if value is None:
        return None, f"no {metric} (run with test=false, or it did not finish)"
    if not _valid_error(value):
        return None, f"{metric}={value!r} is not an error rate in [0, 1]"
    config = data.get("config")
    settings = flatten(config if isinstance(config, dict) else {})
    settings.update({key: data[key] for key in TOP_LEVEL_KEYS if key in data})
    settings = {key: value for key, value in settings.items() if not _ignored(key)}
    metrics = {key: data.get(key) for key in METRICS}
    run = Run(path, data["dataset"], data["model"], data["augment"], data.get("seed"), metrics, settings)
    return run, None


def collect(roots: list[Path], metric: str = "test_error") -> tuple[list[Run], list[str]]:
    """Every run under ``roots`` and every problem found (one line each, naming the path).

    A problem is a ``results.json`` that cannot be used, or a Hydra job directory (one holding
    ``.hydra/``) with no ``results.json``. Hidden directories (``.submitit``, ``.hydra``) are not searched.
    """
    runs: list[Run] = []
    problems: list[str] = []
    for root in roots:
        if not root.is_dir():
            problems.append(f"{root}: not a directory")
            continue
        for directory in sorted([root, *(p for p in root.rglob("*") if p.is_dir())]):
            if any(part.startswith(".") for part in directory.relative_to(root).parts):
                continue
            results = directory / "results.json"
            if results.is_file():
                run, problem = read_run(results, metric)
                if run is not None:
                    runs.append(run)
                else:
                    problems.append(f"{results}: {problem}")
            elif (directory / ".hydra").is_dir():
                problems.append(f"{directory}: Hydra job without results.json (failed, or still running)")
    if not runs and not problems:
        problems.append(f"no results.json under {', '.join(map(str, roots))}")
    return runs, problems


def resolve_key(runs: list[Run], key: str) -> str:
    """The settings key ``key`` names: itself, or the shortest key ending in ``.key``."""
    keys = {k for run in runs for k in run.settings}
    if key in keys:
        return key
    matches = sorted((k for k in keys if k.endswith("." + key)), key=lambda k: (k.count("."), k))
    if not matches:
        raise KeyError(f"--by {key}: no run has a setting named {key} or ending in .{key}")
    return matches[0]


def varying_keys(runs: list[Run], exclude: str | None = None) -> list[str]:
    """Settings keys whose values differ among ``runs``, one per distinct pattern of values.

    Keys that vary exactly alike (``augment.inner_steps`` and ``module.inner_steps``) are reported
    once, as the shortest name. Keys varying exactly like ``exclude`` are left out.
    """
    keys = sorted({k for run in runs for k in run.settings}, key=lambda k: (k.count("."), k))
    seen: set[tuple] = set()
    if exclude is not None:
        seen.add(tuple(run.settings.get(exclude) for run in runs))
    out = []
    for key in keys:
        pattern = tuple(run.settings.get(key) for run in runs)
        if len(set(pattern)) > 1 and pattern not in seen:
            seen.add(pattern)
            out.append(key)
    return out


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("augment.") else key


def _order(value: str, order: tuple[str, ...]) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def _value_order(value: Any) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then anything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def summarize(runs: list[Run], by: str | None = None, metric: str = "test_error") -> tuple[Table, list[str]]:
    """Group ``runs`` into the table layout; also return problems found (duplicate seeds in a cell)."""
    by_key = resolve_key(runs, by) if by else None
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.dataset, run.model, run.augment)].append(run)
    cells: dict[tuple[tuple[str, ...], str], Cell] = defaultdict(Cell)
    column_sort: dict[str, tuple] = {}
    row_sort: dict[tuple[str, ...], tuple] = {}
    for (dataset, model, augment), members in groups.items():
        keys = varying_keys(members, exclude=by_key)
        for run in members:
            values = [run.settings.get(k) for k in keys]
            variant = ", ".join(f"{_short(k)}={v}" for k, v in zip(keys, values, strict=True))
            label = METHOD_LABELS.get(augment, augment) + (f" [{variant}]" if variant else "")
            method_sort = (_order(augment, METHOD_ORDER), tuple(_value_order(v) for v in values))
            if by_key is None:
                row: tuple[str, ...] = (dataset, model)
                column = label
                column_sort[column] = method_sort
            else:
                row = (dataset, model, label)
                value = run.settings.get(by_key)
                column = str(value)
                column_sort[column] = _value_order(value)
            row_sort[row] = (_order(dataset, DATASET_ORDER), _order(model, MODEL_ORDER), method_sort)
            cell = cells[(row, column)]
            cell.values.append(100.0 * run.metrics[metric])
            cell.runs.append(run)
    problems = []
    for (row, column), cell in cells.items():
        for seed in sorted({s for s in cell.seeds if cell.seeds.count(s) > 1}, key=str):
            paths = ", ".join(str(p) for p, s in zip(cell.paths, cell.seeds, strict=True) if s == seed)
            problems.append(f"{' / '.join(row)} / {column}: seed {seed} appears more than once ({paths})")
    rows = sorted(row_sort, key=lambda r: row_sort[r])
    columns = sorted(column_sort, key=lambda c: column_sort[c])
    header = ["dataset", "model"] if by_key is None else ["dataset", "model", "method"]
    return Table(header, rows, columns, dict(cells), metric, _short(by_key) if by_key else None), problems


def render_markdown(table: Table, problems: list[str]) -> str:
    """The table as GitHub markdown, a caption naming the statistic, and the problems (if any)."""
    what = "test error" if table.metric == "test_error" else "validation error"
    layout = f", columns: {table.by}" if table.by else ""
    rows = [
        [*row, *(table.cells[(row, c)].text() if (row, c) in table.cells else "—" for c in table.columns)]
        for row in table.rows
    ]
    body = markdown_table([*table.row_header, *table.columns], rows)
    lines = [f"{what.capitalize()} (%), mean ± sample std (number of runs){layout}:", "", body]
    if problems:
        lines += ["", f"Problems ({len(problems)}):", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def plot_table(table: Table, path: Path, title: str = "") -> None:
    """A ``--by`` table as a figure (paper Figures 3 and 6): mean against the value, one line per row, the
    sample std as error bars; numeric columns only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numeric = [c for c in table.columns if c.lstrip("-").replace(".", "", 1).isdigit()]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for row in table.rows:
        cells = [(float(c), table.cells[(row, c)]) for c in numeric if (row, c) in table.cells]
        xs, means, stds = [x for x, _ in cells], [c.mean for _, c in cells], [c.std or 0.0 for _, c in cells]
        ax.errorbar(xs, means, yerr=stds, fmt="o-", capsize=3, label=" / ".join(row))
    if table.by == "inner_steps":
        ax.set_xscale("log")
    ax.set_xticks([float(c) for c in numeric], numeric)
    ax.minorticks_off()
    ax.set_xlabel(table.by or "")
    ax.set_ylabel(f"{table.metric.replace('_', ' ')} (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+", help="multirun (or output) directories to search")
    parser.add_argument("--by", help="columns: the values of this key (inner_steps, warmup_epochs, ...)")
    parser.add_argument("--augment", nargs="+", help="only these methods (e.g. madao for the sweeps)")
    parser.add_argument("--metric", choices=["test_error", "val_error"], default="test_error")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--plot", type=Path, help="with --by: also draw the table as a PNG here")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if there are problems")
    args = parser.parse_args(argv)

    runs, problems = collect(args.roots, args.metric)
    if args.augment:
        runs = [run for run in runs if run.augment in args.augment]
    if not runs:
        print("\n".join(f"problem: {p}" for p in problems), file=sys.stderr)
        print("error: no usable results.json found", file=sys.stderr)
        return 1
    try:
        table, more = summarize(runs, by=args.by, metric=args.metric)
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    problems += more
    text = render_markdown(table, problems)
    print(text, end="")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.out:
        args.out.write_text(text)
    if args.plot and table.by:
        plot_table(table, args.plot)
    return 1 if args.strict and problems else 0


if __name__ == "__main__":
    sys.exit(main())
