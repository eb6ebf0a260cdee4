"""GPU cost of MADAO against RandAugment: time per training step and memory of the shipped ``MADAOModule``
through a real ``pytorch_lightning.Trainer`` on synthetic data; ``--form scaling``: how the memory ratio
grows with batch size and width (issue #16).

Why: the paper's cost claim (1.7x the time, 1.94x the GPU memory, DESIGN.md §8) is a GPU figure; the CPU
figures of ``bench_cost`` do not carry over (kernel launches, cuDNN's double backward, the caching allocator);
``torch.compile`` and bf16 are the first levers a GPU user reaches for (bf16: :data:`BF16_DETAIL`).

Forms (:data:`FORMS`, :data:`MODELS`): ``full`` (the default on CUDA): WRN-28-2 (CIFAR-10 preset, batch 128,
32 px) and ResNet-50 (ImageNet preset, batch 64, 224 px), eager and ``torch.compile`` of the network, s = 30;
``quick`` (the default without CUDA, a check that it runs): WRN-28-2 at batch 8 and the small CNN, 32 px,
s = 3; ``scaling``: WRN-28-2 at batch 64, 128, 256 and WRN-28-10 at 32, s = 3, one timed cycle. Per case
(:data:`AUGMENTS`: RandAugment; MADAO's default hyper step, and its ``segmented`` mode; both under
bf16-mixed; segmented and bf16 eager only, not in ``scaling``): time
per step (median over the timed whole cycles of s steps, / s, synchronised at every batch boundary);
peak memory (CUDA: ``max_memory_allocated`` over the timed cycles; CPU: ``ru_maxrss``, for ``scaling`` under
:data:`~benchmarks.common.LIVE_MEMORY_ENV` so that the RSS follows the live tensors), also above the memory at
``on_train_start``; MADAO / RandAugment of the three. A failed case (compile, out of memory, timeout) keeps
its error and the others go on. Each case is built from the real Hydra configs as ``python -m madao_pl.run``
builds it, its batches on the device, in a process of its own: a fresh ``--run-case`` process on CUDA (never
forked) and for ``scaling`` on CPU (the mmap threshold is read at start-up), else a fork of this one.

Run: ``python -m benchmarks.bench_gpu --out benchmarks/results/gpu.json`` (CUDA: a few minutes; CPU: the
quick form, under a minute); ``python -m benchmarks.bench_gpu --form scaling --out
benchmarks/results/scaling.json`` (12 minutes on 2 CPU cores).
"""

from __future__ import annotations

import itertools
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
from omegaconf import DictConfig

from benchmarks import common
from benchmarks.report import gpu_table, scaling_table
from madao_pl.run import build

BF16 = ["trainer.precision=bf16-mixed"]
AUGMENTS: dict[str, list[str]] = {
    "randaugment": ["augment=randaugment"],
    "madao": ["augment=madao"],
    "madao_segmented": ["augment=madao", "augment.hyper.segmented=true"],
    "randaugment_bf16": ["augment=randaugment", *BF16],
    "madao_bf16": ["augment=madao", *BF16],
}
"""The cases' policies (and precision) as config overrides: RandAugment, MADAO's two exact hyper-step modes
(the default kept graph; ``segmented``: one block's activations at a time), and both under bf16-mixed (the
inner steps' network in bfloat16 autocast; the augmentation and the hyper step in float32). Each MADAO case
is divided by the RandAugment case of its precision (:data:`BASELINES`). The segmented mode splits the
network into its blocks, which a ``torch.compile`` wrapper hides, and bf16 is measured eager:
:data:`EAGER_ONLY`."""
BASELINES = {"madao": "randaugment", "madao_segmented": "randaugment", "madao_bf16": "randaugment_bf16"}
EAGER_ONLY = {"madao_segmented", "randaugment_bf16", "madao_bf16"}
MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "wrn28_2": {"dataset": "cifar10", "model": "wrn28_2", "batch": 128},
        "resnet50": {"dataset": "imagenet", "model": "resnet50", "batch": 64},
    },
    "quick": {
        "wrn28_2": {"dataset": "cifar10", "model": "wrn28_2", "batch": 8},
        "cnn": {"dataset": "cifar10", "model": "cnn", "batch": 8, "stands_in_for": "resnet50"},
    },
    "scaling": {
        **{f"wrn28_2_b{b}": {"dataset": "cifar10", "model": "wrn28_2", "batch": b} for b in (64, 128, 256)},
        "wrn28_10_b32": {"dataset": "cifar10", "model": "wrn28_10", "batch": 32},
    },
}
"""Per form, model key -> the config choices (``dataset=``, ``model=``) and the batch; image size, classes
and Cutout come from the data set's preset."""
FORMS = {
    "full": {"inner_steps": 30, "warmup_cycles": 1, "cycles": 3, "compile": [False, True], "timeout_s": 240},
    "quick": {"inner_steps": 3, "warmup_cycles": 1, "cycles": 2, "compile": [False], "timeout_s": 240},
    "scaling": {
        "inner_steps": 3, "warmup_cycles": 1, "cycles": 1, "compile": [False], "timeout_s": 1800,
        "augments": ["randaugment", "madao", "madao_segmented"],
    },
}  # fmt: skip
"""Per form: s, warm-up and timed cycles, compile settings, a case's timeout; ``augments``: a subset of
:data:`AUGMENTS` (default all; the scaling form's memory is float32's)."""
CPU_SCALING = {"warmup_cycles": 0}
"""``scaling`` on CPU: no warm-up cycle (WRN-28-10's hyper step takes minutes; the RSS peak includes the
warm-up anyway), so the time ratio is a cold cycle's."""
SEED, CPU_THREADS = 0, 1
"""``CPU_THREADS``: torch threads of a CPU case, as in bench_cost; also the only count a forked child may use
once its parent has run OpenMP threads (with more, libgomp deadlocks in the child)."""
MATMUL_PRECISION = "high"  # what madao_pl.run sets: TF32 matrix products on GPUs that have them
BF16_NOTE = (
    "the *_bf16 cases: trainer.precision=bf16-mixed, the inner steps in bfloat16, the hyper step float32"
)
BF16_DETAIL = (
    "under bf16-mixed MADAOModule turns autocast off for the augmentation and the whole hyper step, so the "
    "hypergradient is the float32 one (the Neumann series' correction, alpha |Hv| / |v| ~ 1e-3, is below "
    "bf16's resolution, ~4e-3); 16-mixed, 16-true and bf16-true are refused for a learned policy"
)
NOTES = {
    ("quick", "cpu"): "CPU reduced form (tiny sizes, s = 3, no compile, peak RSS instead of CUDA memory): it "
    "checks that the benchmark runs; the GPU figures await a CUDA machine (python -m benchmarks.bench_gpu "
    "--out benchmarks/results/gpu.json)",
    ("quick", "cuda"): "reduced form (tiny sizes) on CUDA",
    ("scaling", "cpu"): "CPU: peak RSS above set-up under MALLOC_MMAP_THRESHOLD_=131072, one torch thread; "
    "the time ratio is one cold cycle's at s = 3 (MADAO's share of time grows as s shrinks)",
}
RATIO_KEYS = {
    "time_per_step": "time_per_step_s",
    "peak": "peak_mb",
    "peak_above_setup": "peak_above_setup_mb",
}
"""Ratio name -> the case key it divides (MADAO's over RandAugment's)."""
KEYS = ("model", "dataset", "augment", "compile", "batch")
"""What a case's record starts with, failed or not."""


def case_name(model: str, compiled: bool, augment: str) -> str:
    return f"{model}/{'compiled' if compiled else 'eager'}/{augment}"


def compose_case(spec: dict[str, Any]) -> DictConfig:
    """The real config tree with the case's choices: data set preset, model, augmentation at s, no
    warm-up epochs (no callbacks run: every cycle ends in a hyper step), the trainer for the device."""
    return common.compose(
        [
            f"dataset={spec['dataset']}",
            f"model={spec['model']}",
            *AUGMENTS[spec["augment"]],
            f"augment.inner_steps={spec['inner_steps']}",
            "augment.warmup_epochs=0",
            f"dataset.datamodule.batch_size={spec['batch']}",
            f"trainer={'gpu' if spec['device'] == 'cuda' else 'cpu'}",
            f"paths.output_dir={spec['output_dir']}",
        ]
    )


def _fit(spec: dict[str, Any], record: dict[str, Any]) -> None:
    """Build the case from the configs, fit it, and fill ``record`` with what the recorder saw."""
    device, s = torch.device(spec["device"]), spec["inner_steps"]
    cfg = compose_case(spec)
    classes, size = int(cfg.dataset.num_classes), int(cfg.dataset.image_size)
    record.update(image_size=size, num_classes=classes, cutout=int(cfg.dataset.cutout))
    pl.seed_everything(SEED, workers=True, verbose=False)
    net = build(cfg, "model.net", num_classes=classes)
    datamodule_class = get_class(cfg.dataset.datamodule._target_)
    module = build(
        cfg, "module", net=torch.compile(net) if spec["compile"] else net,
        policy=build(cfg, "augment.policy"), hyper=build(cfg, "augment.hyper"), num_classes=classes,
        mean=datamodule_class.mean, std=datamodule_class.std,
    )  # fmt: skip
    record["parameters"] = sum(p.numel() for p in net.parameters())
    warmup, length = spec["warmup_cycles"] * s, (spec["warmup_cycles"] + spec["cycles"]) * s
    recorder = common.Recorder(device, reset_at=warmup)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[recorder], max_epochs=1, **common.QUIET_TRAINER, _convert_="object"
    )
    record["precision"] = trainer.precision
    data = common.SyntheticData(spec["batch"], length, size, classes, SEED, device)
    try:
        trainer.fit(module, datamodule=data)
    finally:
        record["batches_done"] = len(recorder.batches)
        record["setup_memory_mb"] = recorder.setup
    marks = [h for _, _, h in recorder.batches]
    expected = [module.learns_policy and i % s == s - 1 for i in range(length)]
    if marks != expected:
        raise RuntimeError(f"expected {length} batches, hyper steps at every s-th; got {marks}")
    timed = recorder.batches[warmup:]
    cycles = [timed[k + s - 1][1] - timed[k][0] for k in range(0, len(timed), s)]
    record.update(time_per_step_s=statistics.median(cycles) / s, cycle_s=cycles)
    record.update(recorder.timings(module, warmup))
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


def case_specs(form: str, settings: dict[str, Any], device: str, threads: int, work: Path) -> dict[str, Any]:
    """Every case of ``form`` by name, eager before compiled (a slow compile never holds up the rest)."""
    return {
        case_name(key, compiled, augment): {
            **{k: v for k, v in choice.items() if k != "stands_in_for"},
            "augment": augment,
            "compile": compiled,
            "device": device,
            "threads": threads,
            **{k: settings[k] for k in ("inner_steps", "warmup_cycles", "cycles")},
            "output_dir": str(work / "runs"),
        }
        for compiled in settings["compile"]
        for key, choice in MODELS[form].items()
        for augment in settings.get("augments", AUGMENTS)
        if not (compiled and augment in EAGER_ONLY)
    }


def ratios(cases: dict[str, dict[str, Any]], form: str) -> dict[str, dict[str, Any]]:
    """Per MADAO case (by its name: model, compile setting, mode): MADAO / RandAugment (of the same precision:
    :data:`BASELINES`) of each :data:`RATIO_KEYS` metric, or why not."""
    result: dict[str, dict[str, Any]] = {}
    for compiled, key, mode in itertools.product(FORMS[form]["compile"], MODELS[form], BASELINES):
        if (name := case_name(key, compiled, mode)) not in cases:
            continue
        base = cases[case_name(key, compiled, BASELINES[mode])]
        failed = [f"{row['augment']}: {row['error']}" for row in (base, cases[name]) if "error" in row]
        result[name] = (
            {"error": "; ".join(failed)}
            if failed
            else {ratio: cases[name][field] / base[field] for ratio, field in RATIO_KEYS.items()}
        )
    return result


def main(argv: list[str] | None = None) -> int:
    form_help = "full (the default on CUDA), quick (the default on CPU; also --quick) or scaling"
    flags = {**common.COST_FLAGS, "--form": {"choices": list(FORMS), "help": form_help}}
    args = common.cli(__doc__, argv, None, flags, run_case)
    if args is None:
        return 0
    device, cuda = args.device, args.device == "cuda"
    form = args.form or ("quick" if args.quick or not cuda else "full")
    live = form == "scaling" and not cuda  # fresh processes under the fixed mmap threshold
    settings = FORMS[form] | (CPU_SCALING if live else {})
    threads = torch.get_num_threads() if cuda else CPU_THREADS
    env = {"OMP_NUM_THREADS": str(threads), **(common.LIVE_MEMORY_ENV if live else {})}
    started, cases = time.perf_counter(), {}
    with common.work_dir(args.work_dir) as work:
        specs = case_specs(form, settings, device, threads, work)
        fork, timeout = not cuda and not live, settings["timeout_s"]
        for name, row in common.run_cases("benchmarks.bench_gpu", specs, work, env, 1, timeout, fork):
            cases[name] = row = {**{key: specs[name][key] for key in KEYS}, **row}
            shown = f"error: {row['error']}" if "error" in row else f"{row['time_per_step_s']:.4f} s/step"
            print(f"{name}: {shown}", flush=True)
    report = {
        "benchmark": "GPU cost of MADAO against RandAugment: time per step and memory through the Trainer",
        **common.stamp("benchmarks.bench_gpu", argv, device=device),  # after the cases: forks see no CUDA
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "form": form,
        "note": NOTES.get((form, device)),
        "bf16": BF16_NOTE,
        "bf16_detail": BF16_DETAIL,
        "settings": {
            **settings,
            "models": MODELS[form],
            "augments": AUGMENTS,
            "hyper": "augment.hyper's defaults (madao_pl.hyperstep.HyperStepConfig)",
            "timing": "median over whole cycles of s steps (the last one MADAO's hyper step) / s, after "
            "the warm-up cycles; synchronised at every batch boundary",
            "data": "synthetic, on the device: random images in [0, 1], random labels",
            "float32_matmul_precision": MATMUL_PRECISION,
            "threads": threads,
            "seed": SEED,
            "isolation": "a fork per case" if not cuda and not live else "a fresh process per case",
            "memory_env": common.LIVE_MEMORY_ENV if live else None,
        },
        "cases": cases,
        "ratios": ratios(cases, form),
        "wall_s": time.perf_counter() - started,
    }
    out = args.out or common.RESULTS / f"{'scaling' if form == 'scaling' else 'gpu'}.json"
    common.write_json(out, report)
    print(scaling_table(report) if form == "scaling" else gpu_table(report))
    print(f"wrote {out} in {report['wall_s']:.0f} s")
    return 0 if all("error" not in row for row in cases.values() if not row["compile"]) else 1


if __name__ == "__main__":
    sys.exit(main())
