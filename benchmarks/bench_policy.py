"""Time the augmentation policies on one CPU batch against kornia's and torchvision's RandAugment.

Cases, all on the same (128, 3, 32, 32) float batch in [0, 1] (torchvision: its uint8 version):

- ``madao_no_grad``: MADAOPolicy (K = 2) under ``torch.no_grad()`` (the inner steps: hard draws);
- ``madao_forward_backward``: MADAOPolicy forward with relaxed draws + backward to its 78 parameters
  (the policy's share of a hyper step);
- ``randaugment_no_grad``: RandAugmentPolicy(num_ops=2, magnitude=0.5) on the same op table;
- ``trivialaugment_no_grad`` / ``autoaugment_cifar10_no_grad``: the other fixed policies;
- ``kornia_randaugment``: ``kornia.augmentation.auto.RandAugment(n=2, m=15)`` (batched; it draws the two
  ops once per *batch*, so it runs 2 op calls where the per-sample policies here run up to 2 x 14);
- ``torchvision_v2_randaugment_per_sample``: ``torchvision.transforms.v2.RandAugment(num_ops=2,
  magnitude=15)`` called on each of the 128 uint8 images in a Python loop (a DataLoader transform's cost).

Repetitions are interleaved (one of each case per round) after warm-up rounds, so load from other
processes affects all cases alike; the whole set runs once per ``--threads`` value (default 1 and 2: on a
shared 2-core machine, 2 intra-op threads can be oversubscribed). Reports median / min / max
milliseconds and the ratio ``madao_no_grad / kornia_randaugment`` (medians; target <= 1.5).

Run: ``python benchmarks/bench_policy.py --out benchmarks/results/policy.json``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kornia
import torch
import torchvision
import torchvision.transforms.v2 as v2
from kornia.augmentation.auto import RandAugment as KorniaRandAugment

from madao_pl.augment import AutoAugmentPolicy, MADAOPolicy, RandAugmentPolicy, TrivialAugmentPolicy

RATIO_TARGET = 1.5


def make_cases(batch: torch.Tensor, seed: int) -> dict[str, Callable[[], object]]:
    """Build the timed closures; each runs one full batch."""
    generator = torch.Generator().manual_seed(seed)
    madao = MADAOPolicy(num_stages=2)
    randaugment = RandAugmentPolicy(num_ops=2, magnitude=0.5)
    trivialaugment = TrivialAugmentPolicy()
    autoaugment = AutoAugmentPolicy("cifar10")
    kornia_ra = KorniaRandAugment(n=2, m=15)
    torchvision_ra = v2.RandAugment(num_ops=2, magnitude=15)
    batch_uint8 = (batch * 255).round().to(torch.uint8)
    weights = torch.randn(batch.shape, generator=torch.Generator().manual_seed(seed + 1))

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn()

        return run

    def madao_forward_backward() -> None:
        madao.zero_grad(set_to_none=True)
        (madao(batch, generator=generator) * weights).sum().backward()

    def torchvision_per_sample() -> list[torch.Tensor]:
        return [torchvision_ra(image) for image in batch_uint8]

    return {
        "madao_no_grad": no_grad(lambda: madao(batch, generator=generator)),
        "madao_forward_backward": madao_forward_backward,
        "randaugment_no_grad": no_grad(lambda: randaugment(batch, generator=generator)),
        "trivialaugment_no_grad": no_grad(lambda: trivialaugment(batch, generator=generator)),
        "autoaugment_cifar10_no_grad": no_grad(lambda: autoaugment(batch, generator=generator)),
        "kornia_randaugment": no_grad(lambda: kornia_ra(batch)),
        "torchvision_v2_randaugment_per_sample": no_grad(torchvision_per_sample),
    }


def run(cases: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Interleaved timing: ``warmup`` untimed rounds, then ``reps`` timed rounds; milliseconds per call."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(warmup + reps):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - start) * 1e3
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    """Median / min / max per case and the ratios the project tracks."""
    results = {
        name: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "max_ms": max(values),
            "reps": len(values),
        }
        for name, values in times.items()
    }
    ratio = results["madao_no_grad"]["median_ms"] / results["kornia_randaugment"]["median_ms"]
    return {
        "results": results,
        "ratio_madao_no_grad_over_kornia_randaugment": ratio,
        "ratio_madao_no_grad_over_kornia_randaugment_min": (
            results["madao_no_grad"]["min_ms"] / results["kornia_randaugment"]["min_ms"]
        ),
        "ratio_target": RATIO_TARGET,
        "ratio_within_target": ratio <= RATIO_TARGET,
        "ratio_madao_forward_backward_over_no_grad": (
            results["madao_forward_backward"]["median_ms"] / results["madao_no_grad"]["median_ms"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/policy.json"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts, one run each"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    batch = torch.rand(
        args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed)
    )
    runs = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = os.getloadavg()
        times = run(make_cases(batch, args.seed), args.warmup, args.reps)
        runs[f"threads={threads}"] = {
            "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15_before": list(load_before),
            "load_average_1_5_15_after": list(os.getloadavg()),
            **summarise(times),
        }
        print(f"-- torch threads {threads} (load average before {load_before[0]:.1f})")
        results = runs[f"threads={threads}"]["results"]
        width = max(map(len, results))
        for name, row in results.items():
            median, low, high = row["median_ms"], row["min_ms"], row["max_ms"]
            print(f"{name:<{width}}  median {median:9.2f} ms  min {low:9.2f}  max {high:9.2f}")
        ratio = runs[f"threads={threads}"]["ratio_madao_no_grad_over_kornia_randaugment"]
        print(f"MADAO (no grad) / kornia RandAugment (medians): {ratio:.2f} (target <= {RATIO_TARGET})")

    report = {
        "benchmark": "augmentation policy on one CPU batch",
        "batch_shape": [args.batch, 3, args.size, args.size],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "kornia": kornia.__version__,
        },
        "settings": {
            "warmup_rounds": args.warmup,
            "timed_rounds": args.reps,
            "interleaved": True,
            "seed": args.seed,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
