"""GPU cost of MADAO against RandAugment: time per training step and CUDA memory of the shipped
``MADAOModule`` through a real ``pytorch_lightning.Trainer``, on synthetic data, side by side.

Why: the paper's cost claim (1.7x the time, 1.94x the GPU memory, DESIGN.md §8) is a GPU figure, and the
CPU figures of ``bench_cost`` do not carry over (kernel launches, cuDNN's double backward, the caching
allocator); ``torch.compile`` and bf16 are the first levers a GPU user reaches for.

What it measures, per model (WRN-28-2: the CIFAR-10 preset, batch 128, 32 px, 10 classes; ResNet-50: the
ImageNet preset at batch 64, 224 px, 1000 classes, torchvision's ``resnet50`` as ``model=resnet50`` builds
it), per compile setting (eager, and ``torch.compile`` of the network only) and per augmentation
(``augment=randaugment`` and ``augment=madao`` at s = ``augment.inner_steps`` = 30, the default hyper
settings): the time per training step, the median over whole cycles of s steps (s - 1 inner steps and,
for MADAO, the hyper step) after one untimed warm-up cycle, ``torch.cuda.synchronize()`` at every batch
boundary; ``torch.cuda.max_memory_allocated`` over the timed cycles (peak statistics reset after the
warm-up) and the memory allocated at ``on_train_start`` (network, policy and the synthetic batches;
no optimiser state yet), so that the peak above set-up can be given; and MADAO / RandAugment of all three
per model and compile setting. A case that fails (``torch.compile`` through the hyper step's double
backward, out of memory, a timeout) keeps its error string in the JSON and the others go on. bf16 autocast
is not measured: neither ``MADAOModule`` nor ``hyper_step`` has a mixed-precision path (the JSON says so).

Each case is built as ``python -m madao_pl.run`` builds it: the real Hydra configs composed
(``dataset=cifar10|imagenet model=... augment=...``), the network, policy, hyper settings and module
instantiated from them, the trainer from ``trainer=gpu|cpu``, logger, checkpoints, progress bar and
validation off. The batches (random images in [0, 1], random labels) already lie on the device: the
figures are the module's, not the loader's or the host-to-device copy's, which are the same for both
policies. Each case runs in a process of its own, so its peak memory, CUDA caching allocator and dynamo
state are its own (inductor's on-disk cache is shared: the second compiled case of a model may reuse the
first's kernels): on CUDA a fresh ``python -m benchmarks.bench_gpu --run-case`` process (CUDA is never
forked), on CPU a fork of this one (no CUDA to fork, and the child's resident-set high-water mark starts
afresh, while importing Lightning again would take longer than the case; one torch thread, see
:data:`CPU_THREADS`).

Run: ``python -m benchmarks.bench_gpu --out benchmarks/results/gpu.json`` on a CUDA machine, a few minutes
(the compiled cases take most of it). Without CUDA (or ``--device cpu``, or ``--quick``) it runs the
reduced form: WRN-28-2 at batch 8 and the small CNN (``model=cnn``) in ResNet-50's place, both at 32 px,
two timed cycles of s = 3, no compile, peak RSS instead of CUDA memory, the same JSON shape with a note
that the GPU figures await a CUDA machine (``python -m benchmarks.bench_gpu --device cpu --quick --out
outputs/bench/gpu_cpu.json``, under a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from benchmarks.common import QUIET_TRAINER, ROOT, stamp, write_json
from madao_pl.module import MADAOModule
from madao_pl.run import build

AUGMENTS = ("randaugment", "madao")
"""The two policies compared; the ratios are the second over the first."""
MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "wrn28_2": {"dataset": "cifar10", "model": "wrn28_2", "batch": 128},
        "resnet50": {"dataset": "imagenet", "model": "resnet50", "batch": 64},
    },
    "quick": {
        "wrn28_2": {"dataset": "cifar10", "model": "wrn28_2", "batch": 8},
        "cnn": {"dataset": "cifar10", "model": "cnn", "batch": 8, "stands_in_for": "resnet50"},
    },
}
"""Per form, model key -> the config choices (``dataset=``, ``model=``) and the batch; image size, classes
and Cutout come from the data set's preset."""
FORMS = {
    "full": {"inner_steps": 30, "warmup_cycles": 1, "cycles": 3, "compile": [False, True]},
    "quick": {"inner_steps": 3, "warmup_cycles": 1, "cycles": 2, "compile": [False]},
}
SEED, HELD_OUT_BATCHES, TRAIN_BATCHES, CASE_TIMEOUT_S = 0, 2, 4, 240
CPU_THREADS = 1
"""Torch threads of a CPU case, as in bench_cost; also the only count a forked child may use once its parent
has run OpenMP threads (with more, libgomp deadlocks in the child)."""
MATMUL_PRECISION = "high"  # what madao_pl.run sets: TF32 matrix products on GPUs that have them
BF16 = "not supported by the hyper step (float32 only)"
BF16_DETAIL = (
    "madao_pl has no mixed-precision path: trainer.precision is 32-true and neither MADAOModule nor "
    "hyper_step uses autocast; the Neumann series' correction (alpha |Hv| / |v| ~ 1e-3) is below bf16's "
    "resolution (~4e-3), so no bf16 case is measured"
)
CPU_NOTE = (
    "CPU reduced form (tiny sizes, s = 3, no compile, peak RSS instead of CUDA memory): it checks that the "
    "benchmark runs; the GPU figures await a CUDA machine (python -m benchmarks.bench_gpu --out "
    "benchmarks/results/gpu.json)"
)
RATIO_KEYS = {
    "time_per_step": "time_per_step_s",
    "peak": "peak_mb",
    "peak_above_setup": "peak_above_setup_mb",
}
"""Ratio name -> the case key it divides (MADAO's over RandAugment's)."""


def case_name(model: str, compiled: bool, augment: str) -> str:
    return f"{model}/{'compiled' if compiled else 'eager'}/{augment}"


class SyntheticData(pl.LightningDataModule):
    """Seeded random images in [0, 1] and labels, on ``device``: ``length`` training batches cycling through
    :data:`TRAIN_BATCHES` distinct ones, and :data:`HELD_OUT_BATCHES` held-out ones for
    ``hyper_dataloader``; whole batches (nothing to collate)."""

    def __init__(self, batch: int, size: int, classes: int, length: int, device: torch.device) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(SEED)
        count = TRAIN_BATCHES + HELD_OUT_BATCHES
        images = torch.rand(count, batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(0, classes, (count, batch), generator=g).to(device)
        batches = list(zip(images, labels, strict=True))
        self.train = [batches[i % TRAIN_BATCHES] for i in range(length)]
        self.hyper = batches[TRAIN_BATCHES:]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def hyper_dataloader(self) -> DataLoader:
        return DataLoader(self.hyper, batch_size=None)


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


class Recorder(pl.Callback):
    """Times every batch as ``(start, end, hyper step?)`` between synchronisations; reads the memory after
    set-up and, on CUDA, resets the peak statistics at the first timed batch."""

    def __init__(self, device: torch.device, warmup_batches: int) -> None:
        self.device, self.warmup_batches = device, warmup_batches
        self.batches: list[tuple[float, float, bool]] = []
        self.setup_mb = self.before_timed_mb = 0.0
        self._start, self._before = 0.0, 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _memory_mb(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else _rss_mb()

    def on_train_start(self, trainer: pl.Trainer, module: MADAOModule) -> None:
        self._sync()
        self.setup_mb = self._memory_mb()

    def on_train_batch_start(self, trainer: pl.Trainer, module: MADAOModule, batch: Any, index: int) -> None:
        self._sync()
        if index == self.warmup_batches:
            self.before_timed_mb = self._memory_mb()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        self._before = int(module.hyper_steps)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: MADAOModule, *args: Any) -> None:
        self._sync()
        self.batches.append((self._start, time.perf_counter(), int(module.hyper_steps) > self._before))


def compose_case(spec: dict[str, Any]) -> DictConfig:
    """The real config tree with the case's choices: data set preset, model, augmentation at s, no
    warm-up epochs (no callbacks run: every cycle ends in a hyper step), the trainer for the device."""
    overrides = [
        f"dataset={spec['dataset']}",
        f"model={spec['model']}",
        f"augment={spec['augment']}",
        f"augment.inner_steps={spec['inner_steps']}",
        "augment.warmup_epochs=0",
        f"dataset.datamodule.batch_size={spec['batch']}",
        f"trainer={'gpu' if spec['device'] == 'cuda' else 'cpu'}",
        f"paths.output_dir={spec['output_dir']}",
    ]
    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    with initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        return compose("config", overrides=overrides)


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
    recorder = Recorder(device, warmup)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[recorder], max_epochs=1, **QUIET_TRAINER, _convert_="object"
    )
    data = SyntheticData(spec["batch"], size, classes, length, device)
    try:
        trainer.fit(module, datamodule=data)
    finally:
        record["batches_done"] = len(recorder.batches)
        record["setup_memory_mb"] = recorder.setup_mb
    marks = [h for _, _, h in recorder.batches]
    expected = [module.learns_policy and i % s == s - 1 for i in range(length)]
    if marks != expected:
        raise RuntimeError(f"expected {length} batches, hyper steps at every s-th; got {marks}")
    timed = recorder.batches[warmup:]
    cycles = [timed[k + s - 1][1] - timed[k][0] for k in range(0, len(timed), s)]
    record.update(
        time_per_step_s=statistics.median(cycles) / s,
        cycle_s=cycles,
        inner_step_s_median=statistics.median(end - start for start, end, h in timed if not h),
        hyper_step_s=[end - start for start, end, h in timed if h],
        hyper_steps=int(module.hyper_steps),
        total_hvps=int(module.total_hvps),
    )
    if device.type == "cuda":
        record["before_timed_memory_mb"] = recorder.before_timed_mb
        record["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        record["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        record["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    record["peak_above_setup_mb"] = record["peak_mb"] - record["setup_memory_mb"]


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process: fit one case (the keys of :func:`case_specs`); its record, or its error string."""
    torch.set_num_threads(spec["threads"])
    torch.set_float32_matmul_precision(MATMUL_PRECISION)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(many workers|val_dataloader|LeafSpec|log_every_n_steps).*")
    device = torch.device(spec["device"])
    record: dict[str, Any] = {key: spec[key] for key in ("model", "dataset", "augment", "compile", "batch")}
    record["inner_steps"] = spec["inner_steps"]
    record["memory_measure"] = (
        "torch.cuda.max_memory_allocated over the timed cycles"
        if device.type == "cuda"
        else "peak RSS (ru_maxrss) of the case's process, warm-up included"
    )
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
    try:
        _fit(spec, record)
    except Exception as error:  # a failed case is a result: keep its message, the others go on
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        record["traceback_tail"] = traceback.format_exc()[-3000:]
    return record


def _child(spec: dict[str, Any], out: str) -> None:
    write_json(Path(out), run_case(spec))


def launch(spec: dict[str, Any], out: Path, log: Path) -> dict[str, Any]:
    """Run one case in a process of its own (see the module doc) and read its record; a process that dies
    or runs past :data:`CASE_TIMEOUT_S` gives a record with the error."""
    failure = None
    if spec["device"] == "cuda":
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_gpu",
            "--run-case",
            json.dumps(spec),
            "--out",
            str(out),
        ]
        with open(log, "w") as stream:
            try:
                status = subprocess.run(
                    command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, timeout=CASE_TIMEOUT_S
                ).returncode
            except subprocess.TimeoutExpired:
                status, failure = None, f"timed out after {CASE_TIMEOUT_S} s"
    else:
        process = multiprocessing.get_context("fork").Process(target=_child, args=(spec, str(out)))
        process.start()
        process.join(CASE_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
            failure = f"timed out after {CASE_TIMEOUT_S} s"
        status = process.exitcode
    if failure is None and status == 0 and out.is_file():
        return json.loads(out.read_text())
    tail = log.read_text()[-2000:] if log.is_file() else ""
    failure = failure or f"the case's process exited with status {status}"
    return {key: spec[key] for key in ("model", "dataset", "augment", "compile", "batch")} | {
        "error": failure,
        "traceback_tail": tail,
    }


def case_specs(form: str, device: str, threads: int, work: Path) -> dict[str, dict[str, Any]]:
    """Every case of ``form`` by name, eager before compiled (a slow compile never holds up the rest)."""
    settings = FORMS[form]
    return {
        case_name(key, compiled, augment): {
            **{k: v for k, v in choice.items() if k != "stands_in_for"},
            "augment": augment,
            "compile": compiled,
            "device": device,
            "threads": threads,
            "inner_steps": settings["inner_steps"],
            "warmup_cycles": settings["warmup_cycles"],
            "cycles": settings["cycles"],
            "output_dir": str(work / "runs"),
        }
        for compiled in settings["compile"]
        for key, choice in MODELS[form].items()
        for augment in AUGMENTS
    }


def ratios(cases: dict[str, dict[str, Any]], form: str) -> dict[str, dict[str, Any]]:
    """Per model and compile setting: MADAO / RandAugment of each :data:`RATIO_KEYS` metric, or why not."""
    result: dict[str, dict[str, Any]] = {}
    for compiled in FORMS[form]["compile"]:
        for key in MODELS[form]:
            pair = [cases[case_name(key, compiled, augment)] for augment in AUGMENTS]
            failed = [f"{row['augment']}: {row['error']}" for row in pair if "error" in row]
            name = f"{key}/{'compiled' if compiled else 'eager'}"
            if failed:
                result[name] = {"error": "; ".join(failed)}
                continue
            base, madao = pair
            result[name] = {ratio: madao[field] / base[field] for ratio, field in RATIO_KEYS.items()}
    return result


def table(report: dict[str, Any]) -> str:
    """The cases and the ratios as Markdown, for the console."""
    unit = "CUDA MiB" if report["device"] == "cuda" else "RSS MiB"
    lines = [
        f"| case | s / step | hyper step s | set-up {unit} | peak {unit} | above set-up |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["cases"].items():
        if "error" in row:
            lines.append(f"| `{name}` | error: {row['error'][:80]} | | | | |")
            continue
        hyper = ", ".join(f"{t:.3f}" for t in row["hyper_step_s"]) or "—"
        lines.append(
            f"| `{name}` | {row['time_per_step_s']:.4f} | {hyper} | {row['setup_memory_mb']:.0f} | "
            f"{row['peak_mb']:.0f} | {row['peak_above_setup_mb']:.0f} |"
        )
    lines += ["", "| MADAO / RandAugment | time per step | peak | peak above set-up |", "|---|---|---|---|"]
    for name, row in report["ratios"].items():
        if "error" in row:
            lines.append(f"| `{name}` | error | | |")
        else:
            values = " | ".join(f"{row[ratio]:.2f}" for ratio in RATIO_KEYS)
            lines.append(f"| `{name}` | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--quick", action="store_true", help="the reduced form (always on CPU)")
    parser.add_argument("--work-dir", type=Path, help="keep each case's JSON and log here (default: temp)")
    parser.add_argument("--run-case", type=json.loads, help="internal: run one case (a JSON spec) here")
    args = parser.parse_args(argv)
    if args.run_case:
        write_json(args.out, run_case(args.run_case))
        return 0
    device = args.device or ("cuda" if torch.cuda.device_count() > 0 else "cpu")  # NVML: CUDA stays unforked
    form = "quick" if args.quick or device == "cpu" else "full"
    threads = torch.get_num_threads() if device == "cuda" else CPU_THREADS
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cases = {}
        for name, spec in case_specs(form, device, threads, work).items():
            stem = work / name.replace("/", "_")
            cases[name] = row = launch(spec, stem.with_suffix(".json"), stem.with_suffix(".log"))
            shown = f"error: {row['error']}" if "error" in row else f"{row['time_per_step_s']:.4f} s/step"
            print(f"{name}: {shown}", flush=True)
    cuda = device == "cuda"
    report = {
        "benchmark": "GPU cost of MADAO against RandAugment: time per step and memory through the Trainer",
        **stamp("benchmarks.bench_gpu", argv, device=device),  # after the cases: the CPU forks see no CUDA
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "form": form,
        "note": None if form == "full" else CPU_NOTE if not cuda else "reduced form (tiny sizes) on CUDA",
        "bf16": BF16,
        "bf16_detail": BF16_DETAIL,
        "settings": {
            **FORMS[form],
            "models": MODELS[form],
            "augments": list(AUGMENTS),
            "hyper": "augment.hyper's defaults (madao_pl.hyperstep.HyperStepConfig)",
            "timing": "median over whole cycles of s steps (the last one MADAO's hyper step) / s, after "
            "the warm-up cycles; synchronised at every batch boundary",
            "data": "synthetic, on the device: random images in [0, 1], random labels",
            "float32_matmul_precision": MATMUL_PRECISION,
            "threads": threads,
            "seed": SEED,
            "isolation": "a fresh process per case" if cuda else "a fork per case",
        },
        "cases": cases,
        "ratios": ratios(cases, form),
        "wall_s": time.perf_counter() - started,
    }
    write_json(args.out, report)
    print(table(report))
    print(f"wrote {args.out} in {report['wall_s']:.0f} s")
    return 0 if all("error" not in row for row in cases.values() if not row["compile"]) else 1


if __name__ == "__main__":
    sys.exit(main())
