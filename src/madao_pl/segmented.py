"""Second-order products of a segmented network, one segment's activations at a time (exact).

The hyper step needs ``H u = d2f/dtheta2 u`` and the input product ``d/dx <df/dtheta, u>`` of
``f(theta) = loss(net(x), y)``. The double backward of a ``create_graph`` gradient keeps the whole network's
forward *and* backward activations alive and peaks on top of them: about three training steps' memory.
Here the network is a chain of segments ``net = S_L o ... o S_1`` (its blocks) and each product is taken by
forward-over-reverse (Pearlmutter's R-operator), checkpointed at the segment boundaries:

1. forward, segment by segment, of the activations and their tangents along ``u``:
   ``(a_{l+1}, da_{l+1}) = jvp(S_l, (a_l, theta_l), (da_l, u_l))``, keeping only ``(a_l, da_l)``;
2. the loss gradient and its tangent at the logits ``z = a_L``: ``(d_L, dd_L) = jvp(grad_z loss, z, dz)``;
3. backward, segment by segment: the segment's vector-Jacobian product ``(d_l, g_l) = S_l'^T d_{l+1}`` and
   its tangent ``(dd_l, (H u)_l)``, by ``jvp`` of ``vjp`` from the kept boundary, its internals recomputed
   and freed before the next segment.

``(H u)_l`` is the tangent of ``df/dtheta_l``, and the tangent ``dd_0`` of ``df/dx`` is
``d2f/dx dtheta u = d/dx <df/dtheta, u>`` (second derivatives commute): one pass gives both, and a pass
that needs one of them skips the work only the other needs (the input gradient of the first segment; the
parameter gradients). The primal ``g_l`` of step 3 is ``df/dtheta_l`` itself: the first pass keeps it
(:attr:`SegmentedProducts.gradient`; a first pass asked for the input product alone then takes the
parameters' backward too), so the hyper step needs no backward of its own.
The peak is the boundaries (two tensors per segment) plus one segment's internals, instead of all of them
three times. BatchNorm's derivatives are taken in closed form (:mod:`madao_pl.batchnorm`; PyTorch traces
the forward-mode derivative of its backward op by op). Exact up to rounding (``tests/test_segmented.py``
compares it with the double backward).

BatchNorm layers in train mode run on batch statistics as before but do not update their running
statistics here (``track_running_stats`` is switched off during the products and restored), so only the
ordinary first-order forward updates them. The segments' forwards run more than once, so a network with
randomness in its forward (dropout) does not give the same function each time: use dropout 0 with it.

This module knows tensors and modules only (no Lightning, no augmentation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from madao_pl.batchnorm import closed_form_batch_norm

__all__ = ["SegmentedProducts", "check_segments"]

Vector = tuple[Tensor, ...]


@contextlib.contextmanager
def _batch_statistics_untracked(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Train-mode BatchNorm layers of ``modules`` use batch statistics without updating running ones."""
    switched = [
        m
        for segment in modules
        for m in segment.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


def check_segments(segments: Sequence[nn.Module], params: Sequence[Tensor]) -> None:
    """``ValueError`` unless the trainable parameters ``params`` are exactly those of ``segments``."""
    inside = {id(p) for s in segments for p in s.parameters() if p.requires_grad}
    wanted = {id(p) for p in params}
    if inside != wanted:
        raise ValueError(
            f"the network's segments hold {len(inside - wanted)} trainable parameters the network does not "
            f"and miss {len(wanted - inside)} of its {len(wanted)}: segments() must split the network's "
            "forward into consecutive modules that together use all of its parameters"
        )


class SegmentedProducts:
    """``H u`` and ``d/dx <df/dtheta, u>`` of ``f = loss(S_L(... S_1(x)), y)`` by checkpointed
    forward-over-reverse (see the module doc).

    Args:
        segments: the network as consecutive modules; ``x -> S_1 -> ... -> S_L -> logits``.
        params: the trainable parameters ``theta`` the products are aligned with (all of the segments').
        inputs: ``(B, ...)`` the (normalised, augmented) input batch ``x``.
        labels: the targets of ``loss``.
        loss: ``(logits, labels) -> 0-d`` loss (default: the mean cross-entropy).
    """

    def __init__(
        self,
        segments: Sequence[nn.Module],
        params: Sequence[Tensor],
        inputs: Tensor,
        labels: Tensor,
        loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> None:
        if labels is None:
            raise ValueError(
                "labels: segmented products take f = the cross-entropy of the network's logits against "
                "labels, and this f has none (a self-supervised loss): use the kept or recomputed graph"
            )
        check_segments(segments, params)
        self.segments, self.params = list(segments), list(params)
        self.inputs, self.labels, self.loss = inputs.detach(), labels, loss
        self.loss_value: Tensor | None = None  # f at theta, from the last product's forward
        self.gradient: Vector | None = None  # df/dtheta aligned with params, from the first product

    def _trainable(self, segment: nn.Module) -> tuple[list[str], list[Tensor]]:
        named = [(n, p) for n, p in segment.named_parameters() if p.requires_grad]
        return [n for n, _ in named], [p for _, p in named]

    def __call__(
        self, u: Sequence[Tensor], *, parameters: bool = True, inputs: bool = True
    ) -> tuple[Vector | None, Tensor | None]:
        """``(H u aligned with params, d/dx <df/dtheta, u> shaped like inputs)`` for ``u`` aligned with
        ``params``; ``parameters=False`` or ``inputs=False`` skips that product (None in its place) and the
        backward work only it needs. The first call also keeps the first-order gradient ``df/dtheta`` (its
        primal backward, so it takes the parameters' backward even if asked for the input product alone) in
        :attr:`gradient`."""
        if not (parameters or inputs):
            raise ValueError("SegmentedProducts: ask for at least one of parameters and inputs")
        parameters = parameters or self.gradient is None
        tangent = {id(p): t.to(p.dtype) for p, t in zip(self.params, u, strict=True)}
        products: dict[int, Tensor] = {}
        gradient: dict[int, Tensor] = {}
        with _batch_statistics_untracked(self.segments), closed_form_batch_norm(), torch.no_grad():
            a, da = self.inputs, torch.zeros_like(self.inputs)
            kept = []
            for segment in self.segments:
                names, ps = self._trainable(segment)

                def forward(x: Tensor, *theta: Tensor, segment=segment, names=names) -> Tensor:
                    return functional_call(segment, dict(zip(names, theta, strict=True)), (x,))

                kept.append((a, da))
                a, da = jvp(forward, (a, *ps), (da, *(tangent[id(p)] for p in ps)))

            def loss_gradient(logits: Tensor) -> Tensor:
                value, pullback = vjp(lambda z: self.loss(z, self.labels), logits)
                return pullback(torch.ones_like(value))[0]

            self.loss_value = self.loss(a, self.labels)
            d, dd = jvp(loss_gradient, (a,), (da,))
            del a, da
            for index in reversed(range(len(self.segments))):
                segment = self.segments[index]
                a_in, da_in = kept.pop()  # each boundary is freed once its segment is done
                names, ps = self._trainable(segment)
                wrt_x = inputs or index > 0 or not ps  # a segment without parameters: its input only

                def backward(
                    x: Tensor, cotangent: Tensor, *theta: Tensor, segment=segment, names=names, wrt_x=wrt_x
                ):
                    def forward(x: Tensor, *theta: Tensor) -> Tensor:
                        return functional_call(segment, dict(zip(names, theta, strict=True)), (x,))

                    if not parameters:
                        return vjp(lambda x: forward(x, *theta), x)[1](cotangent)
                    if not wrt_x:
                        return vjp(lambda *theta: forward(x, *theta), *theta)[1](cotangent)
                    return vjp(forward, x, *theta)[1](cotangent)

                primals, tangents = jvp(backward, (a_in, d, *ps), (da_in, dd, *(tangent[id(p)] for p in ps)))
                if wrt_x:
                    (d, *primals), (dd, *tangents) = primals, tangents
                if parameters:
                    for p, g, t in zip(ps, primals, tangents, strict=True):
                        products[id(p)] = t if id(p) not in products else products[id(p)] + t
                        gradient[id(p)] = g if id(p) not in gradient else gradient[id(p)] + g
        if self.gradient is None:
            self.gradient = tuple(gradient[id(p)] for p in self.params)
        hessian = tuple(products[id(p)] for p in self.params) if parameters else None
        return hessian, dd if inputs else None
