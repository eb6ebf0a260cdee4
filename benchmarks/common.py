"""What the benchmarks share: where results go, the provenance block every result file starts with, the
command line, the real config tree, launchers for processes that run side by side (one case per process),
and what the cost benchmark (``bench_cost``) fits: synthetic data and a callback that times
and measures it."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import multiprocessing.context
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUIET_TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
QUIET_TRAINER |= {"enable_model_summary": False, "limit_val_batches": 0}
"""``pytorch_lightning.Trainer`` arguments of a benchmark fit: no logger, checkpoints, bars, validation."""
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""A fixed glibc mmap threshold: freed tensors leave the resident set at once, so the RSS follows the live
tensors (a process's environment: it must be set before the process starts)."""
COST_FLAGS: dict[str, dict[str, Any]] = {
    "--device": {"choices": ("cpu", "cuda"), "help": "default: cuda if available, else cpu"},
    "--work-dir": {"type": Path, "help": "keep each case's JSON and log here (default: temp)"},
}
"""The cost benchmark's flags besides ``--out``, ``--form`` and ``--run-case`` (:func:`cli`)."""


def stamp(module: str, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Date (UTC), the command that ran (``python -m <module> <argv>``, default ``sys.argv[1:]``) and the
    machine it ran on, ``extra`` added."""
    info = Path("/proc/cpuinfo")
    cpus = re.findall(r"^model name\s*:\s*(.+)$", info.read_text() if info.is_file() else "", re.MULTILINE)
    machine = {
        "cpu": cpus[0].strip() if cpus else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0],
        **extra,
    }
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (parents created), indented, ending in a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def split_overrides(argv: list[str] | None) -> tuple[list[str], list[str], list[str]]:
    """``argv`` (default ``sys.argv[1:]``), and it cut at ``--``: the script's own arguments, and the Hydra
    overrides after it."""
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv, argv[:cut], argv[cut + 1 :]


def cli(
    doc: str,
    argv: list[str] | None,
    out: Path | None,
    flags: dict[str, dict[str, Any]],
    run_case: Callable[[Any], dict[str, Any]] | None = None,
) -> argparse.Namespace | None:
    """A benchmark's command line: ``--out`` (default ``out``), ``flags`` (flag -> ``add_argument``'s
    keywords; ``--device`` defaults to cuda if there is one, asked of NVML so that no CUDA context is
    forked) and, with ``run_case``, ``--run-case SPEC`` (JSON): None once that case has run into ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=out, help="the result file")
    if run_case:
        parser.add_argument("--run-case", type=json.loads, help="internal: run one case (a JSON spec) here")
    for flag, options in flags.items():
        parser.add_argument(flag, **options)
    args = parser.parse_args(argv)
    if run_case and args.run_case:
        write_json(args.out, run_case(args.run_case))
        return None
    if "--device" in flags:
        args.device = args.device or ("cuda" if torch.cuda.device_count() > 0 else "cpu")
    return args


def compose(overrides: list[str]) -> DictConfig:
    """madao_pl's real config tree with ``overrides``, as ``python -m madao_pl.run`` composes it."""
    if GlobalHydra.instance().is_initialized():
        return hydra.compose("config", overrides=overrides)
    with hydra.initialize_config_module(version_base="1.3", config_module="madao_pl.conf"):
        return hydra.compose("config", overrides=overrides)


def quiet(threads: int) -> None:
    """Set up a case's process: ``threads`` torch threads, Lightning's info and the loader warnings silent."""
    torch.set_num_threads(threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(many workers|val_dataloader|LeafSpec|log_every_n_steps).*")


def _at_most(processes: Iterable[Any], width: int, timeout: float | None = None) -> Iterator[int | None]:
    """Take the (lazily started) ``processes``, at most ``width`` running; yield each exit status in order,
    None for one killed after waiting ``timeout`` seconds for it."""

    def finish(process: Any) -> int | None:
        try:
            return process.wait() if timeout is None else process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return None

    running = []
    for process in processes:
        running.append(process)
        if len(running) == width:
            yield finish(running.pop(0))
    for process in running:
        yield finish(process)


class _Fork(multiprocessing.context.ForkProcess):
    """A fork of this process running ``<module>.run_case(spec)`` into ``out``, its output into ``log``
    (``args``: the four), with the ``wait`` of ``subprocess.Popen`` (and ``kill``) for :func:`_at_most`."""

    def run(self) -> None:
        module, spec, out, log = self._args  # type: ignore[attr-defined]
        with open(log, "w") as stream:
            os.dup2(stream.fileno(), 1)
            os.dup2(stream.fileno(), 2)
            write_json(out, importlib.import_module(module).run_case(spec))

    def wait(self, timeout: float | None = None) -> int:
        self.join(timeout)
        if self.exitcode is None:
            raise subprocess.TimeoutExpired("fork", timeout or 0)
        return self.exitcode


def run_cases(
    module: str,
    specs: dict[str, Any],
    work: Path,
    env: dict[str, str] | None = None,
    width: int = 1,
    timeout: float | None = None,
    fork: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each case of ``specs`` (name -> JSON spec) in a process of its own, at most ``width`` at a time:
    ``python -m <module> --run-case SPEC --out work/<name>.json`` with ``env`` added to this environment, or
    (``fork``, ``env`` unused) a fork of this process calling ``<module>.run_case`` (its ``ru_maxrss`` starts
    afresh, and no second import of Lightning: on a small case it takes longer than the case). Output in
    ``work/<name>.log``. Yields each name and record, in order; a case that exits non-zero or runs past
    ``timeout`` seconds: ``{"error": ..., "traceback_tail": its log's end}``."""
    stems = {name: work / name.replace("/", "_") for name in specs}

    def start(name: str) -> Any:
        out, log = stems[name].with_suffix(".json"), stems[name].with_suffix(".log")
        if fork:
            (process := _Fork(args=(module, specs[name], out, log))).start()
            return process
        command = [sys.executable, "-m", module, "--out", str(out), "--run-case", json.dumps(specs[name])]
        with open(log, "w") as stream:
            environ = {**os.environ, **(env or {})}
            return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=stream, stderr=subprocess.STDOUT)

    for (name, stem), status in zip(stems.items(), _at_most(map(start, specs), width, timeout), strict=True):
        if status == 0 and stem.with_suffix(".json").is_file():
            yield name, json.loads(stem.with_suffix(".json").read_text())
            continue
        log = stem.with_suffix(".log")
        error = f"timed out after {timeout} s" if status is None else f"exit status {status}"
        yield name, {"error": error, "traceback_tail": log.read_text()[-3000:] if log.is_file() else ""}


@contextlib.contextmanager
def work_dir(path: Path | None) -> Iterator[Path]:
    """``path`` (created), or a temporary directory for as long as the ``with`` lasts."""
    with tempfile.TemporaryDirectory() as tmp:
        (work := path or Path(tmp)).mkdir(parents=True, exist_ok=True)
        yield work


class SyntheticData(pl.LightningDataModule):
    """Seeded random images in [0, 1] and labels, on ``device``: ``length`` training batches cycling through
    4 distinct ones, and 2 held-out ones for ``hyper_dataloader``; whole batches (nothing to collate: the
    figures are the module's, not the loader's or the host-to-device copy's)."""

    def __init__(
        self, batch: int, length: int, size: int = 32, classes: int = 10, seed: int = 0, device: Any = "cpu"
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(6, batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(0, classes, (6, batch), generator=g).to(device)
        batches = list(zip(images, labels, strict=True))
        self.train, self.hyper = [batches[i % 4] for i in range(length)], batches[4:]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=None)

    def hyper_dataloader(self) -> DataLoader:
        return DataLoader(self.hyper, batch_size=None)


def rss_mb() -> float:
    """This process's resident set now (Linux: ``/proc/self/statm``, field 1 in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


class Recorder(pl.Callback):
    """Times every batch as ``(start, end, hyper step?)`` between synchronisations. Reads the memory at
    ``on_train_start`` (``setup``: CUDA's allocated memory on a GPU, else the RSS; CUDA's peak
    statistics reset) and again before batch ``reset_at`` (``before_timed``, CUDA's peak reset). At batch
    ``first_hyper`` it fingerprints the weights, keeps the policy's first gradient and (``profile``) the
    hyper step's ``madao/`` ``torch.profiler`` ranges."""

    def __init__(
        self,
        device: torch.device,
        reset_at: int | None = None,
        first_hyper: int | None = None,
        profile: bool = False,
    ) -> None:
        self.device, self.reset_at, self.first_hyper, self.profile = device, reset_at, first_hyper, profile
        self.batches: list[tuple[float, float, bool]] = []
        self.sections: dict[str, dict[str, float]] = {}
        self.setup = self.before_timed = self._start = 0.0
        self.hypergrad: list[float] | None = None
        self.fingerprint: float | None = None
        self._profiler: profile | None = None
        self._before = 0

    def timings(self, module: Any, start: int) -> dict[str, Any]:
        """From batch ``start`` on: the median inner step and every hyper step (seconds); the module's hyper
        steps and Hessian-vector products."""
        timed = [(end - begin, hyper) for begin, end, hyper in self.batches[start:]]
        return {
            "inner_step_s_median": statistics.median(t for t, hyper in timed if not hyper),
            "hyper_step_s": [t for t, hyper in timed if hyper],
            "hyper_steps": int(module.hyper_steps),
            "total_hvps": int(module.total_hvps),
        }

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _memory(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else rss_mb()

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self._sync()
        self.setup = self._memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, index: int) -> None:
        self._sync()
        self._before = int(module.hyper_steps)
        if index == self.reset_at:
            self.before_timed = self._memory()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        if index == self.first_hyper:
            self.fingerprint = float(sum(p.detach().double().sum() for p in module.parameters()))
            if self.profile:
                cuda = [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
                self._profiler = profile(activities=[ProfilerActivity.CPU, *cuda])
                self._profiler.start()
            self._sync()
        self._start = time.perf_counter()

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: Any, optimizer: Any) -> None:
        if self.first_hyper is None or self.hypergrad is not None:
            return
        policy = {id(p) for p in module.policy.parameters()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if params and all(id(p) in policy for p in params):
            self.hypergrad = torch.cat([p.grad.detach().double().reshape(-1) for p in params]).tolist()

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        self._sync()
        self.batches.append((self._start, time.perf_counter(), int(module.hyper_steps) > self._before))
        if self._profiler is not None:
            self._profiler.stop()
            for event in self._profiler.key_averages():
                if event.key.startswith("madao/"):
                    row = {"seconds": event.cpu_time_total / 1e6, "count": event.count}
                    if getattr(event, "device_time_total", 0):
                        row["device_seconds"] = event.device_time_total / 1e6
                    self.sections[event.key] = row
            self._profiler = None
