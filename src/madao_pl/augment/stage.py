"""One policy stage: what it draws per sample, the routine that applies it, and the random draws.

A policy is a sequence of *stages*. In each stage every sample ``n`` of a batch draws one operation
``i_n`` from the table :data:`madao_pl.augment.ops.OPERATIONS`, an apply weight ``b_n``, a magnitude
``mu_n`` in ``[0, 1]`` and a sign ``s_n`` (+1 / -1), held in a :class:`StageSample`; every policy then
runs the same routine, :func:`apply_stage`::

    x_n <- scale_n * (b_n * O_{i_n}(x_n; mu_n, s_n) + (1 - b_n) * x_n)

which groups the samples by operation, so each operation runs at most once per stage on exactly the
samples that chose it (DESIGN.md §4: one op application per image, not all 14); the samples that chose
any of the five geometric operations share one warp (:func:`madao_pl.augment.ops.affine_warp`).

Randomness: the draws take a :class:`torch.Generator` (``None`` = torch's global generator of the target
device). Noise is drawn in float32 on the generator's own device and then moved to the target device, so
a CPU generator gives the same draws whatever device the batch lives on.
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import torch
from torch import Tensor

from madao_pl.augment.ops import (
    OPERATIONS,
    WARP_MATRICES,
    MatrixBuilder,
    Operation,
    affine_warp,
    get_operation,
)

__all__ = [
    "StageSample",
    "apply_stage",
    "check_images",
    "check_value_range",
    "conditional_gumbels",
    "conditional_logistic",
    "draw_randint",
    "draw_uniform",
    "gumbel_from_uniform",
    "logistic_from_uniform",
    "relaxed_log_one_hot",
    "signs_from_uniform",
]


class StageSample(NamedTuple):
    """What one stage drew for each of the B samples of a batch: the arguments of :func:`apply_stage`
    after the images, in order (``apply_stage(images, *sample)``).

    Attributes:
        op_index: ``(B,)`` long, index into ``OPERATIONS`` of the operation each sample applies.
        apply_weight: ``(B,)`` float, ``b_n``: exactly 1/0 (hard draw) or a relaxed Bernoulli sample.
        magnitude: ``(B,)`` float in ``[0, 1]``, ``mu_n`` of the chosen operation (0 for ops without one).
        sign: ``(B,)`` float, +1 or -1 (signed operations use it, the others ignore it).
        scale: ``(B,)`` float equal to 1 in value that carries the selection gradient, or ``None``.
        centered: whether ``scale`` multiplies only the change the stage makes (see :func:`apply_stage`).
    """

    op_index: Tensor
    apply_weight: Tensor
    magnitude: Tensor
    sign: Tensor
    scale: Tensor | None = None
    centered: bool = False


# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------


def check_images(images: Tensor) -> None:
    """Raise a ``ValueError`` saying how to convert unless ``images`` is a float ``(B, C, H, W)`` tensor.

    Policies take float batches in ``[0, 1]``; the common mistakes (uint8 images, a single image without
    a batch dimension) get a message naming the fix.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = (
            f"{type(images).__name__}"
            if not isinstance(images, Tensor)
            else f"{images.dtype} {tuple(images.shape)}"
        )
        raise ValueError(
            f"policies take a float image batch of shape (B, C, H, W) with values in [0, 1], got {got}; "
            "convert uint8 images with images.float() / 255 and add a batch dimension with images[None]"
        )


def check_value_range(images: Tensor) -> None:
    """Raise a ``ValueError`` naming the fix when a float batch is plainly not in ``[0, 1]``: values above 2
    (pixels in ``[0, 255]``) or below -0.5 (already normalised). One reduction (a host sync on a GPU);
    rounding just outside ``[0, 1]`` passes."""
    if images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if high > 2.0:
        raise ValueError(
            f"policies take images in [0, 1], got values up to {high:g}: pixels in [0, 255]? "
            "divide them by 255 first"
        )
    if low < -0.5:
        raise ValueError(
            f"policies take images in [0, 1], got values down to {low:g}: already normalised? "
            "augment first, then normalise (MADAOModule normalises after the policy)"
        )


def _check_per_sample(name: str, value: Tensor, batch: int) -> None:
    """Raise unless ``value`` holds one value per image: shape ``(batch,)``."""
    if value.shape != (batch,):
        raise ValueError(
            f"apply_stage: {name} must have shape ({batch},) (one value per image), got {tuple(value.shape)}"
        )


# ----------------------------------------------------------------------------------------------------------
# The shared application routine
# ----------------------------------------------------------------------------------------------------------


def apply_stage(
    images: Tensor,
    op_index: Tensor,
    apply_weight: Tensor,
    magnitude: Tensor,
    sign: Tensor,
    scale: Tensor | None = None,
    centered: bool = False,
) -> Tensor:
    """Apply one policy stage: ``x_n <- scale_n * (b_n * O_{i_n}(x_n; mu_n, s_n) + (1 - b_n) * x_n)``.

    With ``centered`` the factor multiplies only the change: ``x_n <- z_n + (scale_n - 1) (z_n - x_n)``
    for the blend ``z_n`` (the same value, since ``scale_n`` is 1): a sample whose operation is not
    applied (``z_n = x_n``) then sends no gradient to the selection, whose choice it does not depend on.

    The routine every policy uses. Samples are grouped by operation (one sort + one bincount), each
    operation runs at most once, on only the samples that chose it (``index_select``), and its result is
    written into a copy of the batch with ``index_copy_``; there is no per-sample Python loop. The samples
    that chose any of the geometric operations (those of :data:`~madao_pl.augment.ops.WARP_MATRICES`)
    are warped together: their per-sample matrices are gathered and one
    :func:`~madao_pl.augment.ops.affine_warp` (one ``grid_sample``) warps them all, with the values and
    gradients each op gives on its own (an op replaced in ``OPERATIONS`` by another function runs on its
    own). The blend is ``torch.lerp(x, O(x), b)``, exact for ``b`` in ``{0, 1}`` and differentiable in ``b``.
    The grouping costs one host sync per stage (one ``tolist`` of the group sizes and flags).

    Samples whose weight is exactly 0 skip the operation unless the weight itself needs a gradient
    (grad enabled and ``apply_weight.requires_grad``): their output is then exactly ``x_n`` and no
    gradient can flow through the skipped operation. So hard draws (no-grad steps, fixed policies)
    cost one operation per *applied* sample, and a stage that applies nothing copies nothing. A ``scale``
    that is exactly 1 and needs no gradient is not multiplied in (the same values).

    Args:
        images: ``(B, C, H, W)`` float in ``[0, 1]``.
        op_index: ``(B,)`` long in ``[0, len(OPERATIONS))``.
        apply_weight: ``(B,)`` float ``b_n`` in ``[0, 1]``.
        magnitude: ``(B,)`` float ``mu_n`` in ``[0, 1]``.
        sign: ``(B,)`` float, +1 / -1.
        scale: ``(B,)`` float multiplier (the straight-through selection factor) or ``None`` for 1.
        centered: apply ``scale`` to the change ``z_n - x_n`` instead of the output.

    Returns:
        ``(B, C, H, W)`` augmented images (``images`` is not modified; returned itself when nothing applies).
    """
    check_images(images)
    batch = images.shape[0]
    if op_index.dtype != torch.long:
        raise ValueError(
            f"apply_stage: op_index must be a long tensor of operation indices, got {op_index.dtype}"
        )
    for name, value in (
        ("op_index", op_index),
        ("apply_weight", apply_weight),
        ("magnitude", magnitude),
        ("sign", sign),
    ):
        _check_per_sample(name, value, batch)
    if scale is not None:
        _check_per_sample("scale", scale, batch)
    if batch == 0:
        return images if scale is None else images * scale.view(-1, 1, 1, 1)

    num_ops = len(OPERATIONS)
    grad = torch.is_grad_enabled()
    weight_needs_grad = grad and apply_weight.requires_grad
    scale_needs_grad = scale is not None and grad and scale.requires_grad
    # Sort key: 0 for a skipped sample (weight exactly 0, no gradient to it), else 1 + its operation.
    applied = None if weight_needs_grad else apply_weight != 0
    key = op_index + 1 if applied is None else torch.where(applied, op_index + 1, 0)
    false = torch.zeros((), dtype=torch.bool, device=key.device)
    flags = torch.stack(
        [
            (op_index if applied is None else torch.where(applied, op_index, 0)).amin() < 0,
            # Hard draws (applied weights all exactly 1, no gradient to them): no blend, O(x) is the output.
            false if applied is None else ((apply_weight == 1) | ~applied).all(),
            false if scale is None or scale_needs_grad else (scale == 1).all().to(key.device),
        ]
    )
    stats = torch.cat([flags.long(), torch.bincount(key.clamp_min(0), minlength=num_ops + 1)]).tolist()
    negative, hard, unit_scale, skipped, *counts = stats  # the stage's one host sync
    if negative or len(counts) > num_ops:
        bad = "negative values" if negative else f"values >= {num_ops}, the number of operations"
        raise ValueError(f"apply_stage: op_index has {bad}")
    if unit_scale:
        scale = None  # exactly 1 in value and no gradient to carry: out * 1 == out

    dtype, (height, width) = images.dtype, images.shape[-2:]
    if skipped < batch:
        active = torch.argsort(key, stable=True)[skipped:]  # grouped by operation, then by sample
        magnitudes, signs = _gather(magnitude, active, dtype), _gather(sign, active, dtype)
        weights = None if hard else _gather(apply_weight, active, dtype).view(-1, 1, 1, 1)
        # Each group is gathered and written back on its own: batch-sized temporaries would make the
        # allocator hand pages back to the system and fault them in again on every call.
        out = torch.empty_like(images) if skipped == 0 else images.clone()  # every row is overwritten
    else:
        out = images  # nothing applied: no copy
    warps: list[tuple[slice, MatrixBuilder]] = []
    start = 0
    for op_id, count in enumerate(counts):
        if count == 0:
            continue
        group = slice(start, start + count)
        start += count
        builder = _warp_builder(OPERATIONS[op_id])
        if builder is not None:
            warps.append((group, builder))
            continue
        idx = active[group]
        x = images.index_select(0, idx)
        y = OPERATIONS[op_id].fn(x, magnitudes[group], signs[group])
        out.index_copy_(0, idx, y if weights is None else torch.lerp(x, y, weights[group]))
    if warps:  # every geometric sample, one warp
        matrices = torch.cat([builder(magnitudes[g], signs[g], height, width) for g, builder in warps])
        groups = [g for g, _ in warps]
        contiguous = all(a.stop == b.start for a, b in pairwise(groups))
        rows = (
            slice(groups[0].start, groups[-1].stop)
            if contiguous
            else torch.cat([torch.arange(g.start, g.stop, device=active.device) for g in groups])
        )
        idx = active[rows]
        x = images.index_select(0, idx)
        y = affine_warp(x, matrices)
        out.index_copy_(0, idx, y if weights is None else torch.lerp(x, y, weights[rows]))
    if scale is not None:
        factor = scale.to(dtype).view(-1, 1, 1, 1)
        out = out + (factor - 1) * (out - images) if centered else out * factor
    return out


def _gather(values: Tensor, index: Tensor, dtype: torch.dtype) -> Tensor:
    """``values[index]`` in ``dtype`` (no conversion call when it already is)."""
    picked = values[index]
    return picked if picked.dtype == dtype else picked.to(dtype)


def _warp_builder(op: Operation) -> MatrixBuilder | None:
    """The sampling-matrix builder of a geometric operation whose function is the table's own, else None."""
    builder = WARP_MATRICES.get(op.name)
    return builder if builder is not None and op.fn is get_operation(op.name).fn else None


# ----------------------------------------------------------------------------------------------------------
# Random draws
# ----------------------------------------------------------------------------------------------------------


def draw_uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Float32 U[0, 1) of ``shape`` from ``generator`` (drawn on its own device), returned on ``device``.

    With ``generator=None`` it draws from torch's global generator of ``device``.
    """
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def draw_randint(
    high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Long uniform integers in ``[0, high)`` of ``shape`` from ``generator``, returned on ``device``."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def signs_from_uniform(uniform: Tensor, dtype: torch.dtype) -> Tensor:
    """Fair +1 / -1 signs (+1 where ``uniform < 0.5``), same shape as the U[0, 1) draws ``uniform``."""
    return torch.where(uniform < 0.5, 1.0, -1.0).to(dtype)


def gumbel_from_uniform(u: Tensor) -> Tensor:
    """Standard Gumbel noise ``-log(-log u)`` from U[0, 1) draws ``u`` (any shape; u clamped away from 0)."""
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


def logistic_from_uniform(u: Tensor) -> Tensor:
    """Standard logistic noise ``log u - log(1 - u)`` from U[0, 1) draws ``u`` (any shape; u clamped away
    from 0). ``1[logit(p) + l > 0]`` is then Bernoulli(p), and ``sigmoid((logit(p) + l) / tau)`` its
    relaxation (Maddison et al. 2017)."""
    u = u.clamp_min(torch.finfo(u.dtype).tiny)
    return torch.log(u) - torch.log1p(-u)


def relaxed_log_one_hot(logits: Tensor, gumbels: Tensor, temperature: float) -> Tensor:
    """Log of the Gumbel-softmax sample (Jang et al. 2017; paper eq. 10)::

        u = softmax((logits + g) / tau),    log u = log_softmax((logits + g) / tau)

    The temperature divides ``logits + g`` once. (Dividing the logits by tau before adding the noise, as a
    public implementation did, samples ``argmax`` from ``softmax(logits / tau)`` instead of
    ``softmax(logits)``.) :meth:`madao_pl.augment.madao.MADAOPolicy.sample_stage` draws its relaxed
    selection with it; the straight-through factor ``exp(log u_i - stopgrad(log u_i))`` reads ``log u``.

    Args:
        logits: ``(N,)`` or ``(B, N)`` unnormalised log-probabilities ``pi``.
        gumbels: ``(..., B, N)`` standard Gumbel noise (leading dimensions broadcast, e.g. ``S`` draws).
        temperature: ``tau > 0``.

    Returns:
        ``(..., B, N)`` logs of points of the simplex; ``argmax`` is distributed as ``softmax(logits)`` for
        every tau.
    """
    return torch.log_softmax((logits + gumbels) / temperature, dim=-1)


def conditional_gumbels(logits: Tensor, index: Tensor, uniform: Tensor) -> Tensor:
    """Gumbel noise drawn given which entry won: ``g'`` with ``argmax(logits + g') = index``, distributed as
    ``g | argmax(logits + g) = index`` (the top-down construction of Maddison et al. 2014).

    The winning value ``M = logsumexp(logits) + G_0`` is independent of which entry wins; every other
    ``logits_k + g'_k`` is ``Gumbel(logits_k)`` truncated below ``M``, i.e.
    ``-logaddexp(-M, -(logits_k + G_k))``. The Gumbel-Rao estimator (Paulus et al. 2021) averages the
    straight-through gradient over such draws: same expectation, less variance. No gradient flows into
    the noise (``logits`` is detached here).

    Args:
        logits: ``(N,)`` or ``(B, N)`` unnormalised log-probabilities.
        index: ``(B,)`` long, the winning entry of each row.
        uniform: ``(S, B, N + 1)`` U[0, 1) draws (column N feeds ``G_0``).

    Returns:
        ``(S, B, N)`` noise; ``(logits + g').argmax(-1) == index`` for every draw.
    """
    num = uniform.shape[-1] - 1
    logits = logits.detach().expand(index.shape[0], num)
    gumbels = gumbel_from_uniform(uniform).to(logits.dtype)
    top = (torch.logsumexp(logits, dim=-1) + gumbels[..., num]).unsqueeze(-1)
    below = -torch.logaddexp(-top, -(logits + gumbels[..., :num]))
    winner = index.view(1, -1, 1).expand(uniform.shape[0], -1, 1)
    return below.scatter(-1, winner, top.expand_as(below)) - logits


def conditional_logistic(logit_p: Tensor, outcome: Tensor, uniform: Tensor) -> Tensor:
    """Logistic noise drawn given the Bernoulli outcome it produced: ``l'`` with
    ``1[logit_p + l' > 0] = outcome``, distributed as ``l | that event`` (inverse CDF on the part of
    ``(0, 1)`` that gives the outcome: ``l' = logit(F)``, ``F ~ U(sigmoid(-logit_p), 1)`` for outcome 1,
    ``U(0, sigmoid(-logit_p))`` for 0).

    Args:
        logit_p: ``(B,)`` ``logit(p)`` of the Bernoulli (detached here).
        outcome: ``(B,)`` 0 / 1 draws.
        uniform: ``(S, B)`` U[0, 1) draws.

    Returns:
        ``(S, B)`` noise, same dtype as ``logit_p``.
    """
    below = torch.sigmoid(-logit_p.detach())
    u = uniform.to(logit_p.dtype)
    cdf = torch.where(outcome > 0, below + u * (1 - below), u * below)
    tiny = torch.finfo(cdf.dtype).tiny
    return torch.logit(cdf.clamp(tiny, 1 - torch.finfo(cdf.dtype).eps))
