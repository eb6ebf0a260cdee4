"""Time the augmentation policies on one CPU batch against kornia's and torchvision's RandAugment.

The cases of :func:`make_cases` on a (128, 3, 32, 32) and a (32, 3, 224, 224) batch: MADAO's policy (K = 2)
with hard draws (the inner steps) and with relaxed draws and backward (its share of a hyper step), the fixed
policies on the same ops, kornia's batched RandAugment and torchvision's per sample (a DataLoader transform's
cost), interleaved with the case order rotated every round (so drift favours none), once per batch and
``--threads`` value: median / min / max ms, and ``madao_no_grad / kornia_randaugment`` (target 1.0).

Run: ``python -m benchmarks.bench_policy --out benchmarks/results/policy.json``
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import kornia
import torch
import torchvision
import torchvision.transforms.v2 as v2
from kornia.augmentation.auto import RandAugment as KorniaRandAugment

from benchmarks.common import RESULTS, cli, stamp, write_json
from madao_pl.augment import AutoAugmentPolicy, MADAOPolicy, RandAugmentPolicy, TrivialAugmentPolicy

RATIO_TARGET, SEED = 1.0, 0
BATCH_SHAPES = ((128, 3, 32, 32), (32, 3, 224, 224))


def make_cases(batch: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The timed closures; each augments one whole batch."""
    generator = torch.Generator().manual_seed(SEED)
    weights = torch.randn(batch.shape, generator=torch.Generator().manual_seed(SEED + 1))
    madao, kornia_ra = MADAOPolicy(num_stages=2), KorniaRandAugment(n=2, m=15)
    torchvision_ra = v2.RandAugment(num_ops=2, magnitude=15)
    batch_uint8 = (batch * 255).round().to(torch.uint8)
    ours = {
        "madao": madao,
        "randaugment": RandAugmentPolicy(num_ops=2, magnitude=0.5),
        "trivialaugment": TrivialAugmentPolicy(),
        "autoaugment_cifar10": AutoAugmentPolicy("cifar10"),
    }

    def madao_forward_backward() -> None:
        madao.zero_grad(set_to_none=True)
        (madao(batch, generator=generator) * weights).sum().backward()

    return {
        **{f"{n}_no_grad": torch.no_grad()(partial(p, batch, generator=generator)) for n, p in ours.items()},
        "madao_forward_backward": madao_forward_backward,
        "kornia_randaugment": torch.no_grad()(lambda: kornia_ra(batch)),
        "torchvision_v2_randaugment_per_sample": lambda: [torchvision_ra(image) for image in batch_uint8],
    }


def run(cases: dict[str, Callable[[], object]], warmup: int, reps: int) -> dict[str, dict[str, float]]:
    """``warmup`` untimed rounds, then ``reps`` timed rounds, the cases interleaved in each round (load hits
    all alike) and their order rotated by one every round (each case runs at every position in turn);
    median / min / max milliseconds per call."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_index in range(warmup + reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = cases[name]
            start = time.perf_counter()
            fn()
            if round_index >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {
        n: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "reps": len(v)}
        for n, v in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    flags = {"--reps": {"type": int, "default": 20}, "--warmup": {"type": int, "default": 3}}
    flags["--threads"] = {"type": int, "nargs": "+", "default": [1, 2], "help": "torch threads, a run each"}
    args = cli(__doc__, argv, RESULTS / "policy.json", flags)
    runs = {}
    for shape in BATCH_SHAPES:
        batch = torch.rand(*shape, generator=torch.Generator().manual_seed(SEED))
        label = "x".join(map(str, shape))
        for threads in args.threads:
            torch.set_num_threads(threads)
            load_before = list(os.getloadavg())
            results = run(make_cases(batch), args.warmup, args.reps)
            madao, backward = (results[k]["median_ms"] for k in ("madao_no_grad", "madao_forward_backward"))
            ratio = madao / results["kornia_randaugment"]["median_ms"]
            runs[f"threads={threads}, batch {label}"] = {
                "batch_shape": list(shape),
                "torch_threads": torch.get_num_threads(),
                "load_average_1_5_15_before": load_before,
                "results": results,
                "ratio_madao_no_grad_over_kornia_randaugment": ratio,
                "ratio_target": RATIO_TARGET,
                "ratio_within_target": ratio <= RATIO_TARGET,
                "ratio_madao_forward_backward_over_no_grad": backward / madao,
            }
            timings = ", ".join(f"{n} {r['median_ms']:.2f} ms" for n, r in results.items())
            print(f"batch {label}, threads {threads}: {timings}; madao / kornia {ratio:.2f}")
    shapes = [list(shape) for shape in BATCH_SHAPES]
    report = {
        "benchmark": "augmentation policy on one CPU batch",
        "batch_shape": shapes[0],
        "batch_shapes": shapes,
        **stamp(
            "benchmarks.bench_policy", argv, torchvision=torchvision.__version__, kornia=kornia.__version__
        ),
        "settings": {
            "warmup_rounds": args.warmup,
            "timed_rounds": args.reps,
            "interleaved": True,
            "order_rotated": True,
            "seed": SEED,
        },
        "runs": runs,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
