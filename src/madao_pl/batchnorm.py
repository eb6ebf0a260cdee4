"""Train-mode BatchNorm with closed-form forward-mode derivatives of its forward *and* its backward.

Forward-over-reverse products (:mod:`madao_pl.segmented`) take ``jvp`` of ``vjp`` of every layer. PyTorch has
no forward-mode formula of BatchNorm's backward: it traces the decomposed backward op by op, many small
kernels per BatchNorm layer, and the networks here have one after nearly every convolution, so these weigh
on every segmented product (its measured cost: ``madao_segmented`` in ``benchmarks/README.md``). Here both
derivatives are written out per channel over the ``N = B * H * W`` values, with ``x_hat = (x - mean) r``,
``r = (var + eps)^(-1/2)`` (biased variance) and the operator ``P(z) = z - mean(z) - x_hat mean(x_hat z)``,
self-adjoint under the sum over the channel:

- forward ``y = gamma x_hat + beta``; its tangent ``dy = dgamma x_hat + gamma r P(dx) + dbeta``;
- backward of a cotangent ``g``: ``gx = gamma r P(g)``, ``ggamma = sum g x_hat``, ``gbeta = sum g``;
- the backward's tangent along ``(dg, dx, dgamma)``, with ``dx_hat = r P(dx)``,
  ``dr = -r^2 mean(x_hat dx)`` and ``m = mean(x_hat g)``:
  ``dgx = (dgamma r + gamma dr) P(g) + gamma r (P(dg) - m dx_hat - x_hat mean(dx_hat g))``,
  ``dggamma = sum (dg x_hat + g dx_hat)``, ``dgbeta = sum dg``.

``r P(z)`` (with ``sum z x_hat`` and ``sum z``) is one call of ATen's fused ``native_batch_norm_backward``
with no weight, so the whole tangent of the backward is three fused kernels and a few elementwise ops. The
forward's statistics ``mean`` and ``r`` (one fused ``native_batch_norm``) are kept and passed on to the
backward, and the backward keeps ``r P(g)`` for its tangent: no statistic is reduced twice, and ``x_hat`` is
one elementwise kernel where a tangent needs it.
:func:`closed_form_batch_norm` puts these in place of ``F.batch_norm`` for train-mode calls that use batch
statistics without running ones (how :mod:`madao_pl.segmented` runs BatchNorm); any other call is left as
it is. Reverse-over-reverse through the backward is not provided (it raises). Exactness:
``tests/test_batchnorm.py`` compares with PyTorch's own derivatives in float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["closed_form_batch_norm"]


def _channel(v: Tensor, x: Tensor) -> Tensor:
    """``(C,)`` -> ``(1, C, 1, ...)`` broadcastable against ``x``."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def _x_hat(x: Tensor, mean: Tensor, r: Tensor) -> Tensor:
    """``x_hat = (x - mean) r = x r - mean r``: one fused elementwise kernel from the kept statistics."""
    return torch.addcmul(_channel(-mean * r, x), x, _channel(r, x))


def _project(
    z: Tensor, x: Tensor, mean: Tensor, r: Tensor, eps: float, weight: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(weight r P(z), sum z x_hat, sum z)`` by one fused ATen kernel (see the module doc)."""
    return torch.ops.aten.native_batch_norm_backward(z, x, weight, None, None, mean, r, True, eps, [True] * 3)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-channel ``sum a b`` ``(C,)``, by the same fused kernel (``b`` as an input of mean 0 and r 1)."""
    zero, one = a.new_zeros(a.shape[1]), a.new_ones(a.shape[1])
    return torch.ops.aten.native_batch_norm_backward(
        a, b, None, None, None, zero, one, True, 0.0, [False, True, False]
    )[1]


class _BatchNormBackward(torch.autograd.Function):
    """``(g, x, gamma; mean, r) -> (gx, ggamma, gbeta; r P(g))``: train-mode BatchNorm's backward, with its
    tangent. ``mean`` and ``r`` are the forward's statistics of ``x``, passed in so that they are not
    reduced again: the tangent takes their dependence on ``x`` through ``dx`` (it ignores theirs), and the
    last output, kept for the tangent, has none."""

    @staticmethod
    def forward(
        g: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, r: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        rpg, ggamma, gbeta = _project(g, x, mean, r, eps)
        return rpg * _channel(gamma, x), ggamma, gbeta, rpg

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        g, x, gamma, mean, r, eps = inputs
        _, ggamma, _, rpg = output
        ctx.mark_non_differentiable(rpg)
        ctx.save_for_forward(g, x, gamma, mean, r, ggamma, rpg)
        ctx.eps = eps

    @staticmethod
    def jvp(ctx: Any, dg: Tensor, dx: Tensor, dgamma: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor, None]:
        g, x, gamma, mean, r, gx_hat, rpg = ctx.saved_tensors
        eps, n = ctx.eps, x.numel() // x.shape[1]
        x_hat = _x_hat(x, mean, r)
        rpdg, dgx_hat, dgsum = _project(dg, x, mean, r, eps)
        dx_hat, dxx_hat, _ = _project(dx, x, mean, r, eps)
        g_dx_hat = _dot(g, dx_hat)
        dr_over_r = -r * dxx_hat / n
        dgx = rpg * _channel(dgamma + gamma * dr_over_r, x)
        dgx.addcmul_(rpdg, _channel(gamma, x))
        dgx.addcmul_(dx_hat, _channel(-gamma * r * gx_hat / n, x))
        dgx.addcmul_(x_hat, _channel(-gamma * r * g_dx_hat / n, x))
        return dgx, dgx_hat + g_dx_hat, dgsum, None

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> None:
        raise NotImplementedError(
            "closed_form_batch_norm: reverse-mode derivatives of BatchNorm's backward are not implemented "
            "(it serves forward-over-reverse products only)"
        )


class _BatchNorm(torch.autograd.Function):
    """``(x, gamma, beta) -> (y; mean, r)``: train-mode BatchNorm on batch statistics, with closed-form
    derivatives; the statistics (no derivatives) are kept for them."""

    @staticmethod
    def forward(x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        return torch.ops.aten.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, gamma, _, eps = inputs
        _, mean, r = output
        ctx.mark_non_differentiable(mean, r)
        ctx.save_for_backward(x, gamma, mean, r)
        ctx.save_for_forward(x, gamma, mean, r)
        ctx.eps = eps

    @staticmethod
    def backward(ctx: Any, g: Tensor, *_: Any) -> tuple[Tensor, Tensor, Tensor, None]:
        x, gamma, mean, r = ctx.saved_tensors
        gx, ggamma, gbeta, _ = _BatchNormBackward.apply(g, x, gamma, mean, r, ctx.eps)
        return gx, ggamma, gbeta, None

    @staticmethod
    def jvp(ctx: Any, dx: Tensor, dgamma: Tensor, dbeta: Tensor, _: None) -> tuple[Tensor, None, None]:
        x, gamma, mean, r = ctx.saved_tensors
        dy = _project(dx, x, mean, r, ctx.eps, gamma)[0]
        dy.addcmul_(_x_hat(x, mean, r), _channel(dgamma, x))
        return dy.add_(_channel(dbeta, x)), None, None


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _ClosedForm(TorchFunctionMode):
    """Sends ``F.batch_norm`` calls in train mode, on batch statistics, with weight and bias, to
    :class:`_BatchNorm`; every other call runs as it is."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = {**dict(zip(_BATCH_NORM_ARGS, args, strict=False)), **kwargs}
            batch_statistics = bound.get("running_mean") is None and bound.get("running_var") is None
            affine = bound.get("weight") is not None and bound.get("bias") is not None
            if batch_statistics and affine and bound.get("training"):
                return _BatchNorm.apply(
                    bound["input"], bound["weight"], bound["bias"], bound.get("eps", 1e-5)
                )[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def closed_form_batch_norm() -> Iterator[None]:
    """Inside, train-mode BatchNorm on batch statistics uses the closed-form derivatives (module doc)."""
    with _ClosedForm():
        yield
