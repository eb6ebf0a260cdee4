"""Cost of MADAO against RandAugment and no augmentation: time per training step and peak memory.

Setting (DESIGN.md §9, issues #6 and #7): WRN-28-2 (``madao_pl.models.WideResNet(28, 2, 10)``) on synthetic
32x32 images in [0, 1], batch 128 (train and hyper-validation), Cutout 16 after every policy (the CIFAR
preset), SGD (lr 0.1, momentum 0.9, weight decay 5e-4) for the network, RMSprop (lr 1e-2) for the policy;
MADAO with K = 2 stages, J = 5, alpha = 1e-3. Methods:

- ``baseline``: :class:`IdentityPolicy` (crop/flip/Cutout only), an ordinary training step;
- ``randaugment``: :class:`RandAugmentPolicy` (N = 2, magnitude 0.5) on the same op table;
- ``madao_inner``: a MADAO inner step (policy under ``no_grad``, hard draws);
- ``plain``: the MADAO hyper step with ``neumann_tol = 0, hyper_chunks = 1`` (the full series, one graph);
- ``fast``: the MADAO hyper step with the recommended settings (``--tol``, ``--chunks``, ``--recompute``;
  defaults ``neumann_tol = 1e-4``, ``hyper_chunks = 1``, ``hyper_recompute = false``);
- ``fast_keep_graph`` / ``fast_recompute`` with ``--compare-recompute`` (default on, off for ``--quick``):
  ``fast`` with the other ``hyper_recompute`` setting;
- ``fast_chunksC`` for every extra ``--extra-chunks C`` (default 4, none for ``--quick``): ``fast`` with
  ``hyper_chunks = C`` (memory-bounded; per-chunk BatchNorm statistics in the second-order terms, see
  ``madao_pl.hyperstep``).

Each hyper step includes its optimiser steps (policy RMSprop step, network SGD step with ``df/dtheta``).

Time. One process, cases interleaved: each round runs ``--inner-steps`` steps of every inner case and one
hyper step of each hyper case, in an order rotated from round to round; one untimed warm-up round comes
first. The plain and fast hyper steps of a round start from the same network, optimiser and policy state
with the same random draws (the state is restored between them, outside the timing), so their hypergradients
are compared directly. MADAO's time per training step amortised over a full cycle of ``s`` steps is
``((s - 1) * t_inner + t_hyper) / s`` with ``t_inner`` and ``t_hyper`` measured in the same round: the
amortisation is arithmetic on measured step times, so s = 10, 30 and 50 come from the same measurements.
Ratios are per round (MADAO over RandAugment of that round), then min / median / max over rounds.

Memory. Each method runs in a fresh subprocess (``--probe``): build model, data and optimisers, read the
resident set size (RSS), run one cycle (inner methods: two steps; MADAO: one inner step and one hyper step)
and read the process's peak RSS (``ru_maxrss``). Reported: total peak RSS and peak minus the RSS after
setup; on CUDA also ``torch.cuda.max_memory_allocated`` (and the allocation after setup). Ratios pair
repetition i of MADAO with repetition i of RandAugment. RSS counts what glibc's allocator keeps after
tensors are freed, as any training process would; with ``--live-memory`` (default on, off for ``--quick``)
every probe runs a second time with glibc's mmap threshold fixed at 128 KiB (:data:`LIVE_MEMORY_ENV`), so
that the peak RSS follows the live tensors and the ratios separate the method from allocator caching
(reported under ``memory_mb_live`` and as ``*_live`` ratios; CPU only).

Output layout (``--out``, JSON)::

    machine        cpu, cores, torch threads, torch version, device name, load averages, date, command
    settings       everything above, rounds, repetitions, s values, whether --quick
    time_s         per case: {"s_min", "s_median", "s_max", "samples"}: seconds per step (hyper cases:
                   per hyper step, optimiser steps included)
    memory_mb      per method: {"peak_rss", "setup_rss", "peak_above_setup"} lists over repetitions
                   (+ "cuda_peak_allocated", "cuda_setup_allocated" on CUDA)
    s10, s30, s50  per MADAO variant ("plain", "fast", ...):
                     time_ratio_{min,median,max}              amortised MADAO step / RandAugment step
                     time_ratio_vs_baseline_{min,median,max}  amortised MADAO step / baseline step
                     amortised_step_s_median                  seconds
                     total_peak_memory_ratio_{min,median,max}        peak RSS, MADAO / RandAugment
                     above_setup_peak_memory_ratio_{min,median,max}  (peak - setup RSS), MADAO / RandAugment
                     cuda_peak_memory_ratio_{min,median,max}         (CUDA only)
                     *_memory_ratio_*_live                            (with --live-memory)
                   (memory ratios do not depend on s: the peak of a cycle is the hyper step's)
                   and "randaugment_over_baseline_time_ratio_median"
    hyper_step_breakdown_s   per variant: median seconds per section (augmented_forward, train_gradient,
                   validation_gradient, hvp_1.., inverse_hvp_overhead, mixed_derivative, optimiser_steps,
                   restore_buffers) and "total"
    hvps_per_hyper_step      per variant: list over rounds
    hypergrad_vs_plain       per variant: rel_diff and cosine lists over rounds (same state, same draws),
                   rel_diff_max, cosine_min, network_grad_rel_diff_max
    targets        the issue's targets at s = 30 and whether the measured medians meet them

Run: ``python -m benchmarks.bench_cost --out benchmarks/results/cost.json [--quick] [--device cpu|cuda]``.
Full (``make bench``): 3 rounds of 3 inner steps, the plain hyper step in the first 2 rounds, 3 memory
repetitions with and without the live-memory setting, every variant. ``--quick`` (for ``make bench-quick``):
3 rounds of 2 inner steps, the plain hyper step in the first round only, one memory repetition, no
live-memory probes, only the plain and fast variants. Memory probes run two at a time on a CPU with 2+ cores.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from madao_pl.augment import IdentityPolicy, MADAOPolicy, Policy, RandAugmentPolicy, cutout
from madao_pl.hyperstep import HyperStepConfig, HyperStepResult, hyper_step
from madao_pl.models import WideResNet

ROOT = Path(__file__).resolve().parents[1]
S_VALUES = (10, 30, 50)
BATCH = 128
SIZE = 32
CUTOUT = 16
NEUMANN_STEPS = 5
NEUMANN_ALPHA = 1e-3
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
TARGETS = {"time_ratio_median": 1.3, "total_peak_memory_ratio_median": 1.5, "hypergrad_rel_diff_max": 1e-3}
INNER_CASES = ("baseline", "randaugment", "madao_inner")


@dataclass
class Run:
    """Everything one measurement needs: network, policies, optimisers, data, device."""

    device: torch.device
    net: torch.nn.Module
    policies: dict[str, Policy]
    net_opt: torch.optim.Optimizer
    policy_opt: torch.optim.Optimizer
    batches: list[tuple[Tensor, Tensor]]
    val: tuple[Tensor, Tensor]
    mean: Tensor
    std: Tensor
    step: int = 0

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def next_batch(self) -> tuple[Tensor, Tensor]:
        self.step += 1
        return self.batches[self.step % len(self.batches)]


def build(device: torch.device, seed: int, depth: int = 28, width: int = 2, batch: int = BATCH) -> Run:
    """WRN-``depth``-``width`` (default WRN-28-2), the three policies, their optimisers and a few synthetic
    batches of ``batch`` images on ``device``."""
    torch.manual_seed(seed)
    net = WideResNet(depth, width, 10).to(device).train()
    madao = MADAOPolicy(num_stages=2).to(device)
    madao.generator = torch.Generator(device=device).manual_seed(seed + 1)
    policies = {"baseline": IdentityPolicy(), "randaugment": RandAugmentPolicy(2, 0.5), "madao_inner": madao}
    g = torch.Generator().manual_seed(seed + 2)
    batches = [
        (
            torch.rand(batch, 3, SIZE, SIZE, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
        )
        for _ in range(3)
    ]
    val = (
        torch.rand(batch, 3, SIZE, SIZE, generator=g).to(device),
        torch.randint(0, 10, (batch,), generator=g).to(device),
    )
    return Run(
        device=device,
        net=net,
        policies=policies,
        net_opt=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
        policy_opt=torch.optim.RMSprop(madao.parameters(), lr=1e-2),
        batches=batches,
        val=val,
        mean=torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1),
        std=torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inner_step(run: Run, case: str) -> float:
    """One ordinary training step with ``case``'s policy (no graph to the policy); seconds."""
    images, labels = run.next_batch()
    sync(run.device)
    start = time.perf_counter()
    with torch.no_grad():
        augmented = cutout(run.policies[case](images), CUTOUT)
    loss = F.cross_entropy(run.net(run.normalize(augmented)), labels)
    run.net_opt.zero_grad(set_to_none=True)
    loss.backward()
    run.net_opt.step()
    sync(run.device)
    return time.perf_counter() - start


def hyper(run: Run, tol: float, chunks: int, recompute: bool, seed: int) -> tuple[HyperStepResult, float]:
    """One MADAO hyper step with its optimiser steps, draws seeded by ``seed``; (result, seconds).

    The hyper step no longer has chunks (issue 11): ``chunks`` must be 1. Its per-section breakdown now
    comes from torch.profiler ranges; this copy of the step records only the optimiser steps.
    """
    if chunks != 1:
        raise ValueError(f"chunks={chunks}: the chunked hyper step was removed (issue 11); use 1")
    images, labels = run.next_batch()
    policy = run.policies["madao_inner"]
    generator = torch.Generator(device=run.device).manual_seed(seed)
    torch.manual_seed(seed)
    sync(run.device)
    start = time.perf_counter()
    result = hyper_step(
        run.net,
        policy,
        (images, labels),
        tuple(run.val),
        normalize=run.normalize,
        cutout_size=CUTOUT,
        config=HyperStepConfig(
            neumann_alpha=NEUMANN_ALPHA, neumann_steps=NEUMANN_STEPS, neumann_tol=tol, recompute=recompute
        ),
        generator=generator,
    )
    optimiser_start = time.perf_counter()
    run.policy_opt.zero_grad(set_to_none=True)
    for p, g in zip([p for p in policy.parameters() if p.requires_grad], result.hypergrad, strict=True):
        p.grad = g
    run.policy_opt.step()
    run.net_opt.zero_grad(set_to_none=True)
    for p, g in zip([p for p in run.net.parameters() if p.requires_grad], result.network_grads, strict=True):
        p.grad = g
    run.net_opt.step()
    sync(run.device)
    elapsed = time.perf_counter() - start
    run.timings = {"optimiser_steps": time.perf_counter() - optimiser_start}
    return result, elapsed


def snapshot(run: Run) -> dict[str, Any]:
    """Network (parameters and buffers), policy and both optimisers' states, to replay a hyper step."""
    return copy.deepcopy(
        {
            "net": run.net.state_dict(),
            "policy": run.policies["madao_inner"].state_dict(),
            "net_opt": run.net_opt.state_dict(),
            "policy_opt": run.policy_opt.state_dict(),
            "step": run.step,
        }
    )


def restore(run: Run, state: dict[str, Any]) -> None:
    run.net.load_state_dict(state["net"])
    run.policies["madao_inner"].load_state_dict(state["policy"])
    run.net_opt.load_state_dict(copy.deepcopy(state["net_opt"]))
    run.policy_opt.load_state_dict(copy.deepcopy(state["policy_opt"]))
    run.step = state["step"]


def _flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


def compare(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[float, float]:
    """Relative difference |a - b| / |b| and cosine of two tensor tuples."""
    fa, fb = _flat(a), _flat(b)
    return float((fa - fb).norm() / fb.norm()), float(fa @ fb / (fa.norm() * fb.norm()))


def variants(args: argparse.Namespace) -> dict[str, tuple[float, int, bool]]:
    """Hyper-step variants: name -> (neumann_tol, hyper_chunks, hyper_recompute)."""
    table = {"plain": (0.0, 1, False), "fast": (args.tol, args.chunks, args.recompute)}
    if args.compare_recompute and args.chunks == 1:
        table["fast_keep_graph" if args.recompute else "fast_recompute"] = (args.tol, 1, not args.recompute)
    for c in args.extra_chunks:
        table[f"fast_chunks{c}"] = (args.tol, c, True)
    return table


def measure_time(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Interleaved rounds of inner steps and hyper steps; per-round raw measurements."""
    run = build(device, args.seed, args.depth, args.width, args.batch)
    table = variants(args)
    for case in INNER_CASES:  # warm-up round (untimed)
        inner_step(run, case)
    hyper(run, *table["fast"], seed=args.seed)
    rounds = []
    for r in range(args.rounds):
        record: dict[str, Any] = {"inner_s": {}, "hyper_s": {}, "breakdown_s": {}, "hvps": {}, "compare": {}}
        order = list(INNER_CASES) + ["hyper"]
        order = order[r % len(order) :] + order[: r % len(order)]
        for case in order:
            if case != "hyper":
                record["inner_s"][case] = statistics.fmean(
                    inner_step(run, case) for _ in range(args.inner_steps)
                )
                continue
            state = snapshot(run)
            names = [n for n in table if n != "plain" or r < args.plain_rounds]
            results = {}
            for name in names:
                restore(run, state)
                result, seconds = hyper(run, *table[name], seed=args.seed + 1000 + r)
                results[name] = result
                record["hyper_s"][name] = seconds
                record["breakdown_s"][name] = dict(run.timings)
                record["hvps"][name] = result.info.hvps
            if "plain" in results:
                for name, result in results.items():
                    if name != "plain":
                        rel, cos = compare(result.hypergrad, results["plain"].hypergrad)
                        net_rel, _ = compare(result.network_grads, results["plain"].network_grads)
                        record["compare"][name] = {
                            "rel_diff": rel,
                            "cosine": cos,
                            "network_grad_rel_diff": net_rel,
                        }
        rounds.append(record)
        print(
            f"round {r + 1}/{args.rounds}: inner "
            + ", ".join(f"{k} {v:.2f}s" for k, v in record["inner_s"].items())
            + "; hyper "
            + ", ".join(f"{k} {v:.2f}s ({record['hvps'][k]} HVPs)" for k, v in record["hyper_s"].items()),
            flush=True,
        )
    return {"rounds": rounds}


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def probe(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Inside a fresh process: setup RSS, one cycle of ``args.probe``, peak RSS (and CUDA allocations)."""
    run = build(device, args.seed, args.depth, args.width, args.batch)
    sync(device)
    out = {"setup_rss": rss_mb()}
    if device.type == "cuda":
        out["cuda_setup_allocated"] = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    if args.probe in ("baseline", "randaugment"):
        for _ in range(2):
            inner_step(run, args.probe)
    else:
        inner_step(run, "madao_inner")
        hyper(run, *variants(args)[args.probe], seed=args.seed)
    sync(device)
    out["peak_rss"] = peak_rss_mb()
    out["peak_above_setup"] = out["peak_rss"] - out["setup_rss"]
    if device.type == "cuda":
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc: serve every allocation >= 128 KiB by mmap and unmap it on free (no dynamic threshold), so
freed tensors leave the resident set at once and the peak RSS follows the live tensors, not the
allocator's cache."""


def measure_memory(
    args: argparse.Namespace, device: torch.device, live: bool = False
) -> dict[str, dict[str, list[float]]]:
    """Every method in its own subprocess, ``args.memory_reps`` times (methods interleaved); ``live`` runs the
    subprocesses with :data:`LIVE_MEMORY_ENV`. ``args.memory_parallel`` probes run at once: a process's
    peak RSS (or its own CUDA allocations) does not depend on what the other cores do."""
    methods = ["baseline", "randaugment", *variants(args)]
    memory: dict[str, dict[str, list[float]]] = {m: {} for m in methods}
    env = {**os.environ, **(LIVE_MEMORY_ENV if live else {})}
    options = [
        "--device",
        device.type,
        "--threads",
        str(args.threads),
        "--tol",
        str(args.tol),
        "--chunks",
        str(args.chunks),
        "--recompute" if args.recompute else "--no-recompute",
        "--compare-recompute" if args.compare_recompute else "--no-compare-recompute",
        "--seed",
        str(args.seed),
        "--depth",
        str(args.depth),
        "--width",
        str(args.width),
        "--batch",
        str(args.batch),
        "--extra-chunks",
        *[str(c) for c in args.extra_chunks],
    ]
    queue = [(rep, method) for rep in range(args.memory_reps) for method in methods]
    running: list[tuple[int, str, subprocess.Popen]] = []

    def collect(rep: int, method: str, process: subprocess.Popen) -> None:
        stdout, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"memory probe {method} failed:\n{stderr[-4000:]}")
        values = json.loads(stdout.strip().splitlines()[-1])
        for key, value in values.items():
            memory[method].setdefault(key, []).append(value)
        print(
            f"memory{' (live)' if live else ''} {rep + 1}/{args.memory_reps} {method}: "
            f"peak RSS {values['peak_rss']:.0f} MiB (setup {values['setup_rss']:.0f})",
            flush=True,
        )

    while queue or running:
        while queue and len(running) < max(1, args.memory_parallel):
            rep, method = queue.pop(0)
            command = [sys.executable, "-m", "benchmarks.bench_cost", "--probe", method, *options]
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            running.append((rep, method, process))
        collect(*running.pop(0))
    return memory


def memory_ratios(memory: dict[str, dict[str, list[float]]], name: str, suffix: str = "") -> dict[str, float]:
    """MADAO variant ``name`` over RandAugment, repetition by repetition: min / median / max."""
    mem, ra = memory[name], memory["randaugment"]
    out = {}
    for key, label in (
        ("peak_rss", "total_peak_memory_ratio"),
        ("peak_above_setup", "above_setup_peak_memory_ratio"),
        ("cuda_peak_allocated", "cuda_peak_memory_ratio"),
    ):
        if key in mem:
            pairs = zip(mem[key], ra[key], strict=True)
            out.update(spread([a / b for a, b in pairs], label + suffix))
    return out


def spread(values: list[float], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_min": min(values),
        f"{prefix}_median": statistics.median(values),
        f"{prefix}_max": max(values),
    }


def summarise(
    args: argparse.Namespace,
    timing: dict[str, Any],
    memory: dict[str, Any],
    live_memory: dict[str, Any] | None,
) -> dict[str, Any]:
    """Ratios, breakdowns and target checks from the raw measurements."""
    rounds = timing["rounds"]
    names = list(variants(args))
    time_s: dict[str, Any] = {}
    for case in INNER_CASES:
        samples = [r["inner_s"][case] for r in rounds]
        time_s[case] = {**spread(samples, "s"), "samples": samples}
    for name in names:
        samples = [r["hyper_s"][name] for r in rounds if name in r["hyper_s"]]
        time_s[f"{name}_hyper"] = {**spread(samples, "s"), "samples": samples}

    report: dict[str, Any] = {"time_s": time_s, "memory_mb": memory}
    if live_memory:
        report["memory_mb_live"] = live_memory
    for s in S_VALUES:
        block: dict[str, Any] = {}
        for name in names:
            ratios, vs_base, amortised = [], [], []
            for r in rounds:
                if name not in r["hyper_s"]:
                    continue
                t = ((s - 1) * r["inner_s"]["madao_inner"] + r["hyper_s"][name]) / s
                amortised.append(t)
                ratios.append(t / r["inner_s"]["randaugment"])
                vs_base.append(t / r["inner_s"]["baseline"])
            entry = {
                **spread(ratios, "time_ratio"),
                **spread(vs_base, "time_ratio_vs_baseline"),
                "amortised_step_s_median": statistics.median(amortised),
                "time_rounds": len(ratios),
            }
            entry.update(memory_ratios(memory, name))
            if live_memory:
                entry.update(memory_ratios(live_memory, name, "_live"))
            block[name] = entry
        block["randaugment_over_baseline_time_ratio_median"] = statistics.median(
            r["inner_s"]["randaugment"] / r["inner_s"]["baseline"] for r in rounds
        )
        report[f"s{s}"] = block

    breakdown = {}
    for name in names:
        sections = [r["breakdown_s"][name] for r in rounds if name in r["breakdown_s"]]
        keys = sorted({k for sec in sections for k in sec}, key=lambda k: (k.startswith("hvp_"), k))
        breakdown[name] = {k: statistics.median(sec.get(k, 0.0) for sec in sections) for k in keys}
        breakdown[name]["total"] = time_s[f"{name}_hyper"]["s_median"]
    report["hyper_step_breakdown_s"] = breakdown
    report["hvps_per_hyper_step"] = {n: [r["hvps"][n] for r in rounds if n in r["hvps"]] for n in names}
    comparisons = {}
    for name in names:
        if name == "plain":
            continue
        rows = [r["compare"][name] for r in rounds if name in r["compare"]]
        comparisons[name] = {
            "rel_diff": [row["rel_diff"] for row in rows],
            "cosine": [row["cosine"] for row in rows],
            "rel_diff_max": max(row["rel_diff"] for row in rows),
            "cosine_min": min(row["cosine"] for row in rows),
            "network_grad_rel_diff_max": max(row["network_grad_rel_diff"] for row in rows),
        }
    report["hypergrad_vs_plain"] = comparisons
    fast30 = report["s30"]["fast"]
    report["targets"] = {
        "s30_fast_time_ratio_median": {
            "measured": fast30["time_ratio_median"],
            "target_at_most": TARGETS["time_ratio_median"],
            "met": fast30["time_ratio_median"] <= TARGETS["time_ratio_median"],
        },
        "s30_fast_total_peak_memory_ratio_median": {
            "measured": fast30["total_peak_memory_ratio_median"],
            "target_at_most": TARGETS["total_peak_memory_ratio_median"],
            "met": fast30["total_peak_memory_ratio_median"] <= TARGETS["total_peak_memory_ratio_median"],
        },
        "fast_hypergrad_rel_diff_max": {
            "measured": comparisons["fast"]["rel_diff_max"],
            "target_below": TARGETS["hypergrad_rel_diff_max"],
            "met": comparisons["fast"]["rel_diff_max"] < TARGETS["hypergrad_rel_diff_max"],
        },
        "paper_at_s30": {"time_ratio": 1.7, "gpu_memory_ratio": 1.94, "note": "GPU, against no MADAO"},
    }
    if "total_peak_memory_ratio_median_live" in fast30:
        report["targets"]["s30_fast_total_peak_memory_ratio_median_live"] = {
            "measured": fast30["total_peak_memory_ratio_median_live"],
            "target_at_most": TARGETS["total_peak_memory_ratio_median"],
            "met": fast30["total_peak_memory_ratio_median_live"] <= TARGETS["total_peak_memory_ratio_median"],
        }
    return report


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.bench_cost", *sys.argv[1:]]),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost.json"))
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and repetitions (< 10 min on 2 cores)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument(
        "--inner-steps", type=int, default=None, help="inner steps per case per round (3, quick 2)"
    )
    parser.add_argument(
        "--plain-rounds", type=int, default=None, help="rounds with a plain hyper step (default 2, quick 1)"
    )
    parser.add_argument("--memory-reps", type=int, default=None, help="memory repetitions (3 / 1)")
    parser.add_argument("--tol", type=float, default=1e-4, help="neumann_tol of the fast variant")
    parser.add_argument("--chunks", type=int, default=1, help="hyper_chunks of the fast variant")
    parser.add_argument(
        "--recompute", action=argparse.BooleanOptionalAction, default=False, help="hyper_recompute of fast"
    )
    parser.add_argument(
        "--compare-recompute",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure fast with the other hyper_recompute setting (full: on, quick: off)",
    )
    parser.add_argument(
        "--extra-chunks", type=int, nargs="*", default=None, help="more fast variants (4 / none)"
    )
    parser.add_argument(
        "--live-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure RSS with glibc's mmap threshold fixed (live tensors; full: on, quick: off)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=28, help="WRN depth (28; smaller only to smoke-test)")
    parser.add_argument("--width", type=int, default=2, help="WRN widen factor (2)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size (128)")
    parser.add_argument(
        "--memory-parallel",
        type=int,
        default=None,
        help="memory probes run at once (default: 2 on a CPU with 2+ cores, 1 on CUDA)",
    )
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or 3
    args.inner_steps = args.inner_steps or (2 if quick else 3)
    args.plain_rounds = args.plain_rounds if args.plain_rounds is not None else (1 if quick else 2)
    args.memory_reps = args.memory_reps or (1 if quick else 3)
    if args.memory_parallel is None:
        args.memory_parallel = 1 if args.device == "cuda" else min(2, os.cpu_count() or 1)
    if args.live_memory is None:
        args.live_memory = not quick
    if args.compare_recompute is None:
        args.compare_recompute = not quick
    if args.extra_chunks is None:
        args.extra_chunks = [] if quick else [4]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; use --device cpu")
    torch.set_num_threads(args.threads)
    if args.probe is not None:
        print(json.dumps(probe(args, device)))
        return
    started = time.perf_counter()
    load_before = os.getloadavg()
    memory = measure_memory(args, device)
    live_memory = (
        measure_memory(args, device, live=True) if args.live_memory and device.type == "cpu" else None
    )
    timing = measure_time(args, device)
    report = {
        "benchmark": "cost of MADAO: time per training step and peak memory, WRN-28-2, batch 128, 32x32",
        "machine": {
            **machine_info(device),
            "load_average_1_5_15_before": list(load_before),
            "load_average_1_5_15_after": list(os.getloadavg()),
        },
        "settings": {
            "quick": args.quick,
            "model": f"WideResNet({args.depth}, {args.width}, 10)",
            "batch": args.batch,
            "image_size": SIZE,
            "cutout": CUTOUT,
            "neumann_steps": NEUMANN_STEPS,
            "neumann_alpha": NEUMANN_ALPHA,
            "variants": {
                name: {"neumann_tol": t, "hyper_chunks": c, "hyper_recompute": rc}
                for name, (t, c, rc) in variants(args).items()
            },
            "s_values": list(S_VALUES),
            "rounds": args.rounds,
            "inner_steps_per_round": args.inner_steps,
            "plain_rounds": min(args.plain_rounds, args.rounds),
            "memory_reps": args.memory_reps,
            "live_memory": bool(live_memory),
            "live_memory_env": LIVE_MEMORY_ENV if live_memory else None,
            "seed": args.seed,
            "amortisation": "((s - 1) * t_madao_inner + t_hyper) / s per round, from measured step times",
        },
        **summarise(args, timing, memory, live_memory),
        "raw_rounds": timing["rounds"],
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for s in S_VALUES:
        for name in variants(args):
            row = report[f"s{s}"][name]
            print(
                f"s={s:<3} {name:<14} time ratio median {row['time_ratio_median']:.2f} "
                f"[{row['time_ratio_min']:.2f}, {row['time_ratio_max']:.2f}]  "
                f"peak memory ratio {row['total_peak_memory_ratio_median']:.2f} "
                f"(above setup {row['above_setup_peak_memory_ratio_median']:.2f})"
            )
    for name, row in report["hypergrad_vs_plain"].items():
        print(
            f"{name}: hypergradient vs plain rel diff max {row['rel_diff_max']:.2e}, "
            f"cosine min {row['cosine_min']:.6f}"
        )
    print(f"wrote {args.out} in {report['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
