"""Test error on digits: Hydra multiruns of the shipped entry point, summarised by experiments/summarize.py.

Each sweep of :data:`SWEEPS` is a ``conf/experiment/bench_*.yaml`` run as ``python -m madao_pl.run -m
experiment=<name> hydra/launcher=local_parallel paths.bench_dir=<runs dir>`` (two jobs at a time, one
torch thread each) into ``<runs dir>/<sweep>``, emptied first (``runs_by`` names the invocation that ran
each sweep); ``replay`` reads the ``methods`` sweep's policies, ``levers`` sweeps ``conf/lever``.
``--out`` gets summarize's tables, the runs' numbers, the settings read from the MADAO runs' configs, how
far each policy moved and what the class-conditional one learned; beside it go the sweep and policy plots.

Run: ``python -m benchmarks.bench_accuracy [--out ...] [--runs-dir outputs/bench/accuracy] [--sweeps ...]
[--no-run] [-- OVERRIDE ...]`` (about two hours on 2 CPU cores); overrides after ``--`` go to every sweep,
``--no-run`` only summarises the sweep directories.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from experiments.summarize import (
    Cell,
    Run,
    collect,
    flatten,
    markdown_table,
    plot_table,
    render_markdown,
    summarize,
)
from omegaconf import OmegaConf

from benchmarks.common import RESULTS, ROOT, cli, compose, split_overrides, stamp, write_json

SWEEPS = {
    "methods": "bench_accuracy",
    "replay": "bench_replay",
    "inner_steps": "bench_inner_steps",
    "warmup_epochs": "bench_warmup",
    "levers": "bench_levers",
    "classes": "bench_classes",
    "ssl": "bench_ssl",
}
"""Sweep -> its experiment config, in this order (``replay`` retrains with each ``methods`` MADAO run's
final policy, same data set and seed); the ``replay`` and ``classes`` (``augment=madao_class``) rows join the
methods table."""
PLOTS = {"inner_steps": "sweep_inner_steps.png", "warmup_epochs": "sweep_warmup.png"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
SETTINGS = {"inner_steps": "inner_steps", "warmup_epochs": "warmup_epochs", "epochs": "dataset.epochs"}
SETTINGS |= {"batch_size": "dataset.datamodule.batch_size", "temperature": "augment.temperature"}
SETTINGS |= {k: f"augment.hyper.{k}" for k in ("neumann_steps", "neumann_alpha", "neumann_tol")}
"""accuracy.json's settings per data set -> the key of a MADAO run's settings they are read from."""
RECORDED = ("augment", "seed", "inner_steps", "warmup_epochs")
"""What accuracy.json's ``runs`` keep of each run besides its path and metrics."""


def run_sweep(name: str, runs_dir: Path, overrides: list[str]) -> int:
    """Empty ``runs_dir/name`` and run the sweep's experiment as one multirun into it (its experiment puts
    it in ``paths.bench_dir/name``); the exit status."""
    shutil.rmtree(runs_dir / name, ignore_errors=True)
    command = [sys.executable, "-m", "madao_pl.run", "-m", f"experiment={SWEEPS[name]}"]
    command += ["hydra/launcher=local_parallel", f"paths.bench_dir={runs_dir}", *overrides]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ONE_THREAD}).returncode


def lever_settings() -> dict[str, list[str]]:
    """Lever -> the settings (``key=value``) it changes in ``experiment=bench_levers``, in sweep order."""
    sweep = OmegaConf.load(ROOT / "src/madao_pl/conf/experiment/bench_levers.yaml").hydra.sweeper.params
    default = flatten(OmegaConf.to_container(compose(["experiment=bench_levers"])))
    out = {}
    for lever in sweep.lever.split(","):
        changed = flatten(OmegaConf.to_container(compose(["experiment=bench_levers", f"lever={lever}"])))
        out[lever] = [
            f"{key}={json.dumps(v) if isinstance(v, bool) else v}"
            for key, v in changed.items()
            if default.get(key) != v
        ]
    return out


def policy_movement(run_dir: Path) -> dict[str, float] | None:
    """How far a run's policy moved: mean ``|last - first|`` per group (selection, apply, magnitude) over its
    ``policy_history.csv``, and the effective use (sum of selection x apply) per stage, first and last."""
    path = run_dir / "policy_history.csv"
    if not path.is_file():
        return None
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    steps = sorted({int(r["hyper_step"]) for r in rows})
    first, last = ([r for r in rows if int(r["hyper_step"]) == step] for step in (steps[0], steps[-1]))
    out: dict[str, float] = {"hyper_steps": float(steps[-1])}
    for group in ("selection", "apply", "magnitude"):
        pairs = [(float(a[group]), float(b[group])) for a, b in zip(first, last, strict=True) if a[group]]
        out[f"{group}_mean_abs_change"] = statistics.fmean(abs(b - a) for a, b in pairs)
    for name, rows_of in (("first", first), ("last", last)):
        for stage in sorted({r["stage"] for r in rows_of}):
            use = sum(float(r["selection"]) * float(r["apply"]) for r in rows_of if r["stage"] == stage)
            out[f"use_stage{stage}_{name}"] = use
    return out


def lever_of(run: Run, levers_dir: Path) -> str:
    """The lever a run of the levers sweep belongs to: its directory under ``levers_dir``."""
    return run.path.parent.relative_to(levers_dir).parts[0]


def lever_table(methods: list[Run], levers: list[Run], levers_dir: Path) -> str:
    """Test and validation error (%) per lever and data set, mean ± sample std (runs), next to no
    augmentation and MADAO's defaults from the methods sweep: one row per lever (``conf/lever``)."""
    groups: dict[str, list[Run]] = {
        "no augmentation": [r for r in methods if r.augment == "baseline"],
        "MADAO defaults": [r for r in methods if r.augment == "madao"],
    }
    for run in levers:
        groups.setdefault(f"`{lever_of(run, levers_dir)}`", []).append(run)
    datasets = sorted({r.dataset for r in levers}, key=lambda d: (d != "digits", d))

    def cell(runs: list[Run], metric: str) -> str:
        values = [100 * r.metrics[metric] for r in runs if r.metrics.get(metric) is not None]
        return Cell(values, runs).text() if values else "—"

    columns = [(d, m) for d in datasets for m in ("test", "val")]
    header = ["lever", *(f"{d} {m}" for d, m in columns)]
    rows = [
        [name, *(cell([r for r in runs if r.dataset == d], f"{m}_error") for d, m in columns)]
        for name, runs in groups.items()
    ]
    return "Error (%), mean ± sample std (runs):\n\n" + markdown_table(header, rows) + "\n"


def class_policy(run_dir: Path, top: int = 2) -> dict[str, Any] | None:
    """What a class-conditional run learned, from its ``policy.json``: per class, the ops whose effective use
    (selection x apply, summed over stages) it lowered and raised most against the shared part's, and by how
    much; ``None`` without the file."""
    path = run_dir / "policy.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())

    def use(stages: list[dict[str, Any]]) -> dict[str, float]:
        ops = [op for op in stages[0] if op != "Identity"]
        return {op: sum(s[op]["selection"] * s[op]["apply"] for s in stages) for op in ops}

    shared = use(data["describe"]["stages"])
    per_class = {}
    for name, stages in data["classes"].items():
        change = sorted(((u - shared[op], op) for op, u in use(stages).items()))
        per_class[name] = {
            "lowered": [[op, d] for d, op in change[:top]],
            "raised": [[op, d] for d, op in change[-top:][::-1]],
        }
    return {"run": str(run_dir), "shared_use": shared, "classes": per_class}


def build_report(runs_dir: Path, out: Path, statuses: dict[str, int], argv: list[str]) -> dict[str, Any]:
    """accuracy.json's content from the sweep directories; the plots beside ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    found, tables, problems, movement, records = {}, {}, [], [], {}
    joined = [runs_dir / d for d in ("replay", "classes") if (runs_dir / d).is_dir()]  # the methods table's
    for name in (n for n in SWEEPS if n != "replay"):  # replay: in the methods table
        runs, more = collect([runs_dir / name, *(joined if name == "methods" else [])])
        if runs:
            table, duplicates = summarize(runs, by=name if name in PLOTS else None)
            more += duplicates
            tables[name] = render_markdown(table, more)
            if name == "levers":
                tables[name] = lever_table(found["methods"], runs, runs_dir / name)
            if name in PLOTS:
                title = f"{runs[0].dataset}, {runs[0].model}, seeds {sorted({r.seed for r in runs}, key=str)}"
                plot_table(table, out.parent / PLOTS[name], title)
        found[name], problems = runs, problems + more
        learned = [r for r in runs if name in ("methods", "levers", "ssl") and r.augment.startswith("madao")]
        for run in learned:
            group = lever_of(run, runs_dir / name) if name == "levers" else run.augment
            if moved := policy_movement(run.path.parent):
                movement.append(
                    {"sweep": name, "group": group, "dataset": run.dataset, "seed": run.seed, **moved}
                )
        records[name] = [
            {
                "path": str(r.path),
                **{k: r.settings.get(k, getattr(r, k, None)) for k in RECORDED},
                **r.metrics,
            }
            for r in runs
        ]
    madao = sorted(
        (r for r in found["methods"] if r.augment == "madao"), key=lambda r: (r.dataset, str(r.seed))
    )
    classes = sorted((r for r in found["classes"] if r.dataset == "digits"), key=lambda r: str(r.seed))
    plots = [(r, n) for r in madao[:1] for n in ("policy_evolution.png", "policy_parameters.png")]
    for run, name in [*plots, *((r, "policy_classes.png") for r in classes[:1])]:
        if (run.path.parent / name).is_file():
            shutil.copyfile(run.path.parent / name, out.parent / f"{run.augment}_{name}")
    per_dataset = {r.dataset: {"dataset": r.dataset, "model": r.model} for r in madao}
    for run in reversed(madao):  # the first seed's
        per_dataset[run.dataset] |= {k: run.settings.get(v) for k, v in SETTINGS.items()}
    seeds = sorted({r.seed for r in found["methods"]}, key=str)
    return {
        "benchmark": "test error on digits: methods x seeds, MADAO inner-step and warm-up sweeps",
        **stamp("benchmarks.bench_accuracy", argv, torch_threads=1),
        "runs_dir": str(runs_dir),
        "sweep_exit_status": statuses,
        "settings": {"datasets": dict(sorted(per_dataset.items())), "seeds": seeds},
        "tables": tables,
        "runs": records,
        "movement": movement,
        "class_policy": class_policy(classes[0].path.parent) if classes else None,
        "levers": lever_settings(),
        "problems": problems,
        "complete": not problems and all(status == 0 for status in statuses.values()),
    }


def main(argv: list[str] | None = None) -> int:
    argv, own, overrides = split_overrides(argv)
    flags = {
        "--runs-dir": {"type": Path, "default": ROOT / "outputs" / "bench" / "accuracy"},
        "--sweeps": {"nargs": "+", "choices": SWEEPS, "default": list(SWEEPS), "help": "run only these"},
        "--no-run": {"action": "store_true", "help": "only summarise the existing sweep directories"},
    }
    args = cli(__doc__, own, RESULTS / "accuracy.json", flags)
    runs_dir = args.runs_dir.resolve()
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    ran = [] if args.no_run else args.sweeps
    statuses = dict(previous.get("sweep_exit_status", {}))
    for name in ran:
        statuses[name] = run_sweep(name, runs_dir, overrides)
    report = build_report(runs_dir, args.out, statuses, argv)
    ran_by = {"command": report["command"], "date": report["date"]}
    report["runs_by"] = {**previous.get("runs_by", {}), **dict.fromkeys(ran, ran_by)}
    write_json(args.out, report)
    print("\n".join(report["tables"].values()))
    print(f"wrote {args.out} and its plots; runs in {runs_dir}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
