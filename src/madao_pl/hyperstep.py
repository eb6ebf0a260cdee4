"""One MADAO hyper step on a network and a policy (paper Algorithm 1, DESIGN.md §5), and its settings.

:func:`hyper_step` does, every ``s``-th training step: the augmented forward (policy with its graph ->
Cutout -> normalise -> network in train mode), ``df/dtheta`` with ``create_graph=True``, ``dg/dtheta`` on
an un-augmented held-out batch with the network in eval mode, and the implicit hypergradient
``-d2f/dphi dtheta^T H^{-1} dg/dtheta`` by :func:`madao_pl.hypergrad.implicit_hypergradient` with the
solver that :class:`HyperStepConfig` names. It returns the hypergradient and the network gradient; the
caller (``MADAOModule``) averages both over DDP ranks and steps the two optimisers.

The network sees the augmented batch ``x`` through a detached leaf, so the second-order work (the
Hessian-vector products, and the mixed derivative as ``d/dx <df/dtheta, u>``) stays inside the network,
and the mixed derivative reaches the policy ``phi`` by one vector-Jacobian product through the
augmentation at the end: the chain rule, not an approximation.

``recompute=True`` keeps no graph alive between products: each product rebuilds the forward and
``df/dtheta`` and frees them as it goes (BatchNorm running statistics are restored afterwards, so only the
one first-order forward updates them, as an inner step does); the augmentation is replayed from saved
generator states at the end (same draws, checked bit for bit, generators put back). Exact up to rounding;
less memory, more time (``benchmarks/README.md`` has the figures). The network's own randomness (dropout)
is not replayed: use dropout 0 with it.

``segmented=True`` keeps no second-order graph either: each product is taken one network segment at a time
by :class:`madao_pl.segmented.SegmentedProducts` (forward-over-reverse from the kept segment boundaries), so
the peak is about a training step's. ``f`` itself comes from one ordinary forward without a graph (which also
updates the BatchNorm running statistics, as an inner step does), and ``df/dtheta`` from the products'
first pass (its primal backward; the mixed derivative's pass if the solver takes no Hessian product), or from
an ordinary backward for a fixed policy and when ``direction_only`` needs it before the products. It needs
``f`` to be the cross-entropy of the network's logits against labels and a network that says how it splits
(:func:`madao_pl.models.network_segments`); the products' loss is checked against the hyper step's ``f``.
Exact up to rounding; slower per product.

Randomness: the policy draws from ``generator`` (default ``policy.generator``, else torch's global
generator) and Cutout from torch's global generator, in the order of :func:`augment_batch`, once.
Timing: the sections are ``torch.profiler.record_function`` ranges (``madao/augment``,
``madao/train_gradient``, ``madao/validation_gradient``, ``madao/hvp``, ``madao/mixed_derivative``), free
when no profiler runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from madao_pl.augment import Policy, ops
from madao_pl.hypergrad import (
    HVP,
    SolveInfo,
    Solver,
    adaptive_neumann,
    conjugate_gradient,
    curvature_scaled_neumann,
    exact,
    implicit_hypergradient,
    neumann,
    second_order_vjp,
)
from madao_pl.models import network_segments
from madao_pl.segmented import SegmentedProducts

__all__ = [
    "METHODS",
    "PRECISIONS",
    "HyperStepConfig",
    "Loss",
    "HyperStepResult",
    "augment_batch",
    "check_integer",
    "check_network",
    "check_precision",
    "hyper_step",
    "trainable_parameters",
]

Vector = tuple[Tensor, ...]
Loss = Callable[[Tensor, Tensor | None], Tensor]
"""``(normalised images, labels or None) -> 0-d loss`` through the network: the hyper step's f and g."""
METHODS = ("neumann", "cg", "exact")


def check_integer(name: str, value: object, low: int) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, valid: Callable[[float], bool], expected: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and valid(float(value))):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class HyperStepConfig:
    """How the hyper step inverts the Hessian: one name, one default and one check per setting.

    Hydra builds it from ``augment.hyper`` (``_target_``); ``MADAOModule`` takes it whole and
    :func:`hyper_step` reads it. The paper's hyper step is ``neumann_tol=0`` (all ``J`` terms).

    Attributes:
        method: ``"neumann"`` (the paper's truncated series), ``"cg"`` (conjugate gradient, needs a positive
            definite Hessian) or ``"exact"`` (dense solve, tiny networks only).
        neumann_steps: ``J``, products of the Neumann series (``J + 1`` terms), >= 0.
        neumann_alpha: ``alpha`` of the series, > 0 (it converges for ``alpha < 2 / lambda_max(H)``).
        neumann_alpha_scale: ``c`` > 0 replaces ``neumann_alpha`` by ``c / |lambda_max(H)|``, estimated per
            hyper step by ``power_iterations`` Hessian-vector products (power iteration); 0 = the fixed
            ``neumann_alpha``, in [0, 2).
        power_iterations: products of that power iteration, >= 1.
        neumann_tol: stop adding terms once the rest is estimated below this relative size (0 = all ``J``
            terms; 1e-4 keeps the sum within 1e-3 of all terms and usually needs one product), in [0, 1).
        cg_iterations: most CG iterations (= products), >= 0.
        cg_tol: CG stops at relative residual ``|v - H x| <= cg_tol |v|``, >= 0.
        damping: ``lambda`` of a damped inverse: every method solves ``(H + lambda I) x = v`` (0 = the
            paper's ``H``), >= 0. Damping makes the Hessian of a non-convex loss positive definite for CG.
        direction_only: differentiate the direction of the training gradient only: ``x = H^{-1} v`` loses its
            component along ``u = df/dtheta`` before the mixed derivative, and the result is scaled by
            ``1 / |u|``, which is ``d/dphi <u / |u|, x>``. The plain hypergradient ``d/dphi <u, x>`` also
            rewards augmentations that merely lengthen the training gradient (short-horizon bias); this
            one rewards turning it toward ``x``. Same cost. Off: the paper's hypergradient.
        max_exact_params: ``method="exact"`` refuses networks with more parameter elements, >= 1.
        recompute: rebuild the double-backward graph per product instead of keeping it (see the module doc).
        segmented: take each product one network segment at a time, keeping no second-order graph (see the
            module doc); not with ``recompute``.
    """

    method: str = "neumann"
    neumann_steps: int = 5
    neumann_alpha: float = 1e-3
    neumann_alpha_scale: float = 0.0
    power_iterations: int = 10
    neumann_tol: float = 1e-4
    cg_iterations: int = 5
    cg_tol: float = 1e-10
    damping: float = 0.0
    direction_only: bool = False
    max_exact_params: int = 5000
    recompute: bool = False
    segmented: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        check_integer("neumann_steps", self.neumann_steps, 0)
        _number("neumann_alpha", self.neumann_alpha, lambda v: v > 0, "a number > 0")
        _number(
            "neumann_alpha_scale", self.neumann_alpha_scale, lambda v: 0 <= v < 2,
            "a number in [0, 2) (0 = the fixed neumann_alpha)",
        )  # fmt: skip
        check_integer("power_iterations", self.power_iterations, 1)
        _number("neumann_tol", self.neumann_tol, lambda v: 0 <= v < 1, "a number in [0, 1) (0 = all J terms)")
        check_integer("cg_iterations", self.cg_iterations, 0)
        _number("cg_tol", self.cg_tol, lambda v: v >= 0, "a number >= 0")
        _number("damping", self.damping, lambda v: v >= 0, "a number >= 0 (0 = no damping)")
        check_integer("max_exact_params", self.max_exact_params, 1)
        for name in ("direction_only", "recompute", "segmented"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.recompute and self.segmented:
            raise ValueError("recompute and segmented are two ways to save memory: set at most one of them")

    def solver(self) -> Solver:
        """The :mod:`madao_pl.hypergrad` solver these settings name, ``(hvp, v) -> (x, info)``."""
        if self.method == "cg":
            return partial(conjugate_gradient, iterations=self.cg_iterations, tol=self.cg_tol)
        if self.method == "exact":
            return partial(exact, max_params=self.max_exact_params)
        if self.neumann_alpha_scale > 0:
            return partial(
                curvature_scaled_neumann, scale=self.neumann_alpha_scale, steps=self.neumann_steps,
                power_iterations=self.power_iterations, tol=self.neumann_tol,
            )  # fmt: skip
        if self.neumann_tol > 0:
            return partial(
                adaptive_neumann, alpha=self.neumann_alpha, steps=self.neumann_steps, tol=self.neumann_tol
            )
        return partial(neumann, alpha=self.neumann_alpha, steps=self.neumann_steps)


@dataclass(frozen=True)
class HyperStepResult:
    """What one hyper step returns; no tensor carries a graph.

    Attributes:
        hypergrad: one tensor per trainable policy parameter (``policy.parameters()`` order);
            descend along it.
        network_grads: ``df/dtheta`` per trainable network parameter: the network step of this step.
        train_loss: ``f`` on the augmented batch; ``val_loss``: ``g`` in eval mode (0-d each).
        info: the solver's :class:`~madao_pl.hypergrad.SolveInfo` (``info.hvps`` products performed).
        inputs: the augmented, normalised batch the network saw ``(B, C, H, W)`` (no graph).
    """

    hypergrad: Vector
    network_grads: Vector
    train_loss: Tensor
    val_loss: Tensor
    info: SolveInfo
    inputs: Tensor


def augment_batch(
    policy: Policy,
    images: Tensor,
    cutout: int = 0,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """``cutout(policy(images))``: the augmentation of every training step, the hyper step's included.

    With grad enabled a learnable policy draws relaxed (its output has a graph to ``phi``); under
    ``no_grad`` it draws hard. ``generator`` drives the policy's draws, Cutout draws from torch's global
    generator. ``labels`` ``(B,)`` reach class-conditional policies. Shapes: ``(B, C, H, W)``
    in ``[0, 1]`` -> the same.
    """
    augmented = policy(images, generator=generator, labels=labels)
    return ops.cutout(augmented, cutout) if cutout > 0 else augmented


def check_network(net: nn.Module) -> None:
    """Raise a ``ValueError`` if ``net`` holds a layer without the double backward the hyper step needs."""
    if any(isinstance(m, nn.SyncBatchNorm) for m in net.modules()):
        raise ValueError(
            "net: SyncBatchNorm has no double backward, which the MADAO hyper step needs; use plain "
            "BatchNorm (Trainer(sync_batchnorm=False))"
        )


PRECISIONS = ("32-true", "64-true", "bf16-mixed")
"""Lightning ``Trainer(precision=...)`` values that a learned policy trains under. The hyper step runs in the
parameters' dtype: ``MADAOModule`` turns autocast off for it and for the augmentation, so under
``bf16-mixed`` only the inner steps' network runs in bfloat16 and the hypergradient is the float32 one."""


def check_precision(precision: str) -> None:
    """``ValueError`` unless the hyper step can run under a trainer of this ``precision`` (`PRECISIONS`):
    ``16-mixed``'s gradient scaler would unscale the gradients the hyper step takes unscaled, and
    ``16-true`` / ``bf16-true`` hold the parameters in 16 bits, coarser than the Neumann series' terms."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision {precision!r} cannot train a MADAO policy: its hyper step needs full-precision "
            f"parameters and unscaled gradients; use one of {', '.join(PRECISIONS)} (bf16-mixed: the inner "
            "steps in bfloat16, the hyper step in float32)"
        )


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require a gradient, in order (what the hyper step differentiates)."""
    return [p for p in module.parameters() if p.requires_grad]


def _detached(grads: tuple[Tensor | None, ...], like: list[nn.Parameter]) -> Vector:
    return tuple(torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, like, strict=True))


@contextlib.contextmanager
def _restored_buffers(net: nn.Module) -> Iterator[None]:
    """Undo what the block's train-mode forwards do to the buffers (BatchNorm running statistics)."""
    saved = [(b, b.detach().clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class _Replay:
    """Generator states saved before the augmentation, to rebuild it later with the very same draws."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator, self.device = generator, device
        self.saved = self._get()

    def _get(self) -> tuple[Tensor | None, Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        own = self.generator.get_state() if self.generator is not None else None
        return own, torch.get_rng_state(), cuda

    def _set(self, state: tuple[Tensor | None, Tensor, Tensor | None]) -> None:
        own, cpu, cuda = state
        if own is not None:
            self.generator.set_state(own)  # type: ignore[union-attr]
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def rerun(self, augment: Callable[[], Tensor], expected: Tensor) -> Tensor:
        """``augment()`` from the saved states, checked equal to ``expected``; generators left as found."""
        now = self._get()
        self._set(self.saved)
        try:
            augmented = augment()
        finally:
            self._set(now)
        if not torch.equal(augmented.detach(), expected):
            raise RuntimeError(
                "replaying the augmentation with the same random draws gave different images, so the "
                "policy or Cutout is not deterministic on this device: use recompute=False."
            )
        return augmented


def hyper_step(
    net: nn.Module,
    policy: Policy,
    batch: tuple[Tensor, Tensor | None],
    val_batch: tuple[Tensor, Tensor | None],
    *,
    normalize: Callable[[Tensor], Tensor],
    cutout: int = 0,
    config: HyperStepConfig = HyperStepConfig(),  # noqa: B008 (frozen, so one shared default is safe)
    generator: torch.Generator | None = None,
    loss: Loss | None = None,
    val_loss: Loss | None = None,
) -> HyperStepResult:
    """Network gradient and implicit policy hypergradient of one hyper step (see the module doc).

    Args:
        net: the classifier (unwrapped, not DDP), normalised images -> logits; its train/eval mode is used
            for the augmented forward and restored after the eval-mode validation forward.
        policy: the augmentation policy; its trainable parameters are ``phi``.
        batch: training images ``(B, C, H, W)`` in ``[0, 1]`` and labels ``(B,)``.
        val_batch: an un-augmented held-out batch in ``[0, 1]`` and its labels.
        normalize: per-channel normalisation after the augmentation (and of the held-out images).
        cutout: Cutout square side in pixels after the policy (0 = off).
        config: the solver and memory settings.
        generator: the policy's random generator (default ``policy.generator``); Cutout draws from torch's
            global one.
        loss: ``f`` on the augmented batch (default: the cross-entropy of ``net(inputs)`` against the labels;
            the self-supervised task passes its contrastive loss). Labels may be None when it needs none.
        val_loss: ``g`` on the normalised held-out batch, evaluated in eval mode (default: ``loss``).
    """
    (images, labels), (val_images, val_labels) = batch, val_batch
    if loss is None:

        def loss(inputs: Tensor, targets: Tensor | None) -> Tensor:
            return F.cross_entropy(net(inputs), targets)

    val_loss = val_loss if val_loss is not None else loss
    params, hparams = trainable_parameters(net), trainable_parameters(policy)
    generator = generator if generator is not None else policy.generator

    def augment() -> Tensor:
        with torch.enable_grad():
            return normalize(augment_batch(policy, images, cutout, generator, labels))

    with record_function("madao/augment"):
        replay = _Replay(generator, images.device) if config.recompute else None
        augmented = augment()
        inputs = augmented.detach().requires_grad_(True)
        graph = None if config.recompute else augmented
        del augmented

    def train_gradient(create_graph: bool) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        with torch.enable_grad():
            value = loss(inputs, labels)
            return value, torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)

    # segmented products also return df/dtheta (their primal backward): then f's forward alone is taken here
    from_products = config.segmented and bool(hparams) and not config.direction_only
    with record_function("madao/train_gradient"):
        if from_products:
            with torch.no_grad():
                train_loss, grads = loss(inputs, labels), ()
        else:
            train_loss, grads = train_gradient(create_graph=not (config.recompute or config.segmented))
    network_grads = _detached(grads, params) if grads else ()
    hvp, input_vjp, segmented = _products(config, net, params, inputs, labels, grads, train_gradient)
    del grads

    with record_function("madao/validation_gradient"), torch.enable_grad():
        was_training = net.training
        net.eval()
        held_out_loss = val_loss(normalize(val_images), val_labels)
        val_grads = _detached(torch.autograd.grad(held_out_loss, params, allow_unused=True), params)
        net.train(was_training)

    def mixed_vjp(x: Vector) -> Vector:
        with record_function("madao/mixed_derivative"):
            (image_product,) = input_vjp(x)
            source = graph if replay is None else replay.rerun(augment, inputs)
            products = torch.autograd.grad(source, hparams, grad_outputs=image_product, allow_unused=True)
            return tuple(
                torch.zeros_like(h) if p is None else p for p, h in zip(products, hparams, strict=True)
            )

    if not hparams:  # a fixed policy: nothing to differentiate
        hypergrad, info = (), SolveInfo(config.method, hvps=0, terms=0)
    else:
        with _restored_buffers(net) if config.recompute else contextlib.nullcontext():
            product = _ranged(hvp if config.damping == 0 else _damped(hvp, config.damping))
            mixed = _direction_only(mixed_vjp, network_grads) if config.direction_only else mixed_vjp
            hypergrad, info = implicit_hypergradient(product, mixed, val_grads, config.solver())
        if segmented is not None:
            _check_same_loss(segmented.loss_value, train_loss)
        if from_products:
            network_grads = tuple(g.detach() for g in segmented.gradient)  # type: ignore[union-attr]
        hypergrad = _with_penalty(policy, hparams, hypergrad)
    return HyperStepResult(
        hypergrad, network_grads, train_loss.detach(), held_out_loss.detach(), info, inputs.detach()
    )


def _products(
    config: HyperStepConfig,
    net: nn.Module,
    params: list[nn.Parameter],
    inputs: Tensor,
    labels: Tensor | None,
    grads: tuple[Tensor | None, ...],
    train_gradient: Callable[[bool], tuple[Tensor, tuple[Tensor | None, ...]]],
) -> tuple[HVP, Callable[[Vector], Vector], SegmentedProducts | None]:
    """The hyper step's two second-order products in ``config``'s memory mode: ``u -> H u`` and ``u ->
    d/dx <df/dtheta, u>`` (as a 1-tuple), and the segmented products object (None in the other modes).

    Kept graph: both differentiate ``grads`` (``df/dtheta`` taken with ``create_graph``). ``recompute``:
    each call rebuilds ``df/dtheta`` by ``train_gradient(True)`` and frees it. ``segmented``: one network
    segment at a time (:class:`madao_pl.segmented.SegmentedProducts`)."""
    if config.segmented:
        products = SegmentedProducts(network_segments(net), params, inputs, labels)

        def hvp(u: Vector) -> Vector:
            return products(u, inputs=False)[0]  # type: ignore[return-value]

        def input_vjp(u: Vector) -> Vector:
            return (products(u, parameters=False)[1],)  # type: ignore[return-value]

        return hvp, input_vjp, products
    if config.recompute:

        def hvp(u: Vector) -> Vector:
            return second_order_vjp(train_gradient(True)[1], params, retain_graph=False)(u)

        def input_vjp(u: Vector) -> Vector:
            return second_order_vjp(train_gradient(True)[1], [inputs], retain_graph=False)(u)

        return hvp, input_vjp, None
    return second_order_vjp(grads, params), second_order_vjp(grads, [inputs]), None


def _with_penalty(policy: Policy, hparams: list[nn.Parameter], hypergrad: Vector) -> Vector:
    """``hypergrad`` plus the gradient of the policy's penalty (part of the outer objective, so its
    gradient is direct), if the policy has one."""
    penalty = policy.penalty()
    if penalty is None:
        return hypergrad
    direct = torch.autograd.grad(penalty, hparams, allow_unused=True)
    return tuple(h if d is None else h + d for h, d in zip(hypergrad, direct, strict=True))


def _check_same_loss(segmented: Tensor | None, train_loss: Tensor) -> None:
    """``ValueError`` unless the segmented products differentiated the hyper step's own ``f``."""
    train_loss = train_loss.detach()
    if segmented is not None and not torch.allclose(segmented, train_loss, rtol=1e-4, atol=1e-6):
        raise ValueError(
            f"segmented products: the network's segments and the cross-entropy give f = "
            f"{float(segmented):.6g} but the hyper step's loss is {float(train_loss):.6g}, so they "
            "differentiate another function; "
            "segmented=True needs f to be the cross-entropy of the logits, segments() that compose to the "
            "network's forward, and no dropout: fix those or set segmented=False"
        )


def _direction_only(mixed_vjp: Callable[[Vector], Vector], gradient: Vector) -> Callable[[Vector], Vector]:
    """``x -> M^T (x - <n, x> n) / |u|`` with ``n = u / |u|``: the mixed derivative of ``<u / |u|, x>``."""
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in gradient)).clamp_min(1e-30)
    unit = tuple(g / norm.to(g.dtype) for g in gradient)

    def product(x: Vector) -> Vector:
        along = sum((n * t).sum() for n, t in zip(unit, x, strict=True))
        projected = tuple(t - along * n for t, n in zip(x, unit, strict=True))
        return tuple(m / norm.to(m.dtype) for m in mixed_vjp(projected))

    return product


def _damped(hvp: HVP, damping: float) -> HVP:
    """``u -> H u + damping u``: the product of the damped Hessian."""

    def product(u: Vector) -> Vector:
        return tuple(h + damping * t for h, t in zip(hvp(u), u, strict=True))

    return product


def _ranged(hvp: HVP) -> HVP:
    """``hvp`` inside a ``madao/hvp`` profiler range, one range per product."""

    def product(u: Vector) -> Vector:
        with record_function("madao/hvp"):
            return hvp(u)

    return product
