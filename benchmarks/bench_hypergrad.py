"""How much signal one MADAO hypergradient carries on digits, where its noise comes from, and what it rewards.

The real config and ``MADAOModule``, warmed up through a real ``Trainer`` (``augment.warmup_epochs`` epochs),
then :func:`madao_pl.hyperstep.hyper_step` again and again at those weights, each call with its own draws
(:class:`Draws`): how alike independent hypergradients are (:func:`statistics_of`) per random source of
:data:`SOURCES`, per average of ``m`` draws, with the whole held-out split as the batch and per option of
:data:`ESTIMATORS`; their cosine to the damped implicit gradient solved to convergence, also for
:data:`SOLVERS` (:func:`reference_alignment`); per op, its training gradient against the validation gradient
(:func:`op_gradients`: the short-horizon bias of the one-step look-ahead).

Run: ``python -m benchmarks.bench_hypergrad --out benchmarks/results/hypergrad.json [-- OVERRIDE ...]``
(about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import QUIET_TRAINER, RESULTS, cli, compose, split_overrides, stamp, write_json
from madao_pl.augment.ops import MAGNITUDE_OPS, OPERATIONS, cutout
from madao_pl.callbacks import WarmupCallback
from madao_pl.hyperstep import HyperStepConfig, hyper_step
from madao_pl.module import MADAOModule
from madao_pl.run import build, build_module

SOURCES = {"all": (1, 1, 1), "train_batch": (1, 0, 0), "policy_draws": (0, 1, 0), "val_batch": (0, 0, 1)}
"""Random source -> which of (training batch, policy and Cutout draws, hyper-validation batch) vary."""
ESTIMATORS: dict[str, dict[str, Any]] = {
    "paper": {"rao_samples": 1, "centered_selection": False, "batches": 1},
    "centered": {"rao_samples": 1, "centered_selection": True, "batches": 1},
    "rao16": {"rao_samples": 16, "centered_selection": False, "batches": 1},
    "rao16_centered": {"rao_samples": 16, "centered_selection": True, "batches": 1},
    "rao16_centered_k4": {"rao_samples": 16, "centered_selection": True, "batches": 4},
    "rao16_centered_k8": {"rao_samples": 16, "centered_selection": True, "batches": 8},
}
"""Variance-reduction options: the policy's Gumbel-Rao samples and centring, training batches per draw."""
SOLVERS: dict[str, dict[str, Any]] = {
    "curvature_alpha0.5_J20": {"neumann_alpha_scale": 0.5, "neumann_steps": 20, "neumann_tol": 0.0},
    "damped_cg10": {"method": "cg", "cg_iterations": 10, "damping": 1.0},
}
"""Other inverse-Hessian solvers (HyperStepConfig fields) whose alignment with the reference is measured."""
DAMPING = 1e-2
"""The reference's damping: the implicit gradient of ``H + DAMPING I``, float64 CG to convergence."""


def warmed_up(overrides: list[str]) -> tuple[Any, Any, MADAOModule]:
    """The config, its datamodule and its module after ``augment.warmup_epochs`` epochs of a real fit."""
    cfg = compose(["augment=madao", "dataset.datamodule.num_workers=0", *overrides])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, classes = build(cfg, "dataset.datamodule"), cfg.dataset.num_classes
    module = build_module(cfg, classes, datamodule.mean, datamodule.std)
    warmup = cfg.augment.warmup_epochs
    callbacks = [WarmupCallback(warmup, min_hyper_steps=0)]
    trainer = pl.Trainer(max_epochs=warmup, accelerator="cpu", callbacks=callbacks, **QUIET_TRAINER)
    if warmup > 0:
        trainer.fit(module, datamodule=datamodule)
    else:
        datamodule.setup("fit")
    return cfg, datamodule, module


def statistics_of(draws: list[dict[str, Tensor]]) -> dict[str, dict[str, float]]:
    """Per group: mean pairwise cosine, median ``|mean| / standard error`` and the mean's norm over the
    mean norm of one draw (1: no noise)."""
    out = {}
    for name in draws[0]:
        stack = torch.stack([d[name] for d in draws])
        unit = F.normalize(stack, dim=1)
        cos = [float(unit[i] @ unit[j]) for i, j in itertools.combinations(range(len(stack)), 2)]
        mean, se = stack.mean(0), stack.std(0) / len(stack) ** 0.5
        out[name] = {
            "mean_pairwise_cosine": statistics.fmean(cos),
            "median_abs_mean_over_se": float((mean.abs() / se.clamp_min(1e-30)).median()),
            "norm_of_mean_over_mean_norm": float(mean.norm() / stack.norm(dim=1).mean()),
        }
    return out


def averages(draws: list[dict[str, Tensor]], m: int) -> list[dict[str, Tensor]]:
    """The means of disjoint consecutive groups of ``m`` draws."""
    groups = [draws[j : j + m] for j in range(0, len(draws) - m + 1, m)]
    return [{k: torch.stack([d[k] for d in group]).mean(0) for k in draws[0]} for group in groups]


class Draws:
    """Hypergradients at the module's current weights, each from a chosen training batch (a seeded random
    subset of the training split, ``batches`` batches of ``val_size``), seed and hyper-validation subset; a
    float64 copy of the module for reference solves."""

    def __init__(self, module: MADAOModule, datamodule: Any, val_size: int) -> None:
        self.module, self.state = module, copy.deepcopy(module.net.state_dict())
        self.reference = copy.deepcopy(module).double()
        self.train = [torch.cat(parts) for parts in zip(*datamodule.train_dataloader(), strict=True)]
        self.hyper = [torch.cat(parts) for parts in zip(*datamodule.hyper_dataloader(), strict=True)]
        self.val_size, self.batches = val_size, 1

    @staticmethod
    def subset(split: list[Tensor], seed: int, size: int) -> tuple[Tensor, Tensor]:
        """A seeded random subset of ``size`` samples of ``split`` (images, labels), without replacement."""
        pick = torch.randperm(len(split[1]), generator=torch.Generator().manual_seed(seed))[:size]
        return split[0][pick], split[1][pick]

    def train_batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Training batch ``index``: ``batches * val_size`` samples of the training split."""
        return self.subset(self.train, 40_000 + index, self.batches * self.val_size)

    def val_batch(self, index: int, size: int | None = None) -> tuple[Tensor, Tensor]:
        """Hyper-validation batch ``index``: ``size`` samples (default ``val_size``) of its split."""
        return self.subset(self.hyper, 10_000 + index, size or self.val_size)

    def hypergrad(
        self, train: int, seed: int, val: int, config: HyperStepConfig | None = None,
        val_size: int | None = None, reference: bool = False,
    ) -> dict[str, Tensor]:  # fmt: skip
        """One draw's hypergradient by policy parameter name, flattened, float64 (``reference``: on the
        float64 copy); the weights are restored afterwards."""
        m = self.reference if reference else self.module
        saved = copy.deepcopy(m.net.state_dict() if reference else self.state)
        dtype = torch.float64 if reference else torch.float32
        (images, labels), (val_images, val_labels) = self.train_batch(train), self.val_batch(val, val_size)
        torch.manual_seed(20_000 + seed)
        result = hyper_step(
            m.net, m.policy, (images.to(dtype), labels), (val_images.to(dtype), val_labels),
            normalize=m.normalize, cutout=m.cutout, config=config or m.hyper,
            generator=torch.Generator().manual_seed(30_000 + seed),
        )  # fmt: skip
        m.net.load_state_dict(saved)
        names = [n for n, p in m.policy.named_parameters() if p.requires_grad]
        return {n: g.detach().double().reshape(-1) for n, g in zip(names, result.hypergrad, strict=True)}


def reference_alignment(draws: Draws, count: int) -> dict[str, Any]:
    """Cosine of the configured hypergradient, and of each :data:`SOLVERS` one, to the damped implicit one
    (float64 CG to convergence) for the same ``count`` draws."""
    config = HyperStepConfig(method="cg", cg_iterations=1000, cg_tol=1e-8, damping=DAMPING)
    references = [draws.hypergrad(i, i, i, config, reference=True) for i in range(count)]

    def cosines(option: HyperStepConfig | None) -> list[dict[str, float]]:
        rows = [draws.hypergrad(i, i, i, option) for i in range(count)]
        return [
            {n: float(F.cosine_similarity(r[n], ref[n], dim=0)) for n in r}
            for r, ref in zip(rows, references, strict=True)
        ]

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {n: statistics.fmean(r[n] for r in rows) for n in rows[0]}

    configured = cosines(None)
    solvers = {
        name: {**fields, "mean": mean(cosines(HyperStepConfig(**fields)))} for name, fields in SOLVERS.items()
    }
    return {
        "damping": DAMPING,
        "solver": str(config),
        "draws": configured,
        "mean": mean(configured),
        "solvers": solvers,
    }


def op_gradients(draws: Draws, batches: int) -> dict[str, Any]:
    """Per op (every image, the policy's initial magnitude, random signs): training-gradient norm and its
    inner product / cosine with the validation gradient, averaged over ``batches`` batches."""
    module, net = draws.module, draws.module.net
    params = [p for p in net.parameters() if p.requires_grad]
    magnitudes = dict(zip(MAGNITUDE_OPS, module.policy.magnitudes()[0].tolist(), strict=True))

    def gradient(images: Tensor, labels: Tensor) -> Tensor:
        loss = F.cross_entropy(net(module.normalize(images)), labels)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    net.eval()
    v = gradient(*draws.val_batch(0, len(draws.hyper[1])))
    net.train()
    out: dict[str, Any] = {}
    for op in (None, *OPERATIONS):
        rows = []
        for b in range(batches):
            x, y = draws.train_batch(b)
            gen = torch.Generator().manual_seed(b)
            if op is not None:
                mu = torch.full((len(x),), magnitudes.get(op.name, 0.0))
                x = op.fn(x, mu, torch.where(torch.rand(len(x), generator=gen) < 0.5, -1.0, 1.0))
            x = cutout(x, module.cutout, gen) if module.cutout else x
            net.load_state_dict(draws.state)
            g = gradient(x, y)
            rows.append((float(g.norm()), float(g @ v), float(F.cosine_similarity(g, v, dim=0))))
        net.load_state_dict(draws.state)
        norm, dot, cos = (statistics.fmean(r[k] for r in rows) for k in range(3))
        out["none" if op is None else op.name] = {"grad_norm": norm, "inner_product": dot, "cosine": cos}
    return out


def estimators(draws: Draws, count: int) -> dict[str, Any]:
    """Per :data:`ESTIMATORS` option: the ``all`` statistics over ``count`` draws, seconds per draw."""
    policy, out = draws.module.policy, {}
    saved = (policy.rao_samples, policy.centered_selection)
    for name, option in ESTIMATORS.items():
        policy.rao_samples, policy.centered_selection = option["rao_samples"], option["centered_selection"]
        draws.batches, started = option["batches"], time.perf_counter()
        rows = [draws.hypergrad(i, i, i) for i in range(count)]
        out[name] = {
            **option,
            "seconds_per_draw": (time.perf_counter() - started) / count,
            **statistics_of(rows),
        }
    (policy.rao_samples, policy.centered_selection), draws.batches = saved, 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv, own, overrides = split_overrides(argv)
    defaults = {"--draws": 40, "--reference-draws": 3, "--op-batches": 4, "--threads": 2}
    flags = {flag: {"type": int, "default": value} for flag, value in defaults.items()}
    args = cli(__doc__, own, RESULTS / "hypergrad.json", flags)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg, datamodule, module = warmed_up(overrides)
    draws, n = Draws(module, datamodule, datamodule.batch_size), args.draws
    split = len(draws.hyper[1])
    sampled = {s: [draws.hypergrad(*(i * v for v in vary)) for i in range(n)] for s, vary in SOURCES.items()}
    settings = {
        "overrides": overrides, "draws": n, "warmup_epochs": cfg.augment.warmup_epochs,
        "val_batch": draws.val_size, "hyper_split": split, "temperature": cfg.augment.temperature,
        "hyper": {k: v for k, v in cfg.augment.hyper.items() if k != "_target_"},
    }  # fmt: skip
    report: dict[str, Any] = {
        "benchmark": "signal and noise of one MADAO hypergradient at fixed weights, digits",
        **stamp("benchmarks.bench_hypergrad", argv),
        "settings": settings,
        "sources": {source: statistics_of(rows) for source, rows in sampled.items()},
        "averaging": {
            str(m): statistics_of(averages(sampled["all"], m)) for m in (1, 2, 4, 8) if n // m >= 2
        },
        "val_batch": {
            "size": split,
            **statistics_of([draws.hypergrad(i, i, i, val_size=split) for i in range(n)]),
        },
        "estimators": estimators(draws, n),
        "reference": reference_alignment(draws, args.reference_draws),
        "ops": op_gradients(draws, args.op_batches),
    }
    write_json(args.out, {**report, "wall_s": time.perf_counter() - started})
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
