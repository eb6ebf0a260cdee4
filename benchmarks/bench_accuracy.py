"""Test error on digits: five augmentation methods x three seeds, and MADAO's two sweeps.

Every job is the default job (``dataset=digits model=cnn``, the paper's shared MADAO settings
s = 30, w = 20, tau = 0.05: no per-method tuning, same network, same epochs) with one method or one
sweep value changed, trained in this process by ``madao_pl.run.train`` on a composed config:

- ``<method>-seed<k>`` for method in baseline, autoaugment, randaugment, trivialaugment, madao and
  k in ``--seeds`` (default 0 1 2): test error mean +- sample standard deviation (paper Table 2's layout);
- ``madao-inner<s>-seed0`` for s in 5, 10, 30, 50, 100 (paper Figure 3) and ``madao-warmup<w>-seed0``
  for w in 0, 10, 20, 30 (Figure 6). A sweep point whose config equals ``madao-seed0``'s (s = 30,
  w = 20 with the defaults) reuses that run instead of training it again.

Each job writes into ``<runs-dir>/<job>/`` (default ``outputs/bench/accuracy``, git-ignored). A job
whose ``results.json`` exists and was produced by the same config is not run again (``--force``
reruns it), so an interrupted benchmark continues where it stopped; a job directory without
``results.json`` is an interrupted run and starts over. ``--out`` (default
``benchmarks/results/accuracy.json``) is rewritten after every job from all finished runs; next to it
go ``sweep_inner_steps.png``, ``sweep_warmup.png`` and ``madao_policy_evolution.png`` /
``madao_policy_parameters.png`` (copied from the first MADAO seed's run).

Run: ``python -m benchmarks.bench_accuracy`` (30 minutes on 2 CPU cores: by default two jobs train at
once, each in its own process with one thread, ``--workers``). ``--list`` prints the
plan; ``--no-run`` only rewrites the report from finished runs (e.g. after splitting the jobs over two
processes with ``--jobs``); ``--epochs`` and ``--override KEY=VALUE`` shrink the jobs for a smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

METHODS = ("baseline", "autoaugment", "randaugment", "trivialaugment", "madao")
INNER_STEPS = (5, 10, 30, 50, 100)
WARMUP_EPOCHS = (0, 10, 20, 30)
SWEEP_SEED = 0
BASE_OVERRIDES = (
    "dataset=digits",
    "model=cnn",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    # plots at epochs 10, 20, 30 and the end instead of every epoch (1-2 s each; training unchanged)
    "callbacks.policy_history.plot_every_n_epochs=10",
)
DEFAULT_OUT = Path("benchmarks/results/accuracy.json")
DEFAULT_RUNS_DIR = Path("outputs/bench/accuracy")
SWEEP_PLOTS = {"inner_steps": "sweep_inner_steps.png", "warmup_epochs": "sweep_warmup.png"}


@dataclass(frozen=True)
class Job:
    """One training run: its directory name, its Hydra overrides, and what it measures.

    ``sweep``/``value`` name the sweep point it stands for (None for a method x seed job);
    ``reuse`` is the name of an identical job whose run stands in for this one.
    """

    name: str
    method: str
    seed: int
    overrides: tuple[str, ...]
    sweep: str | None = None
    value: int | None = None
    reuse: str | None = None


@dataclass
class Outcome:
    """What happened to the jobs of this invocation, and the results of every finished one."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


def compose_job(overrides: tuple[str, ...] | list[str], output_dir: Path) -> DictConfig:
    """Compose madao_pl's config tree with ``overrides`` and ``paths.output_dir=output_dir``."""
    quoted = str(output_dir) if "'" in str(output_dir) else f"'{output_dir}'"
    overrides = [*overrides, f"paths.output_dir={quoted}"]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        return compose("config", overrides=overrides)


def plain_config(cfg: DictConfig) -> Any:
    """The resolved config as ``results.json`` stores it (JSON types only), for comparisons."""
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True), default=str))


def make_plan(
    seeds: list[int],
    extra: list[str],
    inner_steps: tuple[int, ...] = INNER_STEPS,
    warmup_epochs: tuple[int, ...] = WARMUP_EPOCHS,
    sweep_seed: int = SWEEP_SEED,
) -> list[Job]:
    """All jobs: methods x seeds, then the two MADAO sweeps on ``sweep_seed``.

    ``extra`` overrides come after the base ones and before each job's own, so a sweep's value
    always wins. A sweep point reuses ``madao-seed<sweep_seed>`` when their composed configs are equal.
    """
    base = (*BASE_OVERRIDES, *extra)
    jobs = [
        Job(f"{method}-seed{seed}", method, seed, (*base, f"augment={method}", f"seed={seed}"))
        for method in METHODS
        for seed in seeds
    ]
    reference = next((job for job in jobs if job.method == "madao" and job.seed == sweep_seed), None)
    placeholder = Path("/placeholder")
    reference_cfg = plain_config(compose_job(reference.overrides, placeholder)) if reference else None
    for key, values, tag in (
        ("inner_steps", inner_steps, "inner"),
        ("warmup_epochs", warmup_epochs, "warmup"),
    ):
        for value in values:
            overrides = (*base, "augment=madao", f"seed={sweep_seed}", f"augment.{key}={value}")
            same = (
                reference_cfg is not None
                and plain_config(compose_job(overrides, placeholder)) == reference_cfg
            )
            jobs.append(
                Job(
                    f"madao-{tag}{value}-seed{sweep_seed}",
                    "madao",
                    sweep_seed,
                    overrides,
                    sweep=key,
                    value=value,
                    reuse=reference.name if same else None,
                )
            )
    return jobs


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs (for 'why is this rerun')."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [d for k in keys for d in config_diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def load_finished(job: Job, runs_dir: Path, verbose: bool = False) -> dict[str, Any] | None:
    """The job's ``results.json`` if it exists and was produced by this job's exact config.

    With ``verbose``, say why an existing ``results.json`` is not used.
    """
    path = runs_dir / job.name / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        if verbose:
            print(f"{path} is not valid JSON ({error}): running {job.name} again", flush=True)
        return None
    expected = plain_config(compose_job(job.overrides, runs_dir / job.name))
    if results.get("config") != expected:
        if verbose:
            keys = ", ".join(config_diff(results.get("config"), expected)[:8])
            print(f"{path} was made with another config (differs in: {keys}): running again", flush=True)
        return None
    return results


RUN_CONDITIONS = "bench_conditions.json"


def run_job(job: Job, runs_dir: Path) -> dict[str, Any]:
    """Train the job from scratch in ``runs_dir/job.name`` (an older partial run there is removed).

    Beside ``results.json`` goes ``bench_conditions.json``: torch threads and load averages, which
    the report needs when it is written later by another process.
    """
    from madao_pl.run import train

    out = runs_dir / job.name
    if out.exists():
        shutil.rmtree(out)
    load_before = os.getloadavg()
    results = train(compose_job(job.overrides, out))
    conditions = {
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_before": list(load_before),
        "load_average_1_5_15_after": list(os.getloadavg()),
    }
    (out / RUN_CONDITIONS).write_text(json.dumps(conditions, indent=2) + "\n")
    return results


def run_conditions(jobs: list[Job], outcome: Outcome, runs_dir: Path) -> dict[str, Any]:
    """Torch threads used by the finished runs and their mean 1-minute load average (None: not recorded)."""
    threads, loads = set(), []
    for job in jobs:
        path = runs_dir / job.name / RUN_CONDITIONS
        if job.name not in outcome.results:
            continue
        if not path.is_file():
            threads.add(None)
            continue
        recorded = json.loads(path.read_text())
        threads.add(recorded.get("torch_threads"))
        loads += [recorded["load_average_1_5_15_before"][0], recorded["load_average_1_5_15_after"][0]]
    return {
        "torch_threads": sorted(threads, key=lambda t: (t is None, t or 0)),
        "mean_load_average_1min": statistics.fmean(loads) if loads else None,
    }


def run_plan(jobs: list[Job], runs_dir: Path, selected: set[str], force: bool, on_progress: Any) -> Outcome:
    """Run the selected jobs (skipping finished ones unless ``force``); gather every finished result.

    A failing job is recorded with its error and the others still run. ``on_progress(outcome)``
    is called after each job so that partial results are written as they come.
    """
    outcome = Outcome()
    for job in jobs:
        if job.reuse is None and job.name not in selected:
            finished = load_finished(job, runs_dir)
            if finished is not None:
                outcome.results[job.name] = finished
    todo = [job for job in jobs if job.reuse is None and job.name in selected]
    for index, job in enumerate(todo, 1):
        finished = None if force else load_finished(job, runs_dir, verbose=True)
        if finished is not None:
            print(f"[{index}/{len(todo)}] {job.name}: finished earlier, not run again", flush=True)
            outcome.results[job.name] = finished
            outcome.cached.append(job.name)
            continue
        print(f"[{index}/{len(todo)}] {job.name}: {' '.join(job.overrides)}", flush=True)
        start = time.perf_counter()
        try:
            results = run_job(job, runs_dir)
        except Exception as error:  # noqa: BLE001 - one failing job must not lose the others
            traceback.print_exc()
            outcome.failures[job.name] = f"{type(error).__name__}: {error}"
            print(f"[{index}/{len(todo)}] {job.name}: FAILED ({outcome.failures[job.name]})", flush=True)
        else:
            outcome.results[job.name] = results
            outcome.ran.append(job.name)
            error = results.get("test_error")
            shown = f"{100 * error:.2f}%" if error is not None else "none"
            print(
                f"[{index}/{len(todo)}] {job.name}: test error {shown}, {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        on_progress(outcome)
    return outcome


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None below two values) of ``values``."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(jobs: list[Job], outcome: Outcome) -> dict[str, Any]:
    """Per method: per-seed test errors (%), mean, std, fit seconds; per sweep: one point per value."""
    methods: dict[str, Any] = {}
    for method in METHODS:
        rows = [job for job in jobs if job.method == method and job.sweep is None]
        done = [(job, outcome.results[job.name]) for job in rows if job.name in outcome.results]
        errors = [_pct(r["test_error"]) for _, r in done if r.get("test_error") is not None]
        mean, std = mean_std(errors)
        methods[method] = {
            "seeds": [job.seed for job, r in done if r.get("test_error") is not None],
            "test_error_pct": errors,
            "mean_pct": mean,
            "std_pct": std,
            "n": len(errors),
            "fit_seconds": [r.get("fit_seconds") for _, r in done],
            "hyper_steps": [r.get("hyper_steps") for _, r in done],
            "val_error_pct": [_pct(r.get("val_error")) for _, r in done],
            "jobs": [job.name for job, _ in done],
            "missing": [job.name for job in rows if job.name not in outcome.results],
        }
    sweeps: dict[str, Any] = {}
    for key in SWEEP_PLOTS:
        points, missing = [], []
        for job in (job for job in jobs if job.sweep == key):
            source = job.reuse or job.name
            results = outcome.results.get(source)
            if results is None or results.get(key) != job.value:
                missing.append(job.name)
                continue
            points.append(
                {
                    "value": job.value,
                    "test_error_pct": _pct(results.get("test_error")),
                    "val_error_pct": _pct(results.get("val_error")),
                    "fit_seconds": results.get("fit_seconds"),
                    "hyper_steps": results.get("hyper_steps"),
                    "hvps": results.get("hvps"),
                    "job": source,
                }
            )
        seeds = sorted({job.seed for job in jobs if job.sweep == key})
        sweeps[key] = {"seeds": seeds, "points": points, "missing": missing}
    return {"methods": methods, "sweeps": sweeps}


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured."""
    import pytorch_lightning

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def settings_of(jobs: list[Job], runs_dir: Path, seeds: list[int], extra: list[str]) -> dict[str, Any]:
    """The shared settings, read from the composed config of the first MADAO job (not assumed)."""
    job = next(job for job in jobs if job.method == "madao")
    cfg = compose_job(job.overrides, runs_dir / job.name)
    aug = cfg.augment
    return {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "epochs": cfg.dataset.epochs,
        "batch_size": cfg.dataset.datamodule.batch_size,
        "inner_steps": aug.inner_steps,
        "warmup_epochs": aug.warmup_epochs,
        "temperature": aug.temperature,
        "neumann_steps": aug.hyper.neumann_steps,
        "neumann_alpha": aug.hyper.neumann_alpha,
        "seeds": seeds,
        "sweep_seed": SWEEP_SEED,
        "extra_overrides": extra,
        "runs_dir": str(runs_dir),
        "std": "sample standard deviation (n - 1) over seeds",
    }


def plot_sweep(
    sweep: dict[str, Any], key: str, reference: dict[str, Any], settings: dict[str, Any], path: Path
) -> None:
    """Test error (%) against the swept value; the baseline's and MADAO's seed means as dashed lines."""
    default = f" (s={settings['inner_steps']}, w={settings['warmup_epochs']})"
    title = f"{settings['dataset']}, {settings['model']}, {settings['epochs']} epochs"
    points = sorted((p for p in sweep["points"] if p["test_error_pct"] is not None), key=lambda p: p["value"])
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    if points:
        xs, ys = [p["value"] for p in points], [p["test_error_pct"] for p in points]
        ax.plot(xs, ys, "o-", color="tab:blue", label=f"MADAO, seed {', '.join(map(str, sweep['seeds']))}")
        ax.set_xticks(xs)
    for method, color in (("baseline", "tab:gray"), ("madao", "tab:orange")):
        mean = reference.get(method, {}).get("mean_pct")
        if mean is not None:
            n = reference[method]["n"]
            label = f"{method}{default if method == 'madao' else ''}, mean of {n} seed{'s' * (n > 1)}"
            ax.axhline(mean, ls="--", lw=1, color=color, label=label)
    if key == "inner_steps":
        ax.set_xscale("log")
        ax.set_xticks([p["value"] for p in points])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()
    ax.set_xlabel({"inner_steps": "inner steps s", "warmup_epochs": "warm-up epochs w"}[key])
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    out: Path,
    jobs: list[Job],
    outcome: Outcome,
    runs_dir: Path,
    seeds: list[int],
    extra: list[str],
    started: float,
    plots: bool,
) -> dict[str, Any]:
    """Write ``out`` (atomically) from every finished run; with ``plots`` also the PNGs beside it.

    Runs finished meanwhile by another process on the same ``runs_dir`` (e.g. the seeds split over
    two processes with ``--jobs``) are read from disk first, so each write covers all of them.
    """
    for job in jobs:
        if job.reuse is None and job.name not in outcome.results and job.name not in outcome.failures:
            finished = load_finished(job, runs_dir)
            if finished is not None:
                outcome.results[job.name] = finished
    summary = aggregate(jobs, outcome)
    settings = settings_of(jobs, runs_dir, seeds, extra)
    expected = {job.name for job in jobs if job.reuse is None}
    report = {
        "benchmark": "test error on digits: methods x seeds, MADAO inner-step and warm-up sweeps",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.bench_accuracy " + shlex.join(sys.argv[1:]),
        "machine": machine_info(),
        "runs": run_conditions(jobs, outcome, runs_dir),
        "device": sorted({r.get("device", "?") for r in outcome.results.values()}),
        "settings": settings,
        **summary,
        "complete": expected <= set(outcome.results),
        "failures": outcome.failures,
        "fit_seconds_all_runs": sum(r.get("fit_seconds") or 0.0 for r in outcome.results.values()),
        "ran_this_time": outcome.ran,
        "wall_seconds_this_time": time.perf_counter() - started,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # one per process: concurrent writers never clash
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    if plots:
        for key, name in SWEEP_PLOTS.items():
            plot_sweep(summary["sweeps"][key], key, summary["methods"], settings, out.parent / name)
        madao = [
            job for job in jobs if job.method == "madao" and job.sweep is None and job.name in outcome.results
        ]
        for job in madao[:1]:
            for name in ("policy_evolution.png", "policy_parameters.png"):
                if (runs_dir / job.name / name).is_file():
                    shutil.copyfile(runs_dir / job.name / name, out.parent / f"madao_{name}")
    return report


def print_summary(report: dict[str, Any]) -> None:
    """The Table-2-style numbers and the sweeps, on stdout."""
    print(f"\n{report['settings']['dataset']} / {report['settings']['model']}: test error (%)")
    for method, row in report["methods"].items():
        errors = ", ".join(f"{e:.2f}" for e in row["test_error_pct"])
        std = f" +- {row['std_pct']:.2f}" if row["std_pct"] is not None else ""
        mean = f"{row['mean_pct']:.2f}{std}" if row["mean_pct"] is not None else "not run"
        print(f"  {method:<15} {mean:<16} seeds [{errors}]")
    for key, sweep in report["sweeps"].items():
        shown = ", ".join(
            f"{p['value']}: {p['test_error_pct']:.2f}"
            for p in sweep["points"]
            if p["test_error_pct"] is not None
        )
        print(f"  {key} sweep: {shown or 'not run'}")


def split_jobs(jobs: list[Job], workers: int) -> list[list[Job]]:
    """Share ``jobs`` out over ``workers`` lists of about equal cost (a MADAO job counts double:
    its hyper steps and policy plots make it the slowest), longest first."""
    lanes: list[list[Job]] = [[] for _ in range(workers)]
    load = [0] * workers
    for job in sorted(jobs, key=lambda j: j.method != "madao"):
        lane = load.index(min(load))
        lanes[lane].append(job)
        load[lane] += 2 if job.method == "madao" else 1
    return [lane for lane in lanes if lane]


def argv_passthrough(args: argparse.Namespace) -> list[str]:
    """The options a worker process inherits (everything that changes what a job is or where it goes)."""
    out = ["--runs-dir", str(args.runs_dir.resolve()), "--seeds", *map(str, args.seeds)]
    if args.epochs:
        out += ["--epochs", str(args.epochs)]
    for override in args.override:
        out += ["--override", override]
    if args.force:
        out.append("--force")
    return out


def run_workers(args: argparse.Namespace, pending: list[Job], runs_dir: Path, passthrough: list[str]) -> int:
    """Train ``pending`` in ``args.workers`` child processes at once (``--workers 1`` each, threads split
    evenly over the cores); each writes its runs into ``runs_dir`` and a partial report under it.
    Returns how many workers exited non-zero (their failed jobs have no results.json)."""
    lanes = split_jobs(pending, args.workers)
    threads = args.threads or max(1, (os.cpu_count() or 1) // len(lanes))
    processes = []
    for index, lane in enumerate(lanes):
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_accuracy",
            *passthrough,
            "--workers",
            "1",
            "--threads",
            str(threads),
            "--out",
            str(runs_dir / f"worker{index}.json"),
            "--jobs",
            *(job.name for job in lane),
        ]
        print(f"worker {index}: {len(lane)} jobs ({', '.join(job.name for job in lane)})", flush=True)
        processes.append(subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1]))
    return sum(process.wait() != 0 for process in processes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON report (PNGs go beside it)")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="one directory per job")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", nargs="+", default=["*"], help="run only the jobs matching these patterns")
    parser.add_argument("--epochs", type=int, help="override dataset.epochs (smoke tests only)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override (smoke tests)",
    )
    parser.add_argument("--force", action="store_true", help="rerun jobs that already have results.json")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="train this many jobs at once, each in its own process with cores/workers threads "
        "(default: 2 on 2+ cores; 1 = in this process)",
    )
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="train nothing: write the report from the runs already finished (say why others are not used)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import pytorch_lightning  # noqa: F401 - configures its loggers on import; quieten them after

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = ([f"dataset.epochs={args.epochs}"] if args.epochs else []) + list(args.override)
    runs_dir = args.runs_dir.resolve()
    jobs = make_plan(args.seeds, extra)
    runnable = [job for job in jobs if job.reuse is None]
    selected = {job.name for job in runnable if any(fnmatch.fnmatch(job.name, p) for p in args.jobs)}
    if not selected:
        print(f"error: --jobs {' '.join(args.jobs)} matches none of: {', '.join(j.name for j in runnable)}")
        return 2
    if args.list:
        for job in jobs:
            state = f"reuses {job.reuse}" if job.reuse else ("run" if job.name in selected else "skip")
            done = " (finished)" if job.reuse is None and load_finished(job, runs_dir) else ""
            print(f"{job.name:<24} {state}{done}: {' '.join(job.overrides)}")
        return 0

    started = time.perf_counter()
    worker_failures, ran_by_workers = 0, []
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}")
        return 2
    if args.workers > 1 and not args.no_run:
        pending = [
            job
            for job in runnable
            if job.name in selected and (args.force or load_finished(job, runs_dir) is None)
        ]
        if len(pending) > 1:
            worker_failures = run_workers(args, pending, runs_dir, argv_passthrough(args))
            ran_by_workers = [job.name for job in pending if load_finished(job, runs_dir) is not None]
            args.no_run = True
            if worker_failures:
                print(f"{worker_failures} worker(s) reported failed jobs; see their output above")
    if args.no_run:
        for job in runnable:
            if load_finished(job, runs_dir, verbose=True) is None:
                if not (runs_dir / job.name).exists():
                    print(f"{job.name}: not run yet", flush=True)
                elif not (runs_dir / job.name / "results.json").exists():
                    print(f"{job.name}: no results.json yet (running, or interrupted)", flush=True)
        selected = set()

    def progress(outcome: Outcome) -> None:
        write_report(args.out, jobs, outcome, runs_dir, args.seeds, extra, started, plots=False)

    outcome = run_plan(jobs, runs_dir, selected, args.force, progress)
    outcome.ran.extend(ran_by_workers)
    report = write_report(args.out, jobs, outcome, runs_dir, args.seeds, extra, started, plots=True)
    print_summary(report)
    print(f"wrote {args.out} and its plots; runs in {runs_dir}")
    if outcome.failures:
        print(
            f"{len(outcome.failures)} job(s) failed: "
            + "; ".join(f"{k}: {v}" for k, v in outcome.failures.items())
        )
    return 1 if outcome.failures or worker_failures else 0


if __name__ == "__main__":
    sys.exit(main())
