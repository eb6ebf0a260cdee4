"""Cost of MADAO against RandAugment and no augmentation: time per batch and peak memory of the shipped
``MADAOModule`` through a real ``Trainer``, every case in its own process (``--run-case``).

WRN-28-2, synthetic 32x32 images, batch 128, Cutout 16, SGD, one torch thread, s = 30. Each case of
:data:`CASES` runs once per kind of :data:`KINDS`: ``live`` (one cycle at s = 2 under a fixed glibc mmap
threshold, so that the RSS follows the live tensors; CPU only, two at a time), ``profile`` (MADAO: the hyper
step under ``torch.profiler``), ``timed`` (an untimed warm-up, a whole cycle for MADAO, then one timed cycle:
wall time per batch, ``ru_maxrss`` above the RSS after setup, on a GPU the CUDA peak). From one seed every
variant's first hyper step sees the same state: its hypergradient is compared with ``plain``'s. The
self-supervised cases (:data:`SSL_CASES`, timed only) are also divided by ``ssl_randaugment``.

Run: ``python -m benchmarks.bench_cost --out benchmarks/results/cost.json [--quick] [--device cuda]
[--work-dir DIR]``: about 20 minutes on 2 CPU cores; ``--quick`` (WRN-10-1, batch 16, s = 3) two minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import kornia.augmentation as K
import pytorch_lightning as pl
import torch

from benchmarks import common
from benchmarks.report import cost_table
from madao_pl.augment import IdentityPolicy, MADAOPolicy, RandAugmentPolicy
from madao_pl.hyperstep import HyperStepConfig
from madao_pl.models import WideResNet
from madao_pl.module import MADAOModule
from madao_pl.ssl import MoCo, MoCoModule

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"neumann_tol": 0.0},
    "fast": {},
    "fast_recompute": {"recompute": True},
    "fast_segmented": {"segmented": True},
    "fast_class10": {"num_classes": 10},
    "fast_class100": {"num_classes": 100},
}
"""MADAO variants: the :class:`HyperStepConfig` fields that differ from its defaults, and ``num_classes`` of a
class-conditional policy (the labels are the same 10 classes in every case, so the network is the same)."""
SSL_CASES = ("ssl_randaugment", "ssl_madao")
"""The self-supervised task (``MoCoModule``: MoCo v2 around the same WRN, queue 4,096, head 512 -> 128, base
views crop and flip on device) with RandAugment and with MADAO's defaults, timed against each other."""
CASES = ("baseline", "randaugment", *VARIANTS, *SSL_CASES)
LEARNERS = (*VARIANTS, "ssl_madao")
FIXED = {"baseline": IdentityPolicy, "randaugment": partial(RandAugmentPolicy, num_ops=2, magnitude=0.5)}
FIXED["ssl_randaugment"] = FIXED["randaugment"]
"""The cases with a fixed policy, and how to build it."""
PRESETS = {
    "full": {"depth": 28, "width": 2, "batch": 128, "inner_steps": 30},
    "quick": {"depth": 10, "width": 1, "batch": 16, "inner_steps": 3},
}
SIZE, CUTOUT, THREADS, SEED, CYCLES, PROBE_INNER_STEPS, FIXED_WARMUP = 32, 16, 1, 0, 1, 2, 3
KINDS = {"live": common.LIVE_MEMORY_ENV, "profile": {}, "timed": {}}
"""Process kinds, in the order they run, and the environment each adds."""
RATIO_METRICS = {
    "time": ("cases", "time_per_batch_s"),
    "peak_rss": ("cases", "peak_rss_mb"),
    "peak_above_setup": ("cases", "peak_above_setup_mb"),
    "live_peak_rss": ("live_memory", "peak_rss_mb"),
    "live_peak_above_setup": ("live_memory", "peak_above_setup_mb"),
    "cuda_peak": ("cases", "cuda_peak_mb"),
}
"""Ratio name -> (part of the report, key of a case's record) that it divides."""


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process: fit ``spec["case"]`` for ``warmup + cycles * inner_steps`` batches (the keys of
    :func:`case_spec`); what :class:`~benchmarks.common.Recorder` saw, summarised."""
    args = argparse.Namespace(**spec)
    common.quiet(args.threads)
    device, s, learns = torch.device(args.device), args.inner_steps, args.case in LEARNERS
    pl.seed_everything(args.seed, workers=True, verbose=False)
    fields = dict(VARIANTS.get(args.case, {}))
    classes = fields.pop("num_classes", 0)
    hyper, net = HyperStepConfig(**fields), WideResNet(args.depth, args.width, 10)
    policy = FIXED[args.case]() if args.case in FIXED else MADAOPolicy(num_stages=2, num_classes=classes)
    shared = dict(
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4), num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), cutout=CUTOUT, inner_steps=s,
        hyper=hyper,
    )  # fmt: skip
    if args.case in SSL_CASES:
        crop = K.RandomResizedCrop((SIZE, SIZE), scale=(0.2, 1.0))
        views = K.AugmentationSequential(crop, K.RandomHorizontalFlip())
        moco = MoCo(net, hidden_dim=512, queue_size=4096)
        module: MADAOModule = MoCoModule(moco, policy, views=views, **shared)
    else:
        module = MADAOModule(net, policy, **shared)
    length = args.warmup + args.cycles * s
    recorder = common.Recorder(device, first_hyper=s - 1 if learns else None, profile=args.profile)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_epochs=1, callbacks=[recorder], **common.QUIET_TRAINER
    )
    trainer.fit(module, datamodule=common.SyntheticData(args.batch, length, SIZE, seed=args.seed))
    peak, marks = common.peak_rss_mb(), [h for _, _, h in recorder.batches]
    if len(marks) != length or (learns and not marks[s - 1]):
        raise RuntimeError(f"{args.case}: expected {length} batches, a hyper step at s - 1; got {marks}")
    result: dict[str, Any] = {
        "case": args.case,
        "hyper": {**dataclasses.asdict(hyper), "num_classes": classes} if learns else None,
        "time_per_batch_s": (recorder.batches[-1][1] - recorder.batches[args.warmup][0])
        / (length - args.warmup),
        **recorder.timings(module, args.warmup),
        "batch_s": [end - start for start, end, _ in recorder.batches],
        "hyper_batches": [i for i, h in enumerate(marks) if h],
        "setup_rss_mb": recorder.setup_rss,
        "peak_rss_mb": peak,
        "peak_above_setup_mb": peak - recorder.setup_rss,
        "sections_s": recorder.sections,
        "hypergrad": recorder.hypergrad,
        "state_before_first_hyper_step": recorder.fingerprint,
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["cuda_peak_above_setup_mb"] = result["cuda_peak_mb"] - recorder.setup
    return result


def case_spec(case: str, settings: dict[str, Any], kind: str) -> dict[str, Any]:
    """What :func:`run_case` runs for ``case`` (a live or profile probe: one cycle at s = 2, no warm-up)."""
    timed = kind == "timed"
    return {
        **{key: settings[key] for key in ("device", "depth", "width", "batch", "threads", "seed")},
        "case": case,
        "inner_steps": settings["inner_steps"] if timed else PROBE_INNER_STEPS,
        "warmup": settings["warmup_batches"][case] if timed else 0,
        "cycles": settings["cycles"] if timed else 1,
        "profile": kind == "profile",
    }


def run_kind(names: list[str], settings: dict[str, Any], work: Path, kind: str) -> dict[str, Any]:
    """Each case in its own process (live probes two at a time), its JSON and log ``work/<kind>_<case>.*``."""
    env = {"OMP_NUM_THREADS": str(settings["threads"]), **KINDS[kind]}
    specs = {f"{kind}_{case}": case_spec(case, settings, kind) for case in names}
    width = min(2, os.cpu_count() or 1) if kind == "live" else 1
    records = {}
    for stem, row in common.run_cases("benchmarks.bench_cost", specs, work, env, width):
        case = stem.removeprefix(f"{kind}_")
        if "error" in row:
            raise RuntimeError(f"cost case {kind} {case} failed ({row['error']}):\n{row['traceback_tail']}")
        records[case] = row
        hyper = ", ".join(f"{t:.2f}" for t in row["hyper_step_s"]) or "none"
        print(f"{kind} {case}: {row['time_per_batch_s']:.3f} s/batch, hyper step {hyper} s", flush=True)
    return records


def combine(meta: dict[str, Any], settings: dict[str, Any], records: dict[str, dict]) -> dict[str, Any]:
    """The report: provenance, settings, every record by kind, every case's ratios to ``randaugment`` and
    ``baseline`` (each metric of :data:`RATIO_METRICS` both have), the variants' first hypergradients against
    ``plain``'s (same parameters only: not the class-conditional ones)."""
    cases = records["timed"]
    variants = {name: row["hyper"] for name, row in cases.items() if row.get("hyper")}
    report = {
        "benchmark": "cost of MADAO: time per batch and peak memory through pytorch_lightning.Trainer",
        **meta,
        "settings": {**settings, "variants": variants},
        "cases": cases,
        "live_memory": records.get("live", {}),
        "profiles": records.get("profile", {}),
    }
    ratios: dict[str, dict[str, float]] = {case: {} for case in cases}
    for case, metric, ref in itertools.product(
        cases, RATIO_METRICS, ("randaugment", "baseline", SSL_CASES[0])
    ):
        if (ref in SSL_CASES) != (case in SSL_CASES) and ref != "randaugment":
            continue  # the SSL cases also against SSL RandAugment, the supervised ones not
        part, key = RATIO_METRICS[metric]
        value, base = (report[part].get(c, {}).get(key) for c in (case, ref))
        if case != ref and value is not None and base:
            ratios[case][f"{metric}_vs_{ref}"] = value / base
    ref, compared = cases.get("plain", {}), {}
    for name, row in cases.items():
        a, b = row.get("hypergrad"), ref.get("hypergrad")
        if name in VARIANTS and name != "plain" and "num_classes" not in VARIANTS[name] and a and b:
            compared[name] = {
                "rel_diff": math.dist(a, b) / math.hypot(*b),
                "cosine": sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b)),
                "same_state": row["state_before_first_hyper_step"] == ref["state_before_first_hyper_step"],
            }
    return {**report, "ratios": ratios, "hypergrad_vs_plain": compared}


def main(argv: list[str] | None = None) -> int:
    args = common.cli(__doc__, argv, common.RESULTS / "cost.json", common.COST_FLAGS, run_case)
    if args is None:
        return 0
    preset, live = PRESETS["quick" if args.quick else "full"], args.device == "cpu"
    s = preset["inner_steps"]
    settings = {
        "quick": args.quick, **preset, "model": f"WideResNet({preset['depth']}, {preset['width']}, 10)",
        "image_size": SIZE, "cutout": CUTOUT, "device": args.device, "threads": THREADS, "seed": SEED,
        "optimizer": "SGD lr 0.1, momentum 0.9, weight decay 5e-4; policy: the module's default RMSprop",
        "cycles": CYCLES, "cases": list(CASES),
        "warmup_batches": {c: s if c in LEARNERS else min(FIXED_WARMUP, s) for c in CASES},
        "live_memory_env": common.LIVE_MEMORY_ENV if live else None, "probe_inner_steps": PROBE_INNER_STEPS,
    }  # fmt: skip
    meta, started = common.stamp("benchmarks.bench_cost", argv, device=args.device), time.perf_counter()
    kinds = {
        "live": [c for c in CASES if c not in SSL_CASES] if live else [],
        "profile": [c for c in CASES if c in VARIANTS],
        "timed": list(CASES),
    }
    with common.work_dir(args.work_dir) as work:
        records = {kind: run_kind(names, settings, work, kind) for kind, names in kinds.items()}
    report = combine(meta, settings, records)
    common.write_json(args.out, {**report, "wall_s": time.perf_counter() - started})
    print(cost_table(report, list(report["cases"])))
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
