"""Cost of MADAO against RandAugment and no augmentation: time per step and memory of the shipped
``MADAOModule`` through a real ``pytorch_lightning.Trainer``, each case built from the real Hydra configs by
:func:`madao_pl.run.build_module` (as ``python -m madao_pl.run`` builds it), on synthetic data already on the
device, in a process of its own.

Why on a GPU too: the paper's cost claim (1.7x the time, 1.94x the GPU memory, DESIGN.md §8) is a GPU figure,
and CPU figures do not carry over (kernel launches, cuDNN's double backward, the caching allocator);
``torch.compile`` and bf16 are the first levers a GPU user reaches for (bf16: :data:`BF16_NOTE`).

Forms (:data:`FORMS`): ``cpu`` (``results/cost.json``): WRN-28-2, batch 128, 32 px, one torch thread, s = 30,
every case of :data:`CASES` but the bf16 ones; on CPU also each case once more under a fixed glibc mmap
threshold (``live``: the RSS then follows the live tensors) and the supervised MADAO cases once under
``torch.profiler`` (``profile``), both one cycle at s = 2. ``gpu`` (``results/gpu.json``; without CUDA it runs
``quick``): WRN-28-2 and ResNet-50 (ImageNet preset, batch 64, 224 px), eager and ``torch.compile`` of the
network, s = 30. ``quick``: WRN-28-2 at batch 8 and the small CNN, s = 3 (a check that it runs). ``scaling``
(``results/scaling.json``): WRN-28-2 at batch 64, 128, 256 and WRN-28-10 at 32, s = 3, one timed cycle.

Per case: time per step (median over the timed whole cycles of s steps, the last one MADAO's hyper step, / s;
synchronised at every batch boundary), the hyper steps' times, peak memory (CUDA: ``max_memory_allocated``
over the timed cycles; CPU: ``ru_maxrss``), also above the memory at ``on_train_start``; each case divided by
its references (:data:`CASES`). From one seed every MADAO variant's first hyper step sees the same state: its
hypergradient is compared with ``plain``'s (:data:`EXACT`). A failed case (compile, out of memory, timeout)
keeps its error and the others go on.

Run: ``python -m benchmarks.bench_cost --form cpu --out benchmarks/results/cost.json`` (about 75 minutes on
2 CPU cores); ``--form gpu --out benchmarks/results/gpu.json`` (CUDA: a few minutes); ``--form scaling --out
benchmarks/results/scaling.json`` (18 minutes on 2 CPU cores); ``[--device cuda] [--work-dir DIR]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate

from benchmarks import common
from benchmarks.report import cost_table
from madao_pl.run import build, build_module

RA, BF16 = ("randaugment", "baseline"), ("trainer.precision=bf16-mixed",)
SSL = ("task=ssl", "task.network.queue_size=4096")
CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "baseline": (("augment=baseline",), ()),
    "randaugment": (("augment=randaugment",), ("baseline",)),
    "plain": (("augment=madao", "augment.hyper.neumann_tol=0"), RA),
    "madao": (("augment=madao",), RA),
    "madao_recompute": (("augment=madao", "augment.hyper.recompute=true"), RA),
    "madao_segmented": (("augment=madao", "augment.hyper.segmented=true"), RA),
    "madao_class10": (("augment=madao_class",), RA),
    "madao_class100": (("augment=madao_class", "augment.policy.num_classes=100"), RA),
    "randaugment_bf16": (("augment=randaugment", *BF16), ()),
    "madao_bf16": (("augment=madao", *BF16), ("randaugment_bf16",)),
    "ssl_randaugment": (("augment=randaugment", *SSL), ("randaugment",)),
    "ssl_madao": (("augment=madao", *SSL), ("ssl_randaugment",)),
}
"""Case -> (config overrides, the cases it is divided by). ``plain``: every Neumann term (no early stop);
``madao``: the defaults; ``recompute``, ``segmented``: the exact memory modes (``segmented``: one block's
activations at a time); class-conditional with the data's 10 classes and with 100 (the labels stay 10, so
the network is the same); bf16-mixed (the inner steps' network in bfloat16 autocast); the self-supervised
task (``MoCoModule``: MoCo v2 around the same network, queue 4,096, base views crop and flip on device)."""
EXACT = ("madao", "madao_recompute", "madao_segmented")
"""The variants whose first hypergradient must equal ``plain``'s to the Neumann series' tolerance."""
PROFILED = ("plain", *EXACT, "madao_class10", "madao_class100")
"""The ``cpu`` form's cases timed once more by their ``torch.profiler`` ranges."""
GPU_CASES = ["randaugment", "madao", "madao_segmented", "randaugment_bf16", "madao_bf16"]
EAGER_ONLY = {"madao_segmented", "randaugment_bf16", "madao_bf16"}
"""Measured eager only: the segmented mode splits the network into its blocks, which a ``torch.compile``
wrapper hides; bf16 is measured against eager float32."""
FORMS: dict[str, dict[str, Any]] = {
    "cpu": {
        "models": {"wrn28_2": ("cifar10", "wrn28_2", 128)}, "cases": [c for c in CASES if "bf16" not in c],
        "inner_steps": 30, "warmup_cycles": 1, "cycles": 3, "compile": [False], "timeout_s": None,
    },
    "gpu": {
        "models": {"wrn28_2": ("cifar10", "wrn28_2", 128), "resnet50": ("imagenet", "resnet50", 64)},
        "cases": GPU_CASES, "inner_steps": 30, "warmup_cycles": 1, "cycles": 3, "compile": [False, True],
        "timeout_s": 240,
    },
    "quick": {
        "models": {"wrn28_2": ("cifar10", "wrn28_2", 8), "cnn": ("cifar10", "cnn", 8)}, "cases": GPU_CASES,
        "inner_steps": 3, "warmup_cycles": 1, "cycles": 2, "compile": [False], "timeout_s": 240,
    },
    "scaling": {
        "models": {
            **{f"wrn28_2_b{b}": ("cifar10", "wrn28_2", b) for b in (64, 128, 256)},
            "wrn28_10_b32": ("cifar10", "wrn28_10", 32),
        },
        "cases": ["randaugment", "madao", "madao_segmented"], "inner_steps": 3, "warmup_cycles": 1,
        "cycles": 1, "compile": [False], "timeout_s": 1800,
    },
}  # fmt: skip
"""Per form: model key -> (``dataset=``, ``model=``, batch; image size, classes and Cutout come from the data
set's preset), the cases, s, warm-up and timed cycles, compile settings, a case's timeout in seconds."""
CPU_SCALING = {"warmup_cycles": 0}
"""``scaling`` on CPU: no warm-up cycle (WRN-28-10's hyper step takes minutes; the RSS peak includes the
warm-up anyway), so the time ratio is a cold cycle's."""
PROBE = {"inner_steps": 2, "warmup_cycles": 0, "cycles": 1}
"""The ``live`` and ``profile`` probes of the ``cpu`` form: one cycle at s = 2."""
SEED, CPU_THREADS = 0, 1
"""``CPU_THREADS``: torch threads of a CPU case; also the only count a forked child may use once its parent
has run OpenMP threads (with more, libgomp deadlocks in the child)."""
MATMUL_PRECISION = "high"  # what madao_pl.run sets: TF32 matrix products on GPUs that have them
BF16_NOTE = (
    "under bf16-mixed MADAOModule turns autocast off for the augmentation and the whole hyper step, so the "
    "hypergradient is the float32 one (the Neumann series' correction, alpha |Hv| / |v| ~ 1e-3, is below "
    "bf16's resolution, ~4e-3); 16-mixed, 16-true and bf16-true are refused for a learned policy"
)
NOTES = {
    ("quick", "cpu"): "CPU reduced form (tiny sizes, s = 3, no compile, peak RSS instead of CUDA memory): it "
    "checks that the benchmark runs; the GPU figures await a CUDA machine (python -m benchmarks.bench_cost "
    "--form gpu --out benchmarks/results/gpu.json)",
    ("scaling", "cpu"): "CPU: the time ratio is one cold cycle's at s = 3 (MADAO's share of time grows as s "
    "shrinks)",
}
METRICS = {"time_per_step": "time_per_step_s", "peak": "peak_mb", "peak_above_setup": "peak_above_setup_mb"}
"""Ratio name -> the record key it divides (``live_`` ones: of the ``live`` probes)."""
OUT = {"cpu": "cost", "gpu": "gpu", "quick": "gpu", "scaling": "scaling"}
"""Each form's result file under ``benchmarks/results/`` (``--out`` by default)."""
KEYS = ("model", "dataset", "batch", "case", "compile")
"""What a case's record starts with, failed or not."""


def case_name(settings: dict[str, Any], model: str, compiled: bool, case: str) -> str:
    """``case`` alone in a form of one model, eager only; else ``<model>/<eager|compiled>/<case>``."""
    if len(settings["models"]) == 1 and settings["compile"] == [False]:
        return case
    return f"{model}/{'compiled' if compiled else 'eager'}/{case}"


def _fit(spec: dict[str, Any], record: dict[str, Any]) -> None:
    """Build the case from the configs, fit it, and fill ``record`` with what the recorder saw."""
    device, s = torch.device(spec["device"]), spec["inner_steps"]
    trainer_choice = "gpu" if spec["device"] == "cuda" else "cpu"
    cfg = common.compose(
        [
            f"dataset={spec['dataset']}", f"model={spec['model']}", *CASES[spec["case"]][0],
            f"augment.inner_steps={s}", "augment.warmup_epochs=0", f"trainer={trainer_choice}",
            f"dataset.datamodule.batch_size={spec['batch']}", f"paths.output_dir={spec['output_dir']}",
        ]
    )  # fmt: skip
    classes, size = int(cfg.dataset.num_classes), int(cfg.dataset.image_size)
    record.update(image_size=size, num_classes=classes, cutout=int(cfg.dataset.cutout))
    pl.seed_everything(SEED, workers=True, verbose=False)
    net = build(cfg, "model.net", num_classes=classes)  # built here: compiled, and its size recorded
    data_class = get_class(cfg.dataset.datamodule._target_)
    module = build_module(
        cfg, classes, data_class.mean, data_class.std, net=torch.compile(net) if spec["compile"] else net
    )
    record["parameters"] = sum(p.numel() for p in net.parameters())
    learns = module.learns_policy
    record["hyper"] = dataclasses.asdict(module.hyper) if learns else None
    warmup, length = spec["warmup_cycles"] * s, (spec["warmup_cycles"] + spec["cycles"]) * s
    recorder = common.Recorder(device, reset_at=warmup, first_hyper=s - 1, profile=spec["profile"])
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[recorder], max_epochs=1, **common.QUIET_TRAINER, _convert_="object"
    )
    record["precision"] = trainer.precision
    data = common.SyntheticData(spec["batch"], length, size, classes, SEED, device)
    try:
        trainer.fit(module, datamodule=data)
    finally:
        record["batches_done"], record["setup_memory_mb"] = len(recorder.batches), recorder.setup
    marks = [h for _, _, h in recorder.batches]
    if marks != [learns and i % s == s - 1 for i in range(length)]:
        raise RuntimeError(f"expected {length} batches, hyper steps at every s-th; got {marks}")
    timed = recorder.batches[warmup:]
    cycles = [timed[k + s - 1][1] - timed[k][0] for k in range(0, len(timed), s)]
    record.update(time_per_step_s=statistics.median(cycles) / s, cycle_s=cycles)
    record.update(
        recorder.timings(module, warmup), sections_s=recorder.sections, hypergrad=recorder.hypergrad
    )
    record["state_before_first_hyper_step"] = recorder.fingerprint
    if device.type == "cuda":
        record["before_timed_memory_mb"] = recorder.before_timed
        record["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        record["peak_mb"] = common.peak_rss_mb()
    record["peak_above_setup_mb"] = record["peak_mb"] - record["setup_memory_mb"]


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process: fit one case (the keys of :func:`case_specs`); its record, or its error string."""
    common.quiet(spec["threads"])
    torch.set_float32_matmul_precision(MATMUL_PRECISION)
    device = torch.device(spec["device"])
    record: dict[str, Any] = {key: spec[key] for key in (*KEYS, "inner_steps")}
    mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    record["memory_measure"] = (
        "torch.cuda.max_memory_allocated over the timed cycles"
        if device.type == "cuda"
        else "peak RSS (ru_maxrss) of the case's process, warm-up included"
        + (f", MALLOC_MMAP_THRESHOLD_={mmap}" if mmap else "")
    )
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    try:
        _fit(spec, record)
    except Exception as error:  # a failed case is a result: keep its message, the others go on
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["traceback_tail"] = traceback.format_exc()[-3000:]
    return record


def case_specs(
    form: str, settings: dict[str, Any], device: str, work: Path, cases: list[str] | None = None
) -> dict[str, Any]:
    """Every case of ``form`` (or only ``cases``, with ``settings`` s and cycles) by name, eager before
    compiled (a slow compile never holds up the rest)."""
    threads = torch.get_num_threads() if device == "cuda" else CPU_THREADS
    return {
        case_name(settings, key, compiled, case): {
            "model": model, "dataset": dataset, "batch": batch, "case": case, "compile": compiled,
            "device": device, "threads": threads, "profile": False, "output_dir": str(work / "runs"),
            **{k: settings[k] for k in ("inner_steps", "warmup_cycles", "cycles")},
        }
        for compiled in settings["compile"]
        for key, (dataset, model, batch) in settings["models"].items()
        for case in cases or settings["cases"]
        if not (compiled and case in EAGER_ONLY)
    }  # fmt: skip


def ratios(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per case with references present: ``<metric>_vs_<reference>`` for each :data:`METRICS` (and
    ``live_`` ones of the memory from ``live_memory``), or why not."""
    out: dict[str, dict[str, Any]] = {}
    cases, live = report["cases"], report.get("live_memory", {})
    memory = {k: v for k, v in METRICS.items() if k != "time_per_step"}
    for name, row in cases.items():
        for ref in CASES[row["case"]][1]:
            ref_name = name.removesuffix(row["case"]) + ref
            if (base := cases.get(ref_name)) is None:
                continue
            if failed := [f"{r['case']}: {r['error']}" for r in (row, base) if "error" in r]:
                out[name] = {"error": "; ".join(failed)}
                break
            for part, prefix, metrics in ((cases, "", METRICS), (live, "live_", memory)):
                a, b = part.get(name, {}), part.get(ref_name, {})
                for metric, key in metrics.items():
                    if key in a and b.get(key):
                        out.setdefault(name, {})[f"{prefix}{metric}_vs_{ref}"] = a[key] / b[key]
    return out


def against_plain(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per :data:`EXACT` variant beside a ``plain`` case: its first hypergradient's relative difference and
    cosine to ``plain``'s, and whether both started from the same state (the weights' fingerprint)."""
    out = {}
    for name, row in cases.items():
        ref = cases.get(name.removesuffix(row["case"]) + "plain", {})
        a, b = row.get("hypergrad"), ref.get("hypergrad")
        if row["case"] in EXACT and a and b:
            out[name] = {
                "rel_diff": math.dist(a, b) / math.hypot(*b),
                "cosine": sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b)),
                "same_state": row["state_before_first_hyper_step"] == ref["state_before_first_hyper_step"],
            }
    return out


def combine(head: dict[str, Any], settings: dict[str, Any], records: dict[str, dict]) -> dict[str, Any]:
    """The report: ``head`` (provenance, form, device), ``settings``, the records by kind (``timed``: the
    cases, ``live``, ``profile``: the probes), each case's :func:`ratios`, :func:`against_plain`."""
    report = {**head, "settings": settings, "cases": records["timed"]}
    report |= {"live_memory": records.get("live", {}), "profiles": records.get("profile", {})}
    return report | {"ratios": ratios(report), "hypergrad_vs_plain": against_plain(report["cases"])}


def run_kind(
    kind: str, specs: dict[str, Any], work: Path, env: dict[str, str], timeout: float | None, fork: bool
) -> dict[str, dict[str, Any]]:
    """Each case of ``specs`` in a process of its own, its JSON and log ``work/<kind>_<name>.*`` (the
    ``live`` probes two at a time); the records by name."""
    width = min(2, os.cpu_count() or 1) if kind == "live" else 1
    specs = {f"{kind}_{name}": {**spec, "profile": kind == "profile"} for name, spec in specs.items()}
    records = {}
    for stem, row in common.run_cases("benchmarks.bench_cost", specs, work, env, width, timeout, fork):
        records[name := stem.removeprefix(f"{kind}_")] = row = {**{k: specs[stem][k] for k in KEYS}, **row}
        shown = f"error: {row['error']}" if "error" in row else f"{row['time_per_step_s']:.4f} s/step"
        print(f"{kind} {name}: {shown}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    flags = {**common.COST_FLAGS, "--form": {"choices": list(FORMS), "default": "cpu"}}
    args = common.cli(__doc__, argv, None, flags, run_case)
    if args is None:
        return 0
    device, cuda = args.device, args.device == "cuda"
    form = "quick" if args.form == "gpu" and not cuda else args.form
    live = not cuda and form in ("cpu", "scaling")  # the RSS follows the live tensors
    settings = FORMS[form] | (CPU_SCALING if form == "scaling" and not cuda else {})
    threads = torch.get_num_threads() if cuda else CPU_THREADS
    env = {"OMP_NUM_THREADS": str(threads)}
    live_env = {**env, **common.LIVE_MEMORY_ENV}
    fork = form == "quick" and not cuda  # small cases: a fork is quicker than a new import of Lightning
    started, timeout, probe = time.perf_counter(), settings["timeout_s"], {**settings, **PROBE}
    records: dict[str, dict[str, Any]] = {}
    with common.work_dir(args.work_dir) as work:
        if form == "cpu" and live:
            records["live"] = run_kind(
                "live", case_specs(form, probe, device, work), work, live_env, timeout, False
            )
        if form == "cpu":
            specs = case_specs(form, probe, device, work, [c for c in PROFILED if c in settings["cases"]])
            records["profile"] = run_kind("profile", specs, work, env, timeout, False)
        timed_env = live_env if live and form == "scaling" else env  # scaling: its memory is the live one
        specs = case_specs(form, settings, device, work)
        records["timed"] = run_kind("timed", specs, work, timed_env, timeout, fork)
    head = {
        "benchmark": "cost of MADAO: time per step and memory through pytorch_lightning.Trainer",
        **common.stamp("benchmarks.bench_cost", argv, device=device),  # after the cases: forks see no CUDA
        "form": form,
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "note": NOTES.get((form, device)),
        "bf16": BF16_NOTE if any("bf16" in case for case in settings["cases"]) else None,
    }
    settings = {
        **settings, "cases": {case: CASES[case] for case in settings["cases"]}, "threads": threads,
        "seed": SEED, "data": "synthetic, on the device: random images in [0, 1], random labels",
        "float32_matmul_precision": MATMUL_PRECISION, "probe": PROBE if form == "cpu" else None,
        "memory_env": common.LIVE_MEMORY_ENV if live else None,
        "isolation": "a fork per case" if fork else "a fresh process per case",
    }  # fmt: skip
    report = combine(head, settings, records)
    out = args.out or common.RESULTS / f"{OUT[form]}.json"
    common.write_json(out, {**report, "wall_s": time.perf_counter() - started})
    print(cost_table(report))
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return 0 if all("error" not in row for row in report["cases"].values() if not row["compile"]) else 1


if __name__ == "__main__":
    sys.exit(main())
