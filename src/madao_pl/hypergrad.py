"""Implicit hypergradients by Hessian-vector products (paper §3.1-3.2, eq. 3-6).

For a training loss ``f(theta, phi)`` and a validation loss ``g(theta)`` the implicit function
theorem at an inner optimum ``theta*(phi)`` gives

    dg/dphi = - d2f/dphi dtheta^T  H^{-1}  dg/dtheta,      H = d2f/dtheta2.

MADAO replaces ``H^{-1}`` by the truncated Neumann series ``alpha * sum_{j=0..J} (I - alpha H)^j``.
This module computes that product (and two oracles: conjugate gradient and a dense solve) from

- ``train_grads``: ``df/dtheta`` taken with ``torch.autograd.grad(..., create_graph=True)``, whose graph
  reaches both the network parameters ``theta`` and the hyperparameters ``phi``;
- ``val_grads``: ``dg/dtheta`` as plain tensors.

Every product with ``H`` is a Hessian-vector product by double backward through ``train_grads``; no
Hessian is ever stored except by ``method="exact"``, which is meant for small models and tests.

The functions never run a forward pass, so model state (BatchNorm running statistics) is untouched.
Their results carry no graph. Intermediate double-backward calls use ``retain_graph=True`` so the
caller's graph survives them; the final mixed derivative in :func:`implicit_hypergradient` also retains
the graph by default (``retain_graph=True``), so the caller owns it and frees it by dropping
``train_grads``; pass ``retain_graph=False`` to free the graph's buffers as soon as the hypergradient
is computed.

This module knows tensors and autograd only (no Lightning).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "HypergradInfo",
    "METHODS",
    "conjugate_gradient_inverse_hvp",
    "dense_hessian",
    "exact_inverse_hvp",
    "hessian_vector_product",
    "implicit_hypergradient",
    "neumann_binomial_inverse_hvp",
    "neumann_inverse_hvp",
]

METHODS: tuple[str, ...] = ("neumann", "cg", "exact")
"""Inverse-Hessian approximations accepted by :func:`implicit_hypergradient`."""


@dataclass
class HypergradInfo:
    """Diagnostics filled in by the functions of this module when passed as ``info``.

    Every call overwrites all fields, so one object can be reused across steps.

    Attributes:
        method: which inverse-HVP routine filled the object (``"neumann"``, ``"neumann-adaptive"``,
            ``"cg"`` or ``"exact"``).
        hvps: number of Hessian-vector products actually performed (double backward passes through
            ``train_grads`` with respect to the parameters). The final mixed derivative of
            :func:`implicit_hypergradient` is not counted.
        terms: Neumann: number of series terms summed (``steps + 1`` for the plain loop, ``k + 1``
            binomial terms ``w_0..w_k`` for the adaptive mode, ``steps + 1`` if it fell back to the
            loop); CG: iterations run; exact: size of the dense Hessian (number of parameters).
        remainder_estimate: plain Neumann: 0.0 (all ``steps + 1`` terms computed; the truncation of the
            infinite series is the caller's choice of ``steps``); adaptive Neumann: the estimated norm
            of the omitted terms of the ``steps``-term sum, in units of the result (times ``alpha``),
            0.0 when every term was computed; CG and exact: the norm of the residual ``v - H x``.
        breakdown: CG only: True when it met a direction of non-positive curvature (H not positive
            definite) and stopped early.
    """

    method: str = ""
    hvps: int = 0
    terms: int = 0
    remainder_estimate: float = 0.0
    breakdown: bool = False


def _fill(info: HypergradInfo | None, **fields: object) -> None:
    """Overwrite every field of ``info`` (defaults for those not given); no-op when ``info`` is None."""
    if info is None:
        return
    fresh = HypergradInfo(**fields)  # type: ignore[arg-type]
    for field in dataclasses.fields(HypergradInfo):
        setattr(info, field.name, getattr(fresh, field.name))


def _accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (reductions of half-precision tensors)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """Euclidean norm of ``tensors`` taken as one flattened vector (a 0-d tensor, no host sync)."""
    if len(tensors) == 0:
        return torch.zeros(())
    dtype = _accumulation_dtype(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=dtype) for t in tensors]))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two tensor tuples taken as flattened vectors (a 0-d tensor, no host sync)."""
    if len(a) == 0:
        return torch.zeros(())
    dtype = _accumulation_dtype(a)
    return torch.stack([torch.sum(x.to(dtype) * y.to(dtype)) for x, y in zip(a, b, strict=True)]).sum()


def _check_pairs(
    train_grads: Sequence[Tensor | None], params: Sequence[Tensor], name: str, vector: Sequence[Tensor]
) -> None:
    """Check lengths and shapes of ``train_grads``, ``params`` and a vector aligned with ``params``."""
    if len(train_grads) != len(params):
        raise ValueError(
            f"train_grads has {len(train_grads)} tensors but params has {len(params)}: pass df/dtheta "
            "for exactly the parameters it was taken with respect to, in the same order."
        )
    if len(vector) != len(params):
        raise ValueError(
            f"{name} has {len(vector)} tensors but params has {len(params)}: it must hold one tensor per "
            "parameter, in the same order."
        )
    for i, (g, p, v) in enumerate(zip(train_grads, params, vector, strict=True)):
        if not p.requires_grad:
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}) does not require grad: pass only the trainable "
                "parameters that train_grads was taken with respect to."
            )
        if g is not None and g.shape != p.shape:
            raise ValueError(
                f"train_grads[{i}] has shape {tuple(g.shape)} but params[{i}] has shape {tuple(p.shape)}."
            )
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)} but params[{i}] has shape {tuple(p.shape)}."
            )
    if not any(g is not None and g.requires_grad for g in train_grads):
        raise ValueError(
            "train_grads carries no autograd graph: compute it with "
            "torch.autograd.grad(loss, params, create_graph=True) so that Hessian-vector products exist."
        )


def _check_steps_alpha(steps: int, alpha: float) -> None:
    """Validate the Neumann/CG iteration count and the Neumann step size."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int (number of HVPs / iterations), got {steps!r}.")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(
            f"alpha must be a finite float > 0 (Neumann step; it converges for alpha < 2 / lambda_max(H)), "
            f"got {alpha!r}."
        )


def _prepare_vector(params: Sequence[Tensor], vector: Sequence[Tensor]) -> list[Tensor]:
    """Detach ``vector`` and cast each tensor to its parameter's dtype and device."""
    return [v.detach().to(dtype=p.dtype, device=p.device) for v, p in zip(vector, params, strict=True)]


def hessian_vector_product(
    train_grads: Sequence[Tensor | None], params: Sequence[Tensor], vector: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """Hessian-vector product ``H v`` by double backward through ``train_grads``.

    ``H v = d/dtheta <df/dtheta, v>`` is one ``torch.autograd.grad(train_grads, params, grad_outputs=vector,
    retain_graph=True)`` call; the graph survives it so the caller can take more products.

    Args:
        train_grads: ``df/dtheta`` per parameter, taken with ``create_graph=True``. ``None`` entries (or
            tensors without a graph) mean that gradient has no path to ``params``.
        params: the parameters ``theta`` (tensors requiring grad), aligned with ``train_grads``.
        vector: ``v``, one tensor per parameter with the parameter's shape.

    Returns:
        ``H v`` as a tuple aligned with ``params``, without graph; zeros where no path exists.
    """
    _check_pairs(train_grads, params, "vector", vector)
    outputs, grad_outputs = [], []
    for g, v in zip(train_grads, vector, strict=True):
        if g is not None and g.requires_grad:
            outputs.append(g)
            grad_outputs.append(v.to(dtype=g.dtype, device=g.device))
    products = torch.autograd.grad(
        outputs, list(params), grad_outputs=grad_outputs, retain_graph=True, allow_unused=True
    )
    return tuple(torch.zeros_like(p) if h is None else h for h, p in zip(products, params, strict=True))


def neumann_inverse_hvp(
    train_grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    alpha: float = 1e-3,
    steps: int = 5,
    tol: float = 0.0,
    info: HypergradInfo | None = None,
) -> tuple[Tensor, ...]:
    """Approximate ``H^{-1} v`` by the truncated Neumann series ``alpha * sum_{j=0..J} (I - alpha H)^j v``.

    With ``tol == 0`` (default) it runs the loop of the paper with exactly ``steps = J`` HVPs::

        v_0 = v;  p = v;  repeat J times: v = v - alpha * H v;  p = p + v;   return alpha * p

    (``v`` and the running sum ``p`` are separate tensors). With ``tol > 0`` it returns the same
    ``J``-term sum to within an estimated ``tol`` relative, with fewer HVPs when ``alpha * |H|`` is small; see
    :func:`neumann_binomial_inverse_hvp`. The series converges to ``H^{-1} v`` as ``J -> inf`` when
    ``0 < alpha < 2 / lambda_max(H)`` and ``H`` is positive definite.

    Args:
        train_grads: ``df/dtheta`` taken with ``create_graph=True`` (see :func:`hessian_vector_product`).
        params: parameters ``theta`` aligned with ``train_grads``.
        vector: ``v``, e.g. ``dg/dtheta``, aligned with ``params`` (detached and cast to each
            parameter's dtype).
        alpha: Neumann step, > 0.
        steps: ``J`` >= 0, the number of HVPs of the plain loop (``J + 1`` terms).
        tol: 0 for the plain loop; > 0 for the adaptive mode with this relative tolerance.
        info: optional :class:`HypergradInfo` filled in with the HVP count and remainder estimate.

    Returns:
        The approximation of ``H^{-1} v``, aligned with ``params``, without graph.
    """
    _check_steps_alpha(steps, alpha)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite float >= 0 (0 = plain Neumann loop), got {tol!r}.")
    if tol > 0:
        return neumann_binomial_inverse_hvp(
            train_grads, params, vector, alpha=alpha, steps=steps, tol=tol, info=info
        )
    _check_pairs(train_grads, params, "vector", vector)
    v = _prepare_vector(params, vector)
    p = [t.clone() for t in v]
    for _ in range(steps):
        hv = hessian_vector_product(train_grads, params, v)
        v = [vi - alpha * hi for vi, hi in zip(v, hv, strict=True)]
        p = [pi + vi for pi, vi in zip(p, v, strict=True)]
    _fill(info, method="neumann", hvps=steps, terms=steps + 1, remainder_estimate=0.0)
    return tuple(alpha * pi for pi in p)


def neumann_binomial_inverse_hvp(
    train_grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    alpha: float = 1e-3,
    steps: int = 5,
    tol: float = 0.0,
    safety: float = 2.0,
    info: HypergradInfo | None = None,
) -> tuple[Tensor, ...]:
    """The ``J``-term Neumann sum ``alpha * sum_{j=0..J} (I - alpha H)^j v`` with early stopping.

    Method. Expanding each power binomially and summing the columns of Pascal's triangle
    (hockey-stick identity ``sum_{j=i..J} C(j, i) = C(J+1, i+1)``) gives

        sum_{j=0..J} (I - aH)^j v = sum_{i=0..J} C(J+1, i+1) w_i,    w_0 = v,  w_{i+1} = -a H w_i,

    so each HVP adds one term ``w_i = (-aH)^i v``. When ``a |H|`` is small (MADAO: ``a = 1e-3``) the
    terms fall geometrically and the sum is settled after a few of them. After ``w_k`` (``k >= 1``) it
    estimates the omitted terms by ``|w_{i+1}| ~ rho |w_i|`` with ``rho = safety * r * growth``: ``r`` the
    largest ratio ``r_i = |w_i| / |w_{i-1}|`` seen and ``growth = r_k / r_{k-1}`` the latest growth of
    the ratios (taken as ``safety`` after the first HVP, when only one ratio is known). For symmetric
    ``H`` the ratios never decrease (``|w_i|^2 <= |w_{i-1}| |w_{i+1}|`` by Cauchy-Schwarz) and tend to
    the spectral radius of ``aH`` on the support of ``v``, so a single ratio underestimates the next
    ones (by about 2x on random vectors with neural-network Hessians), hence the growth and safety
    factors. The estimate is a heuristic, not a bound:

        tail_k = sum_{i>k} C(J+1, i+1) rho^{i-k} |w_k|  <=  t_{k+1} / (1 - q),
        t_{k+1} = C(J+1, k+2) rho |w_k|,   q = rho (J-k-1) / (k+3)

    (``q`` bounds the ratio of consecutive tail terms; with ``q >= 1`` the tail is taken as infinite).
    It stops when ``tail_k <= tol * |sum_{i<=k} C(J+1, i+1) w_i|``. With ``k = J`` the sum is exact, and
    with ``tol = 0`` it only stops early when a term is exactly zero (then all later ones are too).

    Numerical safety. The binomial coefficients grow like ``C(J+1, J/2)``; when the weighted terms
    ``C(J+1, i+1) |w_i|`` stop decreasing (``r (J-k) / (k+2) >= 1``: large ``J`` with ``a |H|`` not small)
    the alternating sum would cancel catastrophically, so it switches to the plain loop: it rebuilds the
    loop's state ``v_k = sum_{i<=k} C(k, i) w_i`` and ``p_k = sum_{i<=k} C(k+1, i+1) w_i`` from the
    stored terms and runs the remaining ``J - k`` steps, ``J`` HVPs in total, never more.

    Cost: at most ``steps`` HVPs; one host sync (``.item``) per term; memory of ``k + 1`` vectors the
    size of the parameters (the ``w_i``), released on return.

    Args:
        train_grads, params, vector: as in :func:`neumann_inverse_hvp`.
        alpha: Neumann step, > 0.
        steps: ``J`` >= 0.
        tol: relative tolerance >= 0 on the omitted part of the ``J``-term sum.
        safety: factor >= 1 on the extrapolated term ratio in the tail estimate (and the assumed growth
            of the ratio after the first HVP).
        info: optional :class:`HypergradInfo`; ``remainder_estimate`` is the estimated norm of the
            omitted terms in units of the result (including the factor ``alpha``).

    Returns:
        The approximation of ``alpha * sum_{j=0..J} (I - alpha H)^j v``, aligned with ``params``.
    """
    _check_steps_alpha(steps, alpha)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite float >= 0, got {tol!r}.")
    if not (isinstance(safety, (int, float)) and math.isfinite(safety) and safety >= 1):
        raise ValueError(f"safety must be a finite float >= 1, got {safety!r}.")
    _check_pairs(train_grads, params, "vector", vector)
    J = steps
    w = _prepare_vector(params, vector)
    terms = [w]
    coef = float(J + 1)  # C(J+1, 1)
    s = [coef * t for t in w]
    w_norm = _norm(w).item()
    ratio = 0.0
    latest = 0.0
    remainder = 0.0
    hvps = 0
    k = 0
    switch = False
    while k < J and w_norm > 0:
        hw = hessian_vector_product(train_grads, params, w)
        hvps += 1
        k += 1
        w = [-alpha * h for h in hw]
        terms.append(w)
        coef = coef * (J + 1 - k) / (k + 1)  # C(J+1, k+1)
        s = [si + coef * wi for si, wi in zip(s, w, strict=True)]
        if k == J:
            break
        new_norm, s_norm = torch.stack([_norm(w), _norm(s)]).tolist()
        previous, latest = latest, new_norm / w_norm
        growth = safety if k == 1 else max(1.0, latest / previous)
        ratio = max(ratio, latest)
        w_norm = new_norm
        rho = safety * ratio * growth
        c_next = coef * (J - k) / (k + 2)  # C(J+1, k+2)
        q = rho * (J - k - 1) / (k + 3)
        tail = c_next * rho * w_norm / (1.0 - q) if q < 1 else math.inf
        if tail <= tol * s_norm:
            remainder = alpha * tail
            break
        if ratio * (J - k) / (k + 2) >= 1 or not math.isfinite(c_next):
            switch = True
            break
    if switch:
        v = [sum(math.comb(k, i) * terms[i][n] for i in range(k + 1)) for n in range(len(w))]
        p = [sum(math.comb(k + 1, i + 1) * terms[i][n] for i in range(k + 1)) for n in range(len(w))]
        del terms, s
        for _ in range(J - k):
            hv = hessian_vector_product(train_grads, params, v)
            hvps += 1
            v = [vi - alpha * hi for vi, hi in zip(v, hv, strict=True)]
            p = [pi + vi for pi, vi in zip(p, v, strict=True)]
        _fill(info, method="neumann-adaptive", hvps=hvps, terms=J + 1, remainder_estimate=0.0)
        return tuple(alpha * pi for pi in p)
    _fill(info, method="neumann-adaptive", hvps=hvps, terms=k + 1, remainder_estimate=remainder)
    return tuple(alpha * si for si in s)


def conjugate_gradient_inverse_hvp(
    train_grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    steps: int = 5,
    tol: float = 1e-10,
    info: HypergradInfo | None = None,
) -> tuple[Tensor, ...]:
    """Solve ``H x = v`` by conjugate gradient from ``x = 0``, one HVP per iteration.

    Stops after ``steps`` iterations or when ``|v - H x| <= tol * |v|``. CG needs ``H`` symmetric
    positive definite; at the first direction ``p`` with ``p^T H p <= 0`` it stops, keeps the iterate
    reached so far (zero if on the first iteration) and sets ``info.breakdown``; use the Neumann series
    for non-convex training losses. One host sync per iteration.

    Args:
        train_grads, params, vector: as in :func:`neumann_inverse_hvp`.
        steps: maximum number of iterations (= HVPs), >= 0.
        tol: relative residual tolerance >= 0.
        info: optional :class:`HypergradInfo`; ``remainder_estimate`` is the final residual norm.

    Returns:
        The CG iterate ``x`` approximating ``H^{-1} v``, aligned with ``params``.
    """
    _check_steps_alpha(steps, 1.0)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"cg_tol must be a finite float >= 0 (relative residual), got {tol!r}.")
    _check_pairs(train_grads, params, "vector", vector)
    r = _prepare_vector(params, vector)
    x = [torch.zeros_like(t) for t in r]
    p = [t.clone() for t in r]
    rr = _dot(r, r)
    rr_value = rr.item()
    stop = tol * tol * rr_value
    hvps = 0
    breakdown = False
    while hvps < steps and rr_value > stop:
        hp = hessian_vector_product(train_grads, params, p)
        hvps += 1
        php = _dot(p, hp)
        step = rr / php
        x_new = [xi + (step * pi).to(xi.dtype) for xi, pi in zip(x, p, strict=True)]
        r_new = [ri - (step * hi).to(ri.dtype) for ri, hi in zip(r, hp, strict=True)]
        rr_new = _dot(r_new, r_new)
        php_value, rr_new_value = torch.stack([php, rr_new]).tolist()
        if not php_value > 0:
            breakdown = True
            break
        x, r = x_new, r_new
        beta = rr_new / rr
        p = [ri + (beta * pi).to(ri.dtype) for ri, pi in zip(r, p, strict=True)]
        rr, rr_value = rr_new, rr_new_value
    _fill(
        info,
        method="cg",
        hvps=hvps,
        terms=hvps - int(breakdown),
        remainder_estimate=math.sqrt(rr_value),
        breakdown=breakdown,
    )
    return tuple(x)


def dense_hessian(
    train_grads: Sequence[Tensor | None], params: Sequence[Tensor], *, info: HypergradInfo | None = None
) -> Tensor:
    """Dense Hessian ``H`` (``n x n``, ``n`` = total number of parameter elements), one HVP per column.

    Columns follow the parameters in order, each flattened in row-major order. The result is
    symmetrised (``(H + H^T) / 2``) to remove rounding asymmetry. For small models and tests only.
    """
    if len(train_grads) != len(params):
        raise ValueError(f"train_grads has {len(train_grads)} tensors but params has {len(params)}.")
    n = sum(p.numel() for p in params)
    columns = []
    for j in range(n):
        basis = torch.zeros(n, dtype=params[0].dtype, device=params[0].device)
        basis[j] = 1
        columns.append(_flatten(hessian_vector_product(train_grads, params, _unflatten(basis, params))))
    _fill(info, method="exact", hvps=n, terms=n)
    hessian = torch.stack(columns, dim=1) if columns else torch.zeros(0, 0, dtype=params[0].dtype)
    return 0.5 * (hessian + hessian.T)


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: Tensor, like: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Split a flat vector into tensors shaped (and typed) like ``like``."""
    pieces = torch.split(flat, [t.numel() for t in like])
    return tuple(piece.reshape(t.shape).to(t.dtype) for piece, t in zip(pieces, like, strict=True))


def exact_inverse_hvp(
    train_grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    max_params: int = 5000,
    info: HypergradInfo | None = None,
) -> tuple[Tensor, ...]:
    """``H^{-1} v`` by building the dense Hessian (:func:`dense_hessian`) and ``torch.linalg.solve``.

    Costs ``n`` HVPs and ``n^2`` memory for ``n`` parameter elements, so it refuses ``n > max_params``.
    An oracle for tests and small models.

    Raises:
        ValueError: more than ``max_params`` parameters, or a singular Hessian.
    """
    _check_pairs(train_grads, params, "vector", vector)
    n = sum(p.numel() for p in params)
    if n > max_params:
        raise ValueError(
            f"method='exact' builds a dense {n} x {n} Hessian, but the parameters have {n} elements, above "
            f"the limit max_exact_params={max_params}: use method='neumann' or method='cg' (or raise "
            "max_exact_params for a small model)."
        )
    v = _flatten(_prepare_vector(params, vector))
    hessian = dense_hessian(train_grads, params)
    try:
        x = torch.linalg.solve(hessian, v)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            "method='exact': the Hessian d2f/dtheta2 is singular, so H^{-1} does not exist; regularise the "
            "training loss (e.g. weight decay) or use method='neumann'."
        ) from error
    residual = torch.linalg.vector_norm(v - hessian @ x).item()
    _fill(info, method="exact", hvps=n, terms=n, remainder_estimate=residual)
    return _unflatten(x, params)


def implicit_hypergradient(
    train_grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    hparams: Sequence[Tensor],
    val_grads: Sequence[Tensor],
    *,
    alpha: float = 1e-3,
    steps: int = 5,
    method: str = "neumann",
    tol: float = 0.0,
    cg_tol: float = 1e-10,
    max_exact_params: int = 5000,
    retain_graph: bool = True,
    info: HypergradInfo | None = None,
) -> tuple[Tensor, ...]:
    """Implicit hypergradient ``-d2f/dphi dtheta^T H^{-1} dg/dtheta`` (paper eq. 3-6).

    First ``x ~ H^{-1} dg/dtheta`` by ``method``, then the mixed derivative as one vector-Jacobian
    product ``-autograd.grad(train_grads, hparams, grad_outputs=x)``. Descending along the result lowers
    the validation loss (to first order, at an inner optimum).

    Args:
        train_grads: ``df/dtheta`` taken with ``create_graph=True``; its graph must reach ``params`` and
            ``hparams``. ``None`` entries mean no path.
        params: network parameters ``theta`` aligned with ``train_grads``.
        hparams: hyperparameters ``phi`` (tensors requiring grad).
        val_grads: ``dg/dtheta`` aligned with ``params`` (detached before use).
        alpha: Neumann step, > 0 (``method="neumann"``).
        steps: Neumann ``J`` (HVPs of the plain loop) or CG iterations, >= 0.
        method: ``"neumann"`` (truncated series, MADAO), ``"cg"`` (conjugate gradient, needs positive
            definite H) or ``"exact"`` (dense solve, small models only).
        tol: Neumann adaptive tolerance; 0 = plain loop (see :func:`neumann_binomial_inverse_hvp`).
        cg_tol: CG relative residual tolerance.
        max_exact_params: ``method="exact"`` refuses more parameter elements than this.
        retain_graph: keep the caller's graph after the final mixed derivative (default True: the caller
            frees it by dropping ``train_grads``); False frees its buffers right away.
        info: optional :class:`HypergradInfo` filled by the inverse-HVP routine (``hvps`` excludes the
            final mixed derivative).

    Returns:
        One tensor per hyperparameter, same shape and dtype, without graph; zeros where ``f`` does not
        depend on that hyperparameter through ``train_grads``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(repr(m) for m in METHODS)}.")
    _check_steps_alpha(steps, alpha)
    for name, value in (("tol", tol), ("cg_tol", cg_tol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite float >= 0, got {value!r}.")
    if len(train_grads) != len(params):
        raise ValueError(
            f"train_grads has {len(train_grads)} tensors but params has {len(params)}: pass df/dtheta "
            "for exactly the parameters it was taken with respect to, in the same order."
        )
    if len(val_grads) != len(params):
        raise ValueError(
            f"val_grads has {len(val_grads)} tensors but params has {len(params)}: pass dg/dtheta for the "
            "same parameters, in the same order."
        )
    for i, h in enumerate(hparams):
        if not h.requires_grad:
            raise ValueError(
                f"hparams[{i}] (shape {tuple(h.shape)}) does not require grad: hyperparameters must be "
                "leaf tensors with requires_grad=True (or tensors computed from them)."
            )
    if len(hparams) == 0:
        _fill(info, method=method)
        return ()
    if method == "neumann":
        x = neumann_inverse_hvp(train_grads, params, val_grads, alpha=alpha, steps=steps, tol=tol, info=info)
    elif method == "cg":
        x = conjugate_gradient_inverse_hvp(train_grads, params, val_grads, steps=steps, tol=cg_tol, info=info)
    else:
        x = exact_inverse_hvp(train_grads, params, val_grads, max_params=max_exact_params, info=info)
    outputs, grad_outputs = [], []
    for g, xi in zip(train_grads, x, strict=True):
        if g is not None and g.requires_grad:
            outputs.append(g)
            grad_outputs.append(xi.to(dtype=g.dtype))
    mixed = torch.autograd.grad(
        outputs, list(hparams), grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
    )
    return tuple(torch.zeros_like(h) if m is None else -m for m, h in zip(mixed, hparams, strict=True))
