"""Test error on digits: Hydra multiruns of the shipped entry point, summarised by experiments/summarize.py.

The sweeps of :data:`SWEEPS`, in this order: each but ``replay`` (:func:`run_replays`) a
``conf/experiment/bench_*.yaml`` launched as ``python -m madao_pl.run -m experiment=<name>
hydra/launcher=local_parallel hydra.sweep.dir=<runs-dir>/<sweep>`` (two jobs at a time, one torch thread
each): ``methods`` (every method on digits and low-data digits x seeds 0, 1, 2), ``replay``, ``inner_steps``
(MADAO, s = 5 ... 100, Figure 3), ``warmup_epochs`` (w = 0 ... 30, Figure 6), ``levers`` (MADAO x seeds 0, 1,
2 once per entry of :data:`LEVERS`, each into ``levers/<lever>``). Each sweep directory is emptied first, so
its numbers come from the invocation that ran it (``--sweeps`` runs some; ``runs_by`` names the invocation
of each). ``--out`` gets summarize's tables (methods and replays in one), the runs' numbers, the settings
read from the MADAO runs' configs and each MADAO-like run's :func:`policy_movement`; beside it go the sweep
plots and the MADAO seed-0 run's policy plots.

Run: ``python -m benchmarks.bench_accuracy [--out ...] [--runs-dir outputs/bench/accuracy] [--sweeps ...]
[--no-run] [-- OVERRIDE ...]`` (about 90 minutes on 2 CPU cores, the levers half of it); overrides after
``--`` go to every sweep (smoke tests: ``dataset.epochs=1``), ``--no-run`` only summarises the sweep
directories.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from experiments.summarize import Cell, Run, collect, markdown_table, plot_table, render_markdown, summarize

from benchmarks.common import RESULTS, ROOT, run_at_most, stamp, write_json

SWEEPS = {
    "methods": "bench_accuracy",
    "replay": None,
    "inner_steps": "bench_inner_steps",
    "warmup_epochs": "bench_warmup",
    "levers": "bench_levers",
    "classes": "bench_classes",
}
"""Sweep -> its experiment config; ``replay`` retrains, from scratch, with each ``methods`` MADAO run's final
policy (``augment=replay``, same data set and seed): does the learned policy itself transfer? ``classes``:
class-conditional MADAO (``augment=madao_class``), whose rows join the methods table."""
PLOTS = {"inner_steps": "sweep_inner_steps.png", "warmup_epochs": "sweep_warmup.png"}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
"""What the environment of every run adds."""
CLEAN = [
    "augment.policy.rao_samples=16",
    "augment.policy.centered_selection=true",
    "augment.hyper_train_batches=4",
]
"""The cleanest hypergradient measured within the time budget (bench_hypergrad's estimators)."""
LEVERS = {
    "start_p0.2": ["augment.policy.init_probability=-1.4"],
    "direction_only": ["augment.hyper.direction_only=true"],
    "adam": ["augment.policy_optimizer._target_=torch.optim.Adam"],
    "val_batch_256": ["dataset.datamodule.hyper_batch_size=256"],
    "rao16_centered": ["augment.policy.rao_samples=16", "augment.policy.centered_selection=true"],
    "rao16_centered_k4": CLEAN,
    "clean_lr0.1": [*CLEAN, "augment.policy_optimizer.lr=0.1"],
    "clean_lr0.1_direction_only": [
        *CLEAN,
        "augment.policy_optimizer.lr=0.1",
        "augment.hyper.direction_only=true",
    ],
    "identity": ["augment.policy.identity=true"],
    "identity_clean_lr0.1": ["augment.policy.identity=true", *CLEAN, "augment.policy_optimizer.lr=0.1"],
    "curvature_alpha0.5_J20": [
        "augment.hyper.neumann_alpha_scale=0.5",
        "augment.hyper.neumann_steps=20",
        "augment.hyper.neumann_tol=0",
    ],
    "damped_cg10": ["augment.hyper.method=cg", "augment.hyper.cg_iterations=10", "augment.hyper.damping=1.0"],
    "s5_w10": ["augment.inner_steps=5", "augment.warmup_epochs=10"],
}
"""Issue #12's levers, each a change to the defaults (the methods sweep holds the defaults and the paper's
start): lever -> overrides. ``clean_lr0.1*``: the clean hypergradient with 10x the policy's learning rate, so
that the few hyper steps of a digits run can move the policy and show where the hypergradient points, also
normalised (``direction_only``). ``identity*``: the 15th, "do nothing" choice. ``curvature_alpha0.5_J20``:
``alpha = 0.5 / |lambda_max(H)|`` (power iteration) with 20 terms; ``damped_cg10``: 10 CG iterations on
``H + I`` (``lambda_max`` is about 50 on digits after the warm-up); ``s5_w10``: 5x the hyper steps."""


def run_sweep(experiment: str, sweep_dir: Path, overrides: list[str]) -> int:
    """Empty ``sweep_dir`` and run the experiment's multirun into it; the exit status."""
    shutil.rmtree(sweep_dir, ignore_errors=True)
    command = [sys.executable, "-m", "madao_pl.run", "-m", f"experiment={experiment}"]
    command += ["hydra/launcher=local_parallel", f"hydra.sweep.dir={sweep_dir}", *overrides]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **ONE_THREAD}).returncode


def run_replays(methods_dir: Path, replay_dir: Path, overrides: list[str]) -> int:
    """Empty ``replay_dir``; one ``augment=replay`` run per MADAO run of ``methods_dir`` (two at a time,
    each into ``replay_dir/<dataset>_<seed>``); the worst exit status."""
    shutil.rmtree(replay_dir, ignore_errors=True)
    runs = [r for r in collect([methods_dir])[0] if r.augment == "madao"]
    commands = [
        [sys.executable, "-m", "madao_pl.run", f"dataset={run.dataset}", f"seed={run.seed}", "augment=replay",
         f"augment.path={run.path.parent / 'policy.json'}", "trainer.enable_progress_bar=false",
         f"hydra.run.dir={replay_dir / f'{run.dataset}_{run.seed}'}", *overrides]
        for run in sorted(runs, key=lambda r: (r.dataset, str(r.seed)))
    ]  # fmt: skip
    print("\n".join("$ " + " ".join(command) for command in commands), flush=True)
    return max(run_at_most(commands, 2, {**os.environ, **ONE_THREAD}), default=0)


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
    augmentation and MADAO's defaults from the methods sweep: one row per lever, named as in LEVERS."""
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


def settings_of(run: Run) -> dict[str, Any]:
    """The shared settings, read from a MADAO run's config (not assumed)."""
    s = run.settings
    keys = {
        "epochs": "dataset.epochs",
        "batch_size": "dataset.datamodule.batch_size",
        "temperature": "augment.temperature",
        "neumann_steps": "augment.hyper.neumann_steps",
        "neumann_alpha": "augment.hyper.neumann_alpha",
        "neumann_tol": "augment.hyper.neumann_tol",
    }
    return {
        "dataset": run.dataset,
        "model": run.model,
        "inner_steps": s.get("inner_steps"),
        "warmup_epochs": s.get("warmup_epochs"),
        **{name: s.get(key) for name, key in keys.items()},
    }


def build_report(runs_dir: Path, out: Path, statuses: dict[str, int], argv: list[str]) -> dict[str, Any]:
    """accuracy.json's content from the sweep directories; the plots beside ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tables, all_problems, records, found = {}, [], {}, {}
    movement = []
    for name in (n for n in SWEEPS if n != "replay"):
        runs, problems = collect(
            [runs_dir / name, *(d for d in (runs_dir / "replay", runs_dir / "classes") if d.is_dir())]
            if name == "methods"
            else [runs_dir / name]
        )
        found[name] = runs
        if runs:
            table, more = summarize(runs, by=name if name in PLOTS else None)
            problems += more
            tables[name] = render_markdown(table, problems)
            if name == "levers":
                tables[name] = lever_table(found["methods"], runs, runs_dir / name)
            if name in PLOTS:
                title = f"{runs[0].dataset}, {runs[0].model}, seeds {sorted({r.seed for r in runs}, key=str)}"
                plot_table(table, out.parent / PLOTS[name], title)
        all_problems += problems
        for r in (
            r for r in runs if r.augment.startswith("madao") and name in ("methods", "levers", "classes")
        ):
            group = lever_of(r, runs_dir / name) if name == "levers" else r.augment
            moved = policy_movement(r.path.parent)
            if moved:
                movement.append(
                    {"sweep": name, "group": group, "dataset": r.dataset, "seed": r.seed, **moved}
                )
        fields = ("augment", "seed", "inner_steps", "warmup_epochs")
        records[name] = [
            {"path": str(r.path), **{k: r.settings.get(k, getattr(r, k, None)) for k in fields}, **r.metrics}
            for r in runs
        ]
    madao = sorted(
        (r for r in found["methods"] if r.augment == "madao"), key=lambda r: (r.dataset, str(r.seed))
    )
    classes = sorted(
        (r for r in found.get("classes", []) if r.dataset == "digits"), key=lambda r: str(r.seed)
    )
    for run, name in [*((r, n) for r in madao[:1] for n in ("policy_evolution.png", "policy_parameters.png")),
                      *((r, "policy_classes.png") for r in classes[:1])]:  # fmt: skip
        if (run.path.parent / name).is_file():
            shutil.copyfile(run.path.parent / name, out.parent / f"{run.augment}_{name}")
    seeds = sorted({r["seed"] for r in records["methods"]}, key=str)
    per_dataset = {run.dataset: settings_of(run) for run in reversed(madao)}
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
        "levers": LEVERS,
        "problems": all_problems,
        "complete": not all_problems and all(status == 0 for status in statuses.values()),
    }


def sweeps_run_by(previous: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Which invocation ran each sweep of a previous accuracy.json: sweep -> {command, date} (its own
    ``runs_by``, or, from an older layout, one invocation for every sweep it lists)."""
    runs_by = previous.get("runs_by") or {}
    if "command" in runs_by or (
        not runs_by and "command" in previous and "--no-run" not in previous["command"]
    ):
        one = {k: (runs_by or previous)[k] for k in ("command", "date")}
        return {name: one for name in previous.get("sweep_exit_status", {})}
    return dict(runs_by)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "outputs" / "bench" / "accuracy")
    parser.add_argument(
        "--sweeps", nargs="+", choices=list(SWEEPS), default=list(SWEEPS), help="run only these"
    )
    parser.add_argument("--no-run", action="store_true", help="only summarise the existing sweep directories")
    args = parser.parse_args(own)
    runs_dir = args.runs_dir.resolve()
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    ran = [] if args.no_run else args.sweeps
    statuses = dict(previous.get("sweep_exit_status", {}))
    for name in ran:
        if name == "replay":
            statuses[name] = run_replays(runs_dir / "methods", runs_dir / "replay", overrides)
        elif name == "levers":
            shutil.rmtree(runs_dir / name, ignore_errors=True)
            codes = [
                run_sweep(SWEEPS[name], runs_dir / name / k, [*v, *overrides]) for k, v in LEVERS.items()
            ]
            statuses[name] = max(codes, default=0)
        else:
            statuses[name] = run_sweep(SWEEPS[name], runs_dir / name, overrides)
    report = build_report(runs_dir, args.out, statuses, argv)
    runs_by = sweeps_run_by(previous)
    runs_by.update({name: {"command": report["command"], "date": report["date"]} for name in ran})
    report["runs_by"] = runs_by
    write_json(args.out, report)
    print("\n".join(report["tables"].values()))
    print(f"wrote {args.out} and its plots; runs in {runs_dir}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
