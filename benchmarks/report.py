"""Regenerate ``benchmarks/README.md`` from the JSON files in ``benchmarks/results/``.

Reads ``policy.json`` (bench_policy.py), ``cost.json`` (bench_cost.py) and ``accuracy.json``
(bench_accuracy.py), whichever exist; a missing one is listed as "not run yet". Every section names
the machine, the date and the command that produced its numbers. Nothing here measures anything:
all numbers come from the JSON files.

It also rewrites the results summary of the top-level ``README.md``: the text between the lines
``<!-- results:begin -->`` and ``<!-- results:end -->`` (the accuracy table and MADAO's cost at s = 30, plain
beside fast), so the README quotes exactly what the last benchmark measured. A README without the two
markers is left alone.

Run: ``python -m benchmarks.report [--results benchmarks/results] [--out benchmarks/README.md]
[--top-readme README.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
TOP_README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
COMMANDS = {
    "policy": "python benchmarks/bench_policy.py --out benchmarks/results/policy.json",
    "cost": "python -m benchmarks.bench_cost --out benchmarks/results/cost.json",
    "accuracy": "python -m benchmarks.bench_accuracy --out benchmarks/results/accuracy.json",
}
PAPER_SHARED = (30, 20, 0.05)
METHOD_LABELS = {
    "baseline": "Baseline (no policy)",
    "autoaugment": "AutoAugment",
    "randaugment": "RandAugment",
    "trivialaugment": "TrivialAugment",
    "madao": "MADAO",
}


def load(results_dir: Path, name: str) -> dict[str, Any] | None:
    """``<results_dir>/<name>.json`` as a dict, or None when it does not exist."""
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; '—' for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 10**-digits:
            return f"{value:.2e}"  # a small relative difference must not print as 0.0000
        return f"{value:.{digits}f}"
    return str(value)


def mean_std_cell(mean: float | None, std: float | None) -> str:
    """'mean ± std' (2 decimals), 'mean' alone without a std, '—' without a mean."""
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(report: dict[str, Any], name: str) -> str:
    """One paragraph: when, on what, by which command the numbers were produced."""
    machine = report.get("machine", {})
    parts = []
    if machine.get("cpu_count") is not None:
        cpu = machine.get("processor") or machine.get("cpu", "?")
        parts.append(f"{machine['cpu_count']} CPU cores ({cpu})")
    if machine.get("cuda"):
        parts.append(f"GPU {machine['cuda']}")
    if machine.get("platform"):
        parts.append(machine["platform"])
    versions = [
        f"{lib} {machine[lib]}" for lib in ("python", "torch", "torchvision", "kornia") if machine.get(lib)
    ]
    if versions:
        parts.append(", ".join(versions))
    command = report.get("command", COMMANDS[name])
    machine_text = "; ".join(parts) or "an unrecorded machine"
    return f"Measured {report.get('date', 'at an unrecorded date')} on {machine_text}, by `{command}`."


def flat_scalars(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every number, string or bool in nested dicts (lists of scalars joined)."""
    if isinstance(data, dict):
        return [item for key, value in data.items() for item in flat_scalars(value, f"{prefix}{key}.")]
    if isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data):
            return [(prefix.rstrip("."), ", ".join(fmt(v, 3) for v in data))]
        return [item for i, value in enumerate(data) for item in flat_scalars(value, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), data)]


# --- policy.json ---------------------------------------------------------------------------------


def policy_section(report: dict[str, Any] | None) -> str:
    """Per torch thread count: median / min / max ms per case, and the MADAO / kornia ratio."""
    out = ["## Policy speed: one augmentation batch on CPU (`results/policy.json`)", ""]
    if report is None:
        return "\n".join([*out, f"Not run yet: `{COMMANDS['policy']}`.", ""])
    shape = "x".join(map(str, report.get("batch_shape", [])))
    settings = report.get("settings", {})
    out += [
        provenance(report, "policy"),
        f"Batch {shape}, {settings.get('timed_rounds', '?')} timed rounds after "
        f"{settings.get('warmup_rounds', '?')} warm-up rounds, cases interleaved. Milliseconds per batch.",
        "",
    ]
    for run_name, run in report.get("runs", {}).items():
        rows = [
            [f"`{case}`", fmt(r["median_ms"]), fmt(r["min_ms"]), fmt(r["max_ms"])]
            for case, r in run.get("results", {}).items()
        ]
        load = run.get("load_average_1_5_15_before", [None])[0]
        out += [f"### {run_name} (1-minute load average before: {fmt(load, 1)})", ""]
        out += [table(["case", "median ms", "min ms", "max ms"], rows), ""]
        ratio = run.get("ratio_madao_no_grad_over_kornia_randaugment")
        if ratio is not None:
            verdict = "within" if run.get("ratio_within_target") else "above"
            minima = fmt(run.get("ratio_madao_no_grad_over_kornia_randaugment_min"))
            backward = fmt(run.get("ratio_madao_forward_backward_over_no_grad"))
            out += [
                f"MADAO (no grad) / kornia RandAugment, medians: **{ratio:.2f}** ({verdict} the target "
                f"{fmt(run.get('ratio_target'))}); minima: {minima}. "
                f"MADAO forward+backward / no grad: {backward}.",
                "",
            ]
    return "\n".join(out)


# --- cost.json -----------------------------------------------------------------------------------


def _median(values: Any) -> float | None:
    """Median of a list of numbers (None for an empty or missing list)."""
    values = sorted(v for v in (values or []) if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _spread_cell(row: dict[str, Any], prefix: str) -> str:
    """'median [min, max]' of ``<prefix>_{median,min,max}`` in ``row``."""
    median = row.get(f"{prefix}_median")
    if median is None:
        return "—"
    low, high = row.get(f"{prefix}_min"), row.get(f"{prefix}_max")
    return (
        f"{median:.2f} [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else f"{median:.2f}"
    )


def cost_section(report: dict[str, Any] | None) -> str:
    """MADAO's time and memory against RandAugment and no augmentation (bench_cost.py's layout).

    An unknown layout is shown as a flat key/value table rather than dropped.
    """
    out = ["## Cost of MADAO: time and memory (`results/cost.json`)", ""]
    if report is None:
        return "\n".join([*out, f"Not run yet: `{COMMANDS['cost']}` (or `make bench-quick`).", ""])
    machine = report.get("machine", {})
    stamp = {
        "date": report.get("date", machine.get("date")),
        "command": report.get("command", machine.get("command")),
    }
    device = machine.get("device_name") or machine.get("device") or "?"
    load = machine.get("load_average_1_5_15_before", [None])[0]
    out += [
        provenance({**report, **{k: v for k, v in stamp.items() if v}}, "cost")
        + f" Device: {device}; torch threads: {fmt(machine.get('torch_threads'))}; 1-minute load average "
        f"before: {fmt(load, 1)}.",
        "",
    ]
    if "time_s" not in report:
        rest = {k: v for k, v in report.items() if k not in ("machine", "date", "command")}
        rows = [[f"`{k}`", fmt(v, 4)] for k, v in flat_scalars(rest)]
        return "\n".join([*out, "Recorded values:", "", table(["key", "value"], rows), ""])
    settings = report.get("settings", {})
    variants = settings.get("variants", {})
    quick = " (quick mode)" if settings.get("quick") else ""
    title = str(report.get("benchmark", "cost of MADAO"))
    out += [
        f"{title[:1].upper() + title[1:]}. {settings.get('rounds', '?')} timed rounds of "
        f"{settings.get('inner_steps_per_round', '?')} inner steps per case, "
        f"{settings.get('memory_reps', '?')} memory repetition(s){quick}; J = "
        f"{settings.get('neumann_steps', '?')}, alpha = {settings.get('neumann_alpha', '?')}. Hyper-step "
        "variants: "
        + ", ".join(
            f"`{n}` (neumann_tol {v['neumann_tol']}, hyper_chunks {v['hyper_chunks']}"
            + (f", hyper_recompute {str(v['hyper_recompute']).lower()})" if "hyper_recompute" in v else ")")
            for n, v in variants.items()
        )
        + ". MADAO's step time is amortised over a cycle of s steps: ((s - 1) inner + 1 hyper) / s.",
        "",
        "Seconds per step (hyper cases: per hyper step, optimiser steps included):",
        "",
        table(
            ["case", "median s", "min s", "max s"],
            [
                [f"`{c}`", fmt(r.get("s_median"), 3), fmt(r.get("s_min"), 3), fmt(r.get("s_max"), 3)]
                for c, r in report["time_s"].items()
            ],
        ),
        "",
    ]
    rows = []
    for s in settings.get("s_values", [10, 30, 50]):
        block = report.get(f"s{s}", {})
        for name in variants:
            row = block.get(name)
            if row is None:
                continue
            memory = _spread_cell(row, "total_peak_memory_ratio")
            live = _spread_cell(row, "total_peak_memory_ratio_live")
            cuda = _spread_cell(row, "cuda_peak_memory_ratio")
            rows.append(
                [
                    str(s),
                    f"`{name}`",
                    _spread_cell(row, "time_ratio"),
                    _spread_cell(row, "time_ratio_vs_baseline"),
                    fmt(row.get("amortised_step_s_median"), 3),
                    memory,
                    _spread_cell(row, "above_setup_peak_memory_ratio"),
                    live,
                    cuda,
                ]
            )
    header = ["s", "variant", "time / RandAugment", "time / baseline", "MADAO s/step", "peak RSS / RA",
              "peak above setup / RA", "live peak RSS / RA", "CUDA peak / RA"]  # fmt: skip
    out += [
        "MADAO over RandAugment (and over no augmentation), median [min, max] over rounds or repetitions:",
        "",
        table(header, rows),
        "",
    ]
    ra = report.get("s30", {}).get("randaugment_over_baseline_time_ratio_median")
    if ra is not None:
        out += [f"RandAugment / baseline step time (median): {ra:.2f}.", ""]

    breakdown = report.get("hyper_step_breakdown_s", {})
    if breakdown:
        names = list(breakdown)
        sections = list(dict.fromkeys(k for b in breakdown.values() for k in b))
        rows = [[f"`{sec}`", *(fmt(breakdown[n].get(sec), 3) for n in names)] for sec in sections]
        hvps = report.get("hvps_per_hyper_step", {})
        rows.append(["HVPs per hyper step (median)", *(fmt(_median(hvps.get(n)), 1) for n in names)])
        out += ["Hyper-step breakdown, median seconds per section:", "", table(["section", *names], rows), ""]
    comparisons = report.get("hypergrad_vs_plain", {})
    if comparisons:
        rows = [
            [
                f"`{n}`",
                fmt(c.get("rel_diff_max"), 6),
                fmt(c.get("cosine_min"), 6),
                fmt(c.get("network_grad_rel_diff_max"), 6),
            ]
            for n, c in comparisons.items()
        ]
        out += [
            "Hypergradient of each variant against the plain one (same state, same draws):",
            "",
            table(
                ["variant", "max relative difference", "min cosine", "network gradient max rel. diff."], rows
            ),
            "",
        ]
    targets = report.get("targets", {})
    if targets:
        rows = []
        for name, t in targets.items():
            if "measured" not in t:
                rows.append([f"`{name}`", ", ".join(f"{k} {fmt(v)}" for k, v in t.items()), "", ""])
                continue
            bound = t.get("target_at_most", t.get("target_below"))
            relation = "<=" if "target_at_most" in t else "<"
            rows.append(
                [f"`{name}`", fmt(t["measured"], 4), f"{relation} {fmt(bound, 4)}", fmt(t.get("met"))]
            )
        out += ["Targets:", "", table(["target", "measured", "goal", "met"], rows), ""]
    return "\n".join(out)


# --- accuracy.json -------------------------------------------------------------------------------


def accuracy_table(report: dict[str, Any]) -> str:
    """Table-2-style markdown: method | test error % (mean ± std over seeds) | seeds | per seed | fit time."""
    rows = []
    for method, row in report.get("methods", {}).items():
        per_seed = ", ".join(f"{e:.2f}" for e in row.get("test_error_pct", []))
        seconds = [s for s in row.get("fit_seconds", []) if s is not None]
        rows.append(
            [
                METHOD_LABELS.get(method, method),
                mean_std_cell(row.get("mean_pct"), row.get("std_pct")),
                str(row.get("n", len(row.get("test_error_pct", [])))),
                per_seed or "not run",
                f"{sum(seconds) / len(seconds):.0f}" if seconds else "—",
            ]
        )
    return table(["method", "test error % (mean ± std)", "seeds", "per seed", "fit s (mean)"], rows)


def sweep_table(sweep: dict[str, Any], key: str) -> str:
    """One row per swept value: test error, validation error, hyper steps, fit time."""
    rows = [
        [
            str(p["value"]),
            fmt(p.get("test_error_pct")),
            fmt(p.get("val_error_pct")),
            fmt(p.get("hyper_steps")),
            fmt(p.get("fit_seconds"), 0),
        ]
        for p in sorted(sweep.get("points", []), key=lambda p: p["value"])
    ]
    return table([key, "test error %", "val error %", "hyper steps", "fit s"], rows)


def accuracy_markdown(results_dir: Path = RESULTS) -> str:
    """The accuracy table of ``<results_dir>/accuracy.json`` with a one-line caption (for the top README)."""
    report = load(results_dir, "accuracy")
    if report is None:
        return f"No accuracy results yet: run `{COMMANDS['accuracy']}`."
    s = report["settings"]
    caption = (
        f"Test error (%) on {s['dataset']} ({s['model']}, {s['epochs']} epochs, MADAO s = "
        f"{s['inner_steps']}, w = {s['warmup_epochs']}, tau = {s['temperature']}), mean ± sample std over "
        f"seeds {s['seeds']}:"
    )
    return f"{caption}\n\n{accuracy_table(report)}"


def accuracy_section(report: dict[str, Any] | None, results_dir: Path, readme_dir: Path | None = None) -> str:
    """The accuracy table, both sweeps with their plots, and the learned policy's plots.

    Images are linked relative to ``readme_dir`` (default: the parent of ``results_dir``).
    """

    def link(image: str) -> str:
        return Path(os.path.relpath(results_dir / image, readme_dir or results_dir.parent)).as_posix()

    out = ["## Test error on digits (`results/accuracy.json`)", ""]
    if report is None:
        return "\n".join([*out, f"Not run yet: `{COMMANDS['accuracy']}` (30 minutes on 2 CPU cores).", ""])
    s = report["settings"]
    shared = (s["inner_steps"], s["warmup_epochs"], s["temperature"]) == PAPER_SHARED
    paper = " (the paper's shared settings, Table 6)" if shared else " (not the paper's s = 30, w = 20)"
    devices = ", ".join(report.get("device", [])) or "?"
    runs = report.get("runs", {})
    threads = ", ".join("not recorded" if t is None else str(t) for t in runs.get("torch_threads", [])) or "?"
    load = runs.get("mean_load_average_1min")
    out += [
        provenance(report, "accuracy")
        + f" Device: {devices}; torch threads per run: {threads}; mean 1-minute load average around the "
        f"runs: {fmt(load, 1)}.",
        "",
        f"Every run: {s['dataset']}, model `{s['model']}`, {s['epochs']} epochs, batch {s['batch_size']}, "
        "the data set's standard crop; MADAO with s = "
        f"{s['inner_steps']}, w = {s['warmup_epochs']}, tau = {s['temperature']}, J = {s['neumann_steps']}, "
        f"alpha = {s['neumann_alpha']}{paper}, no per-method tuning. All methods run through the same ops "
        "and training module. "
        f"Extra overrides: {', '.join(f'`{o}`' for o in s.get('extra_overrides', [])) or 'none'}.",
        "",
    ]
    if not report.get("complete", False):
        out += [
            "**Incomplete**: some jobs have no results yet (rerun the command: finished jobs are kept).",
            "",
        ]
    if report.get("failures"):
        failed = "; ".join(f"`{k}`: {v}" for k, v in report["failures"].items())
        out += [f"**Failed jobs**: {failed}", ""]
    out += [accuracy_text(report), ""]
    figures = {"inner_steps": ("Inner steps s (paper Figure 3)", "sweep_inner_steps.png"),
               "warmup_epochs": ("Warm-up epochs w (paper Figure 6)", "sweep_warmup.png")}  # fmt: skip
    for key, (title, image) in figures.items():
        sweep = report.get("sweeps", {}).get(key)
        if sweep is None:
            continue
        seeds = ", ".join(map(str, sweep.get("seeds", [])))
        out += [f"### {title}, MADAO, seed {seeds}", "", sweep_table(sweep, key), ""]
        if (results_dir / image).is_file():
            out += [f"![{title}]({link(image)})", ""]
    for image, title in (
        ("madao_policy_evolution.png", "Selection probabilities over epochs (paper Figures 2 and 4)"),
        (
            "madao_policy_parameters.png",
            "Apply probability and magnitude of the most selected ops (Figure 5)",
        ),
    ):
        if (results_dir / image).is_file():
            out += [f"### {title}", "", f"![{title}]({link(image)})", ""]
    return "\n".join(out)


def accuracy_text(report: dict[str, Any]) -> str:
    """The methods table under a caption naming the statistic."""
    seeds = report["settings"].get("seeds")
    return f"Test error (%), mean ± sample standard deviation over seeds {seeds}:\n\n{accuracy_table(report)}"


# --- README ----------------------------------------------------------------------------------------


def build_readme(results_dir: Path = RESULTS, readme_dir: Path | None = None) -> str:
    """The whole ``benchmarks/README.md`` text (image links relative to ``readme_dir``)."""
    header = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand.",
        "`make bench` runs every benchmark and regenerates this page (`python -m benchmarks.run_all`, "
        "about an hour on 2 CPU cores: 65 minutes on a fresh clone, install included, half of it the "
        "accuracy benchmark and half the cost benchmark); `make bench-quick` runs the cost benchmark alone. "
        "Each section names the command, machine and date of its numbers.",
        "",
        "| file | benchmark | command |",
        "|---|---|---|",
        *(f"| `results/{name}.json` | {name} | `{command}` |" for name, command in COMMANDS.items()),
        "",
    ]
    sections = [
        policy_section(load(results_dir, "policy")),
        cost_section(load(results_dir, "cost")),
        accuracy_section(load(results_dir, "accuracy"), results_dir, readme_dir),
    ]
    return "\n".join(header) + "\n" + "\n".join(sections).rstrip() + "\n"


def cost_summary(report: dict[str, Any] | None, s: int = 30) -> str:
    """MADAO's cost at ``s`` inner steps, one row per hyper-step variant (plain beside fast)."""
    if report is None or f"s{s}" not in report:
        return f"No cost results yet: run `{COMMANDS['cost']}` (or `make bench-quick`)."
    machine = report.get("machine", {})
    settings = report.get("settings", {})
    variants = settings.get("variants", {})
    compare = report.get("hypergrad_vs_plain", {})
    hvps = report.get("hvps_per_hyper_step", {})
    rows = []
    for name, row in report[f"s{s}"].items():
        if not isinstance(row, dict):
            continue
        v = variants.get(name, {})
        rows.append(
            [
                f"`{name}`",
                " ".join(f"{k}={str(val).lower()}" for k, val in v.items()) or "—",
                _spread_cell(row, "time_ratio"),
                _spread_cell(row, "total_peak_memory_ratio"),
                _spread_cell(row, "total_peak_memory_ratio_live"),
                _spread_cell(row, "cuda_peak_memory_ratio"),
                fmt(_median(hvps.get(name)), 0),
                "0 (reference)" if name == "plain" else fmt(compare.get(name, {}).get("rel_diff_max"), 6),
            ]
        )
    header = ["variant", "settings", "time / RandAugment", "peak RSS / RA", "live peak RSS / RA",
              "CUDA peak / RA", "HVPs", "hypergradient rel. diff. to plain"]  # fmt: skip
    device = machine.get("device_name") or machine.get("device", "?")
    size = settings.get("image_size", "?")
    command = machine.get("command", report.get("command", COMMANDS["cost"]))
    caption = (
        f"MADAO's cost at s = {s}, J = {settings.get('neumann_steps', '?')} against RandAugment on the same "
        f"op library ({settings.get('model', '?')}, batch {settings.get('batch', '?')}, synthetic "
        f"{size}x{size}), median [min, max] over {settings.get('rounds', '?')} rounds / "
        f"{settings.get('memory_reps', '?')} memory repetitions, on {device} "
        f"({machine.get('cpu_count', '?')} cores, {machine.get('torch_threads', '?')} torch thread), "
        f"{machine.get('date', report.get('date', '?'))}, `{command}`. Live: glibc's mmap threshold fixed so "
        "the resident set follows the live tensors (what `torch.cuda.max_memory_allocated` measures on a "
        "GPU). The paper (GPU, against no augmentation): time 1.7, memory 1.94."
    )
    return f"{caption}\n\n{table(header, rows)}"


def top_readme_summary(results_dir: Path = RESULTS) -> str:
    """What goes between the markers of the top-level README: accuracy table, then cost at s = 30."""
    return "\n\n".join(
        [
            accuracy_markdown(results_dir),
            cost_summary(load(results_dir, "cost")),
            "Both sweeps, the policy plots, the policy-speed benchmark and the hyper-step breakdown: "
            "[benchmarks/README.md](benchmarks/README.md).",
        ]
    )


def update_top_readme(path: Path, summary: str) -> bool:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``path`` by ``summary``.

    Returns False (and changes nothing) when the file or either marker is missing.
    """
    if not path.is_file():
        return False
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(f"{text[: start + len(BEGIN)]}\n{summary}\n{text[end:]}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS.parent / "README.md")
    parser.add_argument(
        "--top-readme", type=Path, default=TOP_README, help="README whose results part to update"
    )
    args = parser.parse_args(argv)
    args.out.write_text(build_readme(args.results, args.out.resolve().parent))
    print(f"wrote {args.out}")
    if update_top_readme(args.top_readme, top_readme_summary(args.results)):
        print(f"updated the results summary in {args.top_readme}")
    else:
        print(f"{args.top_readme}: no '{BEGIN}' ... '{END}' markers, left alone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
