"""Regenerate ``benchmarks/README.md`` and the top README's results part (between :data:`BEGIN` and
:data:`END`: the accuracy table and MADAO's cost) from ``benchmarks/results/*.json``. Every section names
the machine, date and command of its numbers; a result file missing, or in an older layout, is not run yet.

Run: ``python -m benchmarks.report [--results DIR] [--out FILE] [--no-top-readme]``.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from experiments.summarize import markdown_table

from benchmarks.common import RESULTS, ROOT, cli

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
BENCHMARKS = {
    "policy": ("Policy speed: one augmentation batch on CPU", "runs"),
    "cost": ("Cost of MADAO: time and memory", "form"),
    "accuracy": ("Test error on digits", "tables"),
    "hypergrad": ("Signal and noise of one hypergradient on digits", "sources"),
    "levers": ("Memory levers for the hyper step's products", "memory"),
    "gpu": ("GPU cost: time per step and CUDA memory", "form"),
    "scaling": ("Memory scaling: MADAO / RandAugment by batch size and width", "form"),
}
"""Result file -> (section title, a key only the current layout has)."""
COMMANDS = {n: f"python -m benchmarks.bench_{n} --out benchmarks/results/{n}.json" for n in BENCHMARKS}
FORM_OF = {"cost": "cpu", "gpu": "gpu", "scaling": "scaling"}
"""The cost benchmark's result files and the form (``bench_cost --form``) that writes each."""
COMMANDS |= {
    n: f"python -m benchmarks.bench_cost --form {form} --out benchmarks/results/{n}.json"
    for n, form in FORM_OF.items()
}
REFERENCES = {
    "randaugment": "RA",
    "baseline": "none",
    "randaugment_bf16": "RA bf16",
    "ssl_randaugment": "SSL RA",
}
"""The cost cases a case is divided by, as the cost table names them (RA: RandAugment)."""
RATIOS = {"time_per_step": "time", "peak": "peak", "peak_above_setup": "above set-up"}
RATIOS |= {f"live_{k}": f"live {v}" for k, v in RATIOS.items() if k != "time_per_step"}
"""The cost table's ratios to a case's first reference, and their column names."""
SSL_HEADING = "Self-supervised (`task=ssl`: MoCo v2 pre-training, then the linear probe), linear-probe error"
ACCURACY_SECTIONS = (
    ("ssl", SSL_HEADING, None),
    ("inner_steps", "Inner steps s (paper Figure 3), MADAO", "sweep_inner_steps.png"),
    ("warmup_epochs", "Warm-up epochs w (paper Figure 6), MADAO", "sweep_warmup.png"),
    ("levers", "Levers: one change to MADAO's defaults each, seeds 0, 1, 2", None),
    (None, "Selection probabilities over epochs (paper Figures 2 and 4)", "madao_policy_evolution.png"),
    (None, "Apply probability and magnitude of the top ops (paper Figure 5)", "madao_policy_parameters.png"),
    (
        None,
        "Class-conditional MADAO on digits, seed 0: effective use per digit",
        "madao_class_policy_classes.png",
    ),
)
"""The accuracy page's subsections after the methods table: (table of accuracy.json, heading, plot)."""
GROUPS = ("selection", "apply", "magnitude")
"""The policy's parameter groups whose movement accuracy.json records."""
Columns = list[tuple[str, str, "int | str"]]
"""A table's columns after the first: (header, key of a row's item, :func:`fmt`'s spec)."""


def load(results_dir: Path, name: str) -> dict[str, Any] | None:
    """``<results_dir>/<name>.json`` when it exists in the current layout, else None."""
    path = results_dir / f"{name}.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    return report if BENCHMARKS[name][1] in report else None


def fmt(value: Any, spec: int | str = 2) -> str:
    """A format ``spec``, or that many decimals (a tiny number in e-notation); '—' for None and an empty
    list; yes / no; a list's items comma-separated."""
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(fmt(v, spec) for v in value)
    if isinstance(spec, str):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.2e}" if value != 0 and abs(value) < 10**-spec else f"{value:.{spec}f}"
    return str(value)


def keyed(first: str, items: dict[str, Any], columns: Columns) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table with a row per item (its name in backticks, under ``first``) and a
    cell per column; a key the item lacks: '—'."""
    rows = [
        [f"`{name}`", *(fmt(item.get(key), spec) for _, key, spec in columns)] for name, item in items.items()
    ]
    return [first, *(header for header, _, _ in columns)], rows


def block(caption: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A caption, a markdown table and a blank line; nothing without rows."""
    return [caption, "", markdown_table(header, rows), ""] if rows else []


def provenance(report: dict[str, Any]) -> str:
    """When, on what and by which command the numbers were measured (per sweep: ``runs_by``)."""
    m = report["machine"]
    versions = ", ".join(f"{k} {m[k]}" for k in ("python", "torch", "torchvision", "kornia") if m.get(k))
    where = f"{m['cpu_count']} CPU cores ({m.get('cpu')})" + (f", GPU {m['cuda']}" if m.get("cuda") else "")
    by_invocation: dict[tuple[str, str], list[str]] = {}
    for sweep, run in (report.get("runs_by") or {}).items():
        by_invocation.setdefault((run["date"], run["command"]), []).append(sweep)
    parts = [f"{', '.join(sweeps)}: {date}, `{command}`" for (date, command), sweeps in by_invocation.items()]
    by = f" (the runs: {'; '.join(parts)})" if parts else ""
    command = report.get("command", "unknown")
    return f"Measured {report['date']} on {where}; {m.get('platform')}; {versions}; by `{command}`{by}."


def policy_body(report: dict[str, Any]) -> list[str]:
    """Per batch and torch thread count: median / min / max ms per case, and the MADAO / kornia ratio."""
    s = report["settings"]
    shapes = report.get("batch_shapes", [report["batch_shape"]])
    order = ", order rotated every round" if s.get("order_rotated") else ""
    batches = ", ".join("x".join(map(str, shape)) for shape in shapes)
    out = [
        f"Batch{'es' if len(shapes) > 1 else ''} {batches}, {s['timed_rounds']} timed rounds after "
        f"{s['warmup_rounds']} warm-up rounds, cases interleaved{order}. Milliseconds per batch.",
        "",
    ]
    columns = [(f"{k} ms", f"{k}_ms", 2) for k in ("median", "min", "max")]
    for name, run in report["runs"].items():
        batch = "x".join(map(str, run.get("batch_shape", report["batch_shape"])))
        load_before = fmt(run["load_average_1_5_15_before"][0], 1)
        caption = f"### {name} (batch {batch}; 1-minute load average before: {load_before})"
        out += block(caption, *keyed("case", run["results"], columns))
        out += [
            "MADAO (no grad) / kornia RandAugment, medians: "
            f"**{fmt(run['ratio_madao_no_grad_over_kornia_randaugment'])}** "
            f"({'within' if run['ratio_within_target'] else 'above'} the target {fmt(run['ratio_target'])}). "
            f"MADAO forward+backward / no grad: {fmt(run['ratio_madao_forward_backward_over_no_grad'])}.",
            "",
        ]
    return out


def case_rows(report: dict[str, Any], names: list[str]) -> tuple[list[str], list[list[str]]]:
    """The cost table: a row per case of ``names``: its config overrides, time per step,
    inner and hyper steps' times, HVPs per hyper step, memory, and :data:`RATIOS` to its first reference
    present (then its time against no augmentation); a failed case's error. Ratio columns no row has are
    left out."""
    unit, cases = "CUDA MiB" if report["device"] == "cuda" else "RSS MiB", report["settings"]["cases"]
    fixed = ["case", "overrides", "s / step", "inner step s", "hyper step s", "HVPs", f"peak {unit}"]
    fixed += [f"above set-up {unit}", "vs"]
    header = [*fixed, *(f"{v} / vs" for v in RATIOS.values()), "time / none"]
    rows = []
    for name in names:
        r, overrides, refs = report["cases"][name], *cases[report["cases"][name]["case"]]
        ratios = report["ratios"].get(name, {})
        ref = next((ref for ref in refs if f"time_per_step_vs_{ref}" in ratios), None)
        if "error" in r or "error" in ratios:
            rows.append(
                [f"`{name}`", f"error: {r.get('error', ratios.get('error'))}"[:90], *[""] * (len(header) - 2)]
            )
            continue
        rows.append([
            f"`{name}`", " ".join(f"`{o}`" for o in overrides), fmt(r["time_per_step_s"], 3),
            fmt(r["inner_step_s_median"], 3), fmt(r["hyper_step_s"], 3),
            fmt(r["total_hvps"] / r["hyper_steps"], 1) if r["hyper_steps"] else "—",
            fmt(r["peak_mb"], 0), fmt(r["peak_above_setup_mb"], 0), REFERENCES.get(ref, "—"),
            *(fmt(ratios.get(f"{k}_vs_{ref}")) for k in RATIOS), fmt(ratios.get("time_per_step_vs_baseline")),
        ])  # fmt: skip
    shown = [i for i in range(len(header)) if i < len(fixed) or any(row[i] not in ("—", "") for row in rows)]
    return [header[i] for i in shown], [[row[i] for i in shown] for row in rows]


def cost_table(report: dict[str, Any], names: list[str] | None = None) -> str:
    """:func:`case_rows` as markdown (default: every case)."""
    return markdown_table(*case_rows(report, list(report["cases"]) if names is None else names))


def scaling_table(report: dict[str, Any]) -> str:
    """Per model, batch and MADAO mode of the scaling form: the memory above set-up of RandAugment's case and
    of MADAO's, MADAO / RandAugment of it, of the whole peak and of the time per step."""
    rows, keys = [], ("peak_above_setup", "peak", "time_per_step")
    for key, (_, model, batch) in report["settings"]["models"].items():
        ra = report["cases"][f"{key}/eager/randaugment"]
        for name, ratio in report["ratios"].items():
            if not name.startswith(f"{key}/eager/"):
                continue
            row = report["cases"][name]
            rows.append([
                f"`{model}`", str(batch), fmt(ra.get("parameters", 0) / 1e6, 1), f"`{row['case']}`",
                *(fmt(r.get("peak_above_setup_mb"), 0) for r in (ra, row)),
                *(fmt(ratio.get(f"{k}_vs_randaugment")) for k in keys),
            ])  # fmt: skip
    unit = "CUDA MiB" if report["device"] == "cuda" else "RSS MiB"
    header = ["model", "batch", "M params", "MADAO", f"RA above set-up {unit}", f"MADAO above set-up {unit}"]
    return markdown_table([*header, "above set-up ratio", "peak ratio", "time ratio"], rows)


def cost_caption(report: dict[str, Any]) -> str:
    """What a cost result measured: form, models, s, cycles, device, memory measure."""
    s, measure = report["settings"], next(iter(report["cases"].values())).get("memory_measure", "—")
    models = ", ".join(f"`{m}` ({d}, batch {b})" for d, m, b in s["models"].values())
    compiled = " and `torch.compile` of the network" if True in s["compile"] else ""
    text = (
        f"{report['form']} form: {models}, eager{compiled}; s = {s['inner_steps']}; "
        f"{report.get('device_name') or report['device']}, {s['threads']} torch thread(s); {s['data']}. The "
        "shipped `MADAOModule` built from the configs through `pytorch_lightning.Trainer`, "
        f"{s['isolation']}: {s['warmup_cycles']} untimed warm-up and {s['cycles']} timed whole cycle(s) of s "
        "steps (s - 1 inner steps, one hyper step): time per step, the median cycle / s. Memory: the peak "
        f"({measure}), above set-up: minus the memory "
        "at `on_train_start`. Each case against the case in its `vs` column (none: no augmentation)."
    )
    if report.get("live_memory"):
        live = " ".join(f"`{k}={v}`" for k, v in s["memory_env"].items())
        text += (
            f" Live: each case once more, one cycle at s = {s['probe']['inner_steps']}, under {live} (freed "
            "tensors leave the resident set at once: the RSS follows the live tensors)."
        )
    return text + (f" bf16: {report['bf16']}." if report.get("bf16") else "")


def cost_body(report: dict[str, Any]) -> list[str]:
    """What ran (with its note), the scaling table (that form), the cost table, the hyper step by profiler
    range, the hypergradients against ``plain``'s."""
    out = [cost_caption(report), ""] + ([f"**{report['note']}**", ""] if report.get("note") else [])
    if report["form"] == "scaling":
        out += [scaling_table(report), "", "Every case:", ""]
    out += [cost_table(report), ""]
    profiles = report.get("profiles", {})
    ranges = {
        k: [p["sections_s"].get(k, {}) for p in profiles.values()]
        for p in profiles.values()
        for k in p["sections_s"]
    }
    rows = [
        [f"`{k}`", *(fmt(r.get("seconds"), 3) for r in v), *(fmt(r.get("count")) for r in v)]
        for k, v in ranges.items()
    ]
    caption = (
        "The hyper step by its `torch.profiler` ranges (CPU time), a separate process per variant, one cycle "
        "at s = 2 (the profiler slows the step and its buffers take GBs):"
    )
    header = ["range", *(f"{n} s" for n in profiles), *(f"{n} calls" for n in profiles)]
    out += block(caption, header, rows)
    caption = (
        "The first hypergradient against `plain`'s (same seed: the same state if the fingerprints agree):"
    )
    columns = [
        ("relative difference", "rel_diff", ".2e"),
        ("cosine", "cosine", ".6f"),
        ("same state", "same_state", 0),
    ]
    return out + block(caption, *keyed("variant", report["hypergrad_vs_plain"], columns))


def cost_summary(report: dict[str, Any] | None) -> str:
    """MADAO's cost for the top README: the MADAO cases' rows of :func:`cost_table`."""
    if report is None:
        return f"No cost results yet: run `{COMMANDS['cost']}`."
    s = report["settings"]
    grads = "; ".join(f"`{n}` {c['rel_diff']:.1e}" for n, c in report["hypergrad_vs_plain"].items())
    (_, model, batch), size = (
        next(iter(s["models"].values())),
        next(iter(report["cases"].values()))["image_size"],
    )
    caption = (
        f"MADAO's cost at s = {s['inner_steps']} against RandAugment (RA) on the same module (`{model}`, "
        f"batch {batch}, synthetic {size}x{size}, through `pytorch_lightning.Trainer`, each case in its own "
        f"process; {report['date']}, `{report['command']}`). Live: RSS under a fixed glibc mmap threshold, "
        "so that it follows the live tensors. The paper (GPU, against no augmentation): time 1.7, memory "
        "1.94. "
        f"Hypergradient's relative difference to `plain`: {grads or '—'}."
    )
    learned = [n for n, r in report["cases"].items() if r.get("hyper_steps")]
    return f"{caption}\n\n{cost_table(report, learned)}"


def accuracy_caption(report: dict[str, Any]) -> str:
    """The shared settings of the runs, per data set, as read from a MADAO run's config."""
    s = report["settings"]
    if not s.get("datasets"):
        return "Settings unknown: the methods sweep has no MADAO run."
    parts = [
        f"{name}: model `{d['model']}`, {d['epochs']} epochs, batch {d['batch_size']}, MADAO s = "
        f"{d['inner_steps']}, w = {d['warmup_epochs']}, tau = {d['temperature']}, J = {d['neumann_steps']}, "
        f"alpha = {d['neumann_alpha']}, neumann_tol = {d['neumann_tol']}"
        for name, d in s["datasets"].items()
    ]
    same = "no per-method or per-data-set tuning, every method through the same ops and module"
    return f"{'; '.join(parts)}. Seeds {s['seeds']}; {same}."


def accuracy_body(report: dict[str, Any], results_dir: Path, readme_dir: Path) -> list[str]:
    """summarize.py's tables of the sweeps, the plots, the levers' overrides, how far each policy moved and
    what the class-conditional policy learned."""
    tables, failed = report["tables"], {n: s for n, s in report["sweep_exit_status"].items() if s}
    out = [accuracy_caption(report), ""]
    if failed or report["problems"]:
        out += [
            f"**Incomplete**: sweep exit statuses {failed or 'all 0'}; problems listed under the tables.",
            "",
        ]
    out += [tables.get("methods", "").rstrip(), ""]
    for key, heading, image in ACCURACY_SECTIONS:
        table = [tables[key].rstrip(), ""] if key in tables else []
        link = Path(os.path.relpath(results_dir / (image or ""), readme_dir)).as_posix()
        shown = [f"![{heading}]({link})", ""] if image and (results_dir / image).is_file() else []
        out += [f"### {heading}", "", *table, *shown] if table or shown else []
    levers = [[f"`{name}`", " ".join(f"`{o}`" for o in v)] for name, v in report.get("levers", {}).items()]
    out += block("The levers' overrides:", ["lever", "overrides"], levers)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in report.get("movement", []):
        groups.setdefault((row["sweep"], row["group"], row["dataset"]), []).append(row)
    moved = [
        [f"{sweep} `{group}`", dataset, str(len(rows)), fmt(mean(rows, "hyper_steps"), 0),
         *(fmt(mean(rows, f"{g}_mean_abs_change"), 4) for g in GROUPS),
         *(f"{fmt(mean(rows, f'use_stage{k}_first'))} -> {fmt(mean(rows, f'use_stage{k}_last'))}"
           for k in (0, 1) if f"use_stage{k}_first" in rows[0])]
        for (sweep, group, dataset), rows in groups.items()
    ]  # fmt: skip
    caption = (
        "How far the learned policies moved (first against last row of each run's `policy_history.csv`, "
        "mean over ops and stages, then over seeds); use: sum over ops of selection x apply probability."
    )
    header = ["run", "data set", "seeds", "hyper steps", *(f"{g} |change|" for g in GROUPS)]
    out += block(caption, [*header, "use stage 0", "use stage 1"], moved)
    classes = (report.get("class_policy") or {}).get("classes", {})
    rows = [
        [f"`{n}`", *(", ".join(f"{op} {fmt(d, 3)}" for op, d in c[k]) for k in ("lowered", "raised"))]
        for n, c in classes.items()
    ]
    caption = (
        "What the class-conditional run (digits, seed 0) learned per class: the ops whose effective use "
        "(selection x apply, summed over the stages) it lowered and raised most against the shared part's."
    )
    return out + block(caption, ["class", "lowered most", "raised most"], rows)


def mean(rows: list[dict[str, Any]], key: str) -> float:
    """The mean of ``key`` over ``rows``."""
    return statistics.fmean(r[key] for r in rows)


def hypergrad_body(report: dict[str, Any]) -> list[str]:
    """Per source / averaging / batch: mean pairwise cosine and median |mean| / SE per parameter group; the
    variance-reduction options; the alignment with the damped implicit gradient; the per-op gradients."""
    s, names, ref = report["settings"], list(report["sources"]["all"]), report["reference"]
    draws = {
        **{f"`{k}` varies": v for k, v in report["sources"].items()},
        **{f"average of {m} draws": v for m, v in report["averaging"].items() if m != "1"},
        f"whole held-out split ({report['val_batch']['size']}) as the batch": report["val_batch"],
    }
    cell = "{0[mean_pairwise_cosine]:.3f} / {0[median_abs_mean_over_se]:.2f}"
    rows = [[label, *(cell.format(r[n]) for n in names)] for label, r in draws.items()]
    out = block(
        f"After {s['warmup_epochs']} warm-up epochs of a real fit (overrides {s['overrides'] or 'none'}; "
        f"hyper step {s['hyper']}, held-out batch {s['val_batch']} of {s['hyper_split']}), {s['draws']} "
        "hypergradients at the same weights, each with its own draws. Cell: mean pairwise cosine between "
        "independent hypergradients / median over coordinates of |mean| / standard error (1.0 / large: all "
        "signal).",
        ["draws", *names],
        rows,
    )
    cosines = [(n, n, ".3f") for n in names]
    options = {
        k: {**r, **{n: r[n]["mean_pairwise_cosine"] for n in names}} for k, r in report["estimators"].items()
    }
    columns = [("S", "rao_samples", 0), ("centered", "centered_selection", 0), ("k", "batches", 0)]
    out += block(
        "Variance reduction, every source varying, same draws for each option: Gumbel-Rao samples S "
        "(`augment.policy.rao_samples`), the selection factor on the change only "
        "(`augment.policy.centered_selection`), training batches per hyper step k "
        "(`augment.hyper_train_batches`). Cell: mean pairwise cosine.",
        *keyed("option", options, [*columns, ("s / draw", "seconds_per_draw", 2), *cosines]),
    )
    solvers = {"configured": {"settings": "the hyper step above", **ref["mean"]}}
    for name, solver in ref.get("solvers", {}).items():
        settings = ", ".join(f"{k}={v}" for k, v in solver.items() if k != "mean")
        solvers[name] = {"settings": settings, **solver["mean"]}
    out += block(
        f"Cosine to the implicit gradient with a damped Hessian (lambda = {ref['damping']}, float64 CG to "
        f"convergence), same draws, mean of {len(ref['draws'])}:",
        *keyed("solver", solvers, [("settings", "settings", 0), *cosines]),
    )
    columns = [("grad norm", "grad_norm", 3), ("inner product", "inner_product", 4), ("cosine", "cosine", 3)]
    return out + block(
        "Each op on every image of a training batch (the policy's initial magnitude): the training "
        "gradient's norm and its inner product and cosine with the validation gradient (the one-step "
        "look-ahead rewards a large inner product):",
        *keyed("op", report["ops"], columns),
    )


def levers_body(report: dict[str, Any]) -> list[str]:
    """The peak memory of one product per lever beside a training step's, and each lever's error."""
    s = report["settings"]
    columns = [
        ("MiB", "peak_above_setup_mb", 0),
        ("/ training step", "vs_training_step", 2),
        ("s", "seconds", 2),
    ]
    memory = block(
        f"{s['model']}, batch {s['batch']}, {s['image_size']} px, one thread, each probe in its own process "
        f"({', '.join(f'{k}={v}' for k, v in s['memory_env'].items())}): peak RSS above set-up.",
        *keyed("probe", report["memory"], columns),
    )
    columns = [(f"FD, e abs(u) = {step:g}", f"fd_{step:g}", ".2e") for step in s["steps"]]
    columns += [("forward-over-reverse", "forward_over_reverse", ".2e"), ("segmented", "segmented", ".2e")]
    return memory + block(
        "Relative error against the exact product (double backward) of a random direction u: central finite "
        "differences per perturbation norm, forward-over-reverse (`torch.func.jvp` of `grad`) and the "
        "shipped segmented product (`augment.hyper.segmented=true`). "
        "`softplus_float64` is the control network with softplus(beta=20) for ReLU.",
        *keyed("network", report["errors"], columns),
    )


def build_readme(results_dir: Path = RESULTS, readme_dir: Path | None = None) -> str:
    """The whole ``benchmarks/README.md`` (image links relative to ``readme_dir``, default its parent)."""
    bodies = {
        "policy": policy_body,
        "cost": cost_body,
        "accuracy": lambda r: accuracy_body(r, results_dir, readme_dir or results_dir.parent),
        "hypergrad": hypergrad_body,
        "levers": levers_body,
        "gpu": cost_body,
        "scaling": cost_body,
    }
    files = [[f"`results/{name}.json`", name, f"`{command}`"] for name, command in COMMANDS.items()]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; do not edit by hand. "
        "`make bench` runs every benchmark and regenerates this page (`python -m benchmarks.run_all`); "
        "`make bench-quick` runs the cost benchmark at smoke-test scale into `outputs/bench/quick/`.",
        "",
        markdown_table(["file", "benchmark", "command"], files),
        "",
    ]
    for name, (title, _) in BENCHMARKS.items():
        report = load(results_dir, name)
        lines.append(f"## {title} (`results/{name}.json`)\n")
        if report is None:
            lines.append(f"Not run yet (in this layout): `{COMMANDS[name]}`.\n")
        else:
            lines += [provenance(report), "", *bodies[name](report)]
    return "\n".join(lines).rstrip() + "\n"


def top_readme_summary(results_dir: Path = RESULTS) -> str:
    """What goes between the markers of the top-level README: accuracy table, then MADAO's cost."""
    accuracy = load(results_dir, "accuracy")
    methods = f"No accuracy results yet: run `{COMMANDS['accuracy']}`."
    if accuracy:
        methods = f"{accuracy_caption(accuracy)}\n\n{accuracy['tables'].get('methods', '').rstrip()}"
        if "ssl" in accuracy["tables"]:
            methods += f"\n\n{SSL_HEADING}:\n\n{accuracy['tables']['ssl'].rstrip()}"
    more = (
        "Both sweeps, the policy plots, the policy speed and the hyper-step breakdown: [benchmarks/README.md]"
    )
    return "\n\n".join([methods, cost_summary(load(results_dir, "cost")), f"{more}(benchmarks/README.md)."])


def update_top_readme(path: Path, summary: str) -> bool:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``path``; False (nothing changes) when the
    file or a marker is missing."""
    text = path.read_text() if path.is_file() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    path.write_text(f"{text[: start + len(BEGIN)]}\n{summary}\n{text[end:]}")
    return True


def main(argv: list[str] | None = None) -> int:
    flags = {"--results": {"type": Path, "default": RESULTS}}
    flags["--no-top-readme"] = {"action": "store_true", "help": "leave the top README alone"}
    args = cli(__doc__, argv, RESULTS.parent / "README.md", flags)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_readme(args.results, args.out.resolve().parent))
    print(f"wrote {args.out}")
    if not args.no_top_readme:
        updated = update_top_readme(ROOT / "README.md", top_readme_summary(args.results))
        print(f"README.md: {'results part updated' if updated else f'no {BEGIN} ... {END}, left alone'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
