"""Implicit hypergradients from a Hessian-vector-product callable (paper §3.1-3.2, eq. 3-6).

For a training loss ``f(theta, phi)`` and a validation loss ``g(theta)`` the implicit function theorem at
an inner optimum ``theta*(phi)`` gives

    dg/dphi = - d2f/dphi dtheta^T  H^{-1}  dg/dtheta,      H = d2f/dtheta2.

:func:`implicit_hypergradient` is the one way this package computes it: a *solver* approximates
``x ~ H^{-1} v`` for ``v = dg/dtheta`` from products ``hvp(u) = H u`` only, then the mixed derivative
``mixed_vjp(x) = d2f/dphi dtheta^T x`` is negated. Solvers (each with its equation in its docstring):

- :func:`neumann`: the paper's truncated series ``alpha sum_{j=0..J} (I - alpha H)^j v``, ``J`` products;
- :func:`adaptive_neumann`: the same ``J``-term sum, stopped once the remaining terms are below ``tol``;
- :func:`curvature_scaled_neumann`: either series with ``alpha = c / |lambda_max(H)|`` from
  :func:`top_eigenvalue` (power iteration), so that ``alpha`` follows the network's curvature;
- :func:`conjugate_gradient`: CG on ``H x = v`` (needs ``H`` positive definite);
- :func:`exact`: a dense solve, for tiny networks and tests.

Vectors are tuples of tensors aligned with the parameters. :func:`second_order_vjp` turns a gradient
taken with ``create_graph=True`` into such products: ``H u`` when differentiated with respect to
``theta``, the mixed derivative when with respect to ``phi`` (or anything ``phi`` flows through). No
Hessian is ever stored except by :func:`exact`. Arguments (``alpha > 0``, ``steps >= 0`` ...) are checked
once, by :class:`madao_pl.hyperstep.HyperStepConfig`, which also builds the solver; called directly, these
functions trust them.

This module knows tensors and autograd only (no Lightning, no networks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "HVP",
    "Solver",
    "SolveInfo",
    "adaptive_neumann",
    "conjugate_gradient",
    "curvature_scaled_neumann",
    "dense_hessian",
    "exact",
    "implicit_hypergradient",
    "neumann",
    "second_order_vjp",
    "top_eigenvalue",
]

Vector = tuple[Tensor, ...]
HVP = Callable[[Vector], Vector]
"""``u -> H u``: one Hessian-vector product, the only access a solver has to ``H``."""


@dataclass(frozen=True)
class SolveInfo:
    """What a solver did.

    Attributes:
        method: ``"neumann"``, ``"neumann-adaptive"``, ``"neumann-curvature"``, ``"cg"`` or ``"exact"``.
        hvps: Hessian-vector products performed (calls of ``hvp``).
        terms: Neumann: series terms summed; CG: iterations; exact: size of the dense Hessian.
        remainder: adaptive Neumann: estimated norm of the omitted terms (in units of the result, 0 when
            all were summed); CG and exact: the residual norm ``|v - H x|``; plain Neumann: 0.
        breakdown: CG met a direction of non-positive curvature and stopped early.
        alpha: the Neumann series' ``alpha`` (curvature-scaled: the one chosen), else ``None``.
    """

    method: str
    hvps: int
    terms: int
    remainder: float = 0.0
    breakdown: bool = False
    alpha: float | None = None


Solver = Callable[[HVP, Vector], tuple[Vector, SolveInfo]]
"""``(hvp, v) -> (x ~ H^{-1} v, info)``; built by ``HyperStepConfig.solver()`` or ``functools.partial``."""


def second_order_vjp(grads: Sequence[Tensor | None], wrt: Sequence[Tensor], *, retain_graph: bool = True):
    """``u -> d/dwrt <grads, u>``: a vector-Jacobian product through a gradient's own graph.

    With ``grads = df/dtheta`` taken with ``create_graph=True`` this is ``H u`` for ``wrt = theta`` and the
    mixed derivative ``d2f/dwrt dtheta^T u`` for any other ``wrt`` the graph reaches. Entries of ``grads``
    without a graph (or ``None``) contribute nothing; results without a path are zeros. ``retain_graph``
    keeps the graph for further products (False frees its buffers on the first call).

    Returns:
        A function taking ``u`` aligned with ``grads`` and returning a tuple aligned with ``wrt``.
    """
    wrt = list(wrt)

    def product(u: Vector) -> Vector:
        pairs = [
            (g, x.to(g.dtype)) for g, x in zip(grads, u, strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:
            return tuple(torch.zeros_like(w) for w in wrt)
        outputs, grad_outputs = zip(*pairs, strict=True)
        result = torch.autograd.grad(
            outputs, wrt, grad_outputs=grad_outputs, retain_graph=retain_graph, allow_unused=True
        )
        return tuple(torch.zeros_like(w) if r is None else r for r, w in zip(result, wrt, strict=True))

    return product


def _norm(vector: Vector) -> Tensor:
    """Euclidean norm of a tuple of tensors taken as one vector (0-d tensor, float64 accumulation)."""
    return torch.sqrt(sum((t.double() ** 2).sum() for t in vector))


def _dot(a: Vector, b: Vector) -> Tensor:
    """Inner product of two tuples of tensors taken as flat vectors (0-d tensor, float64 accumulation)."""
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True))


def neumann(hvp: HVP, v: Vector, *, alpha: float, steps: int) -> tuple[Vector, SolveInfo]:
    """``H^{-1} v ~ alpha sum_{j=0..J} (I - alpha H)^j v`` with ``J = steps`` products (paper eq. 6).

    The loop keeps the term ``v_j`` and the running sum ``p`` as separate tensors (aliasing them returns
    ``2^J`` times the last term, a mistake of public code)::

        v_0 = v;  p = v;  repeat J times: v_j = v_{j-1} - alpha H v_{j-1};  p = p + v_j;   x = alpha p

    It converges to ``H^{-1} v`` as ``J -> inf`` for positive definite ``H``
    and ``0 < alpha < 2 / lambda_max``.
    """
    total = _neumann_terms(hvp, v, tuple(t.clone() for t in v), alpha=alpha, steps=steps)
    return tuple(alpha * p for p in total), SolveInfo("neumann", hvps=steps, terms=steps + 1)


def _neumann_terms(hvp: HVP, term: Vector, total: Vector, *, alpha: float, steps: int) -> Vector:
    """``steps`` more terms of :func:`neumann`'s loop from the term ``v_j`` and the sum ``p`` so far: the
    new sum (not yet times ``alpha``)."""
    for _ in range(steps):
        term = tuple(t - alpha * h for t, h in zip(term, hvp(term), strict=True))
        total = tuple(p + t for p, t in zip(total, term, strict=True))
    return total


def adaptive_neumann(
    hvp: HVP, v: Vector, *, alpha: float, steps: int, tol: float, safety: float = 2.0
) -> tuple[Vector, SolveInfo]:
    """The ``J``-term Neumann sum of :func:`neumann`, stopped once the rest is below ``tol`` relative.

    Summing the binomial expansion of each power by columns (``sum_{j=i..J} C(j, i) = C(J+1, i+1)``)::

        sum_{j=0..J} (I - aH)^j v = sum_{i=0..J} C(J+1, i+1) w_i,     w_0 = v,  w_{i+1} = -a H w_i,

    so each product adds one term ``w_i = (-aH)^i v``; with ``a |H|`` small (MADAO: ``a = 1e-3``) they fall
    geometrically. After ``w_k`` the omitted terms are estimated by ``|w_{i+1}| ~ rho |w_i|``, ``rho =
    safety * r * growth`` (``r`` the largest ratio ``|w_i| / |w_{i-1}|`` seen, ``growth`` the latest growth of
    those ratios, taken as ``safety`` after one product): the tail ``t_{k+1} / (1 - q)`` with ``t_{k+1} =
    C(J+1, k+2) rho |w_k|`` and ``q = rho (J-k-1) / (k+3)`` (infinite for ``q >= 1``). It stops when the tail
    is at most ``tol`` times the partial sum; a heuristic, not a bound (for symmetric ``H`` the ratios never
    decrease and tend to the spectral radius of ``aH``, hence the growth and safety factors). When the
    weighted terms stop shrinking (``r (J-k) / (k+2) >= 1``) the alternating sum would cancel badly, so it
    rebuilds the plain loop's state from the stored terms and finishes with :func:`neumann`'s recursion:
    never more than ``J`` products. One host sync per product.
    """
    J, w, terms = steps, v, [v]
    total = tuple((J + 1) * t for t in v)
    coef, w_norm, ratio, latest, k = float(J + 1), float(_norm(v)), 0.0, 0.0, 0
    while k < J and w_norm > 0:
        k += 1
        w = tuple(-alpha * h for h in hvp(w))
        terms.append(w)
        coef = coef * (J + 1 - k) / (k + 1)  # C(J+1, k+1)
        total = tuple(s + coef * t for s, t in zip(total, w, strict=True))
        if k == J:
            break
        new_norm, total_norm = torch.stack([_norm(w), _norm(total)]).tolist()
        previous, latest = latest, new_norm / w_norm
        ratio, w_norm = max(ratio, latest), new_norm
        rho = safety * ratio * (safety if k == 1 else max(1.0, latest / previous))
        q = rho * (J - k - 1) / (k + 3)
        tail = coef * (J - k) / (k + 2) * rho * w_norm / (1.0 - q) if q < 1 else math.inf
        if tail <= tol * total_norm:
            return tuple(alpha * s for s in total), SolveInfo("neumann-adaptive", k, k + 1, alpha * tail)
        if ratio * (J - k) / (k + 2) >= 1:
            term = _combination(terms, [math.comb(k, i) for i in range(k + 1)])  # v_k
            acc = _combination(terms, [math.comb(k + 1, i + 1) for i in range(k + 1)])  # v_0 + ... + v_k
            acc = _neumann_terms(hvp, term, acc, alpha=alpha, steps=J - k)
            return tuple(alpha * p for p in acc), SolveInfo("neumann-adaptive", J, J + 1)
    return tuple(alpha * s for s in total), SolveInfo("neumann-adaptive", k, k + 1)


def _combination(terms: list[Vector], coefficients: list[int]) -> Vector:
    """``sum_i coefficients[i] * terms[i]``, per tensor of the vectors."""
    return tuple(
        sum(c * term[n] for c, term in zip(coefficients, terms, strict=True)) for n in range(len(terms[0]))
    )


def top_eigenvalue(hvp: HVP, start: Vector, *, iterations: int) -> float:
    """``|lambda|`` of ``H``'s eigenvalue of largest magnitude, by ``iterations`` steps of power iteration.

    ``u_0 = start / |start|``; ``w = H u_i``; ``u_{i+1} = w / |w|``; the estimate is ``|w|`` of the last
    step, which rises to ``max |lambda_i|`` from below (for symmetric ``H`` and a start not orthogonal to
    that eigenvector). ``iterations`` products, one host sync each; 0 for a zero start or ``H u = 0``.
    """
    u, estimate = start, 0.0
    size = float(_norm(u))
    for _ in range(iterations):
        if size == 0:
            return 0.0
        u = tuple(t / size for t in u)
        u = hvp(u)
        size = float(_norm(u))
        estimate = size
    return estimate


def curvature_scaled_neumann(
    hvp: HVP, v: Vector, *, scale: float, steps: int, power_iterations: int, tol: float = 0.0
) -> tuple[Vector, SolveInfo]:
    """The ``J``-term Neumann series with ``alpha = scale / |lambda_max(H)|`` (plain, or adaptive if ``tol``).

    ``|lambda_max|`` comes from :func:`top_eigenvalue` started at ``v`` (``power_iterations`` products,
    counted in ``info.hvps``). The series converges for positive definite ``H`` when ``alpha lambda_max < 2``,
    i.e. ``scale < 2``; with ``scale`` near 1 its ``J`` terms reach much further toward ``H^{-1} v`` than
    the paper's fixed ``alpha = 1e-3``, for which ``alpha |H| << 1`` and the series is about
    ``(J + 1) alpha v``. Negative eigenvalues make the terms grow by up to ``(1 + scale)`` per product.
    When the estimate is 0 (``H v = 0``) the series falls back to ``alpha = scale``.
    """
    lam = top_eigenvalue(hvp, v, iterations=power_iterations)
    alpha = scale / lam if lam > 0 else scale
    if tol > 0:
        x, info = adaptive_neumann(hvp, v, alpha=alpha, steps=steps, tol=tol)
    else:
        x, info = neumann(hvp, v, alpha=alpha, steps=steps)
    return x, SolveInfo(
        "neumann-curvature", info.hvps + power_iterations, info.terms, info.remainder, alpha=alpha
    )


def conjugate_gradient(hvp: HVP, v: Vector, *, iterations: int, tol: float) -> tuple[Vector, SolveInfo]:
    """Solve ``H x = v`` by conjugate gradient from ``x = 0``, one product per iteration.

    ``r_0 = p_0 = v``; ``a_k = r_k^T r_k / p_k^T H p_k``; ``x += a_k p_k``; ``r -= a_k H p_k``;
    ``p_{k+1} = r_{k+1} + (r_{k+1}^T r_{k+1} / r_k^T r_k) p_k``. Stops after ``iterations`` or when
    ``|r| <= tol |v|``. CG needs ``H`` symmetric positive definite: at a direction with ``p^T H p <= 0`` it
    stops, keeps the iterate reached so far and reports ``breakdown``. One host sync per iteration.
    """
    x = tuple(torch.zeros_like(t) for t in v)
    r, p = v, v
    rr = _dot(r, r)
    rr_value, stop = float(rr), tol * tol * float(rr)
    hvps, breakdown = 0, False
    while hvps < iterations and rr_value > stop:
        hp = hvp(p)
        hvps += 1
        php = _dot(p, hp)
        if not float(php) > 0:
            breakdown = True
            break
        step = rr / php
        x = tuple(xi + (step * pi).to(xi.dtype) for xi, pi in zip(x, p, strict=True))
        r = tuple(ri - (step * hi).to(ri.dtype) for ri, hi in zip(r, hp, strict=True))
        rr_new = _dot(r, r)
        p = tuple(ri + (rr_new / rr * pi).to(ri.dtype) for ri, pi in zip(r, p, strict=True))
        rr, rr_value = rr_new, float(rr_new)
    info = SolveInfo("cg", hvps, hvps - int(breakdown), math.sqrt(rr_value), breakdown)
    return x, info


def dense_hessian(hvp: HVP, like: Vector) -> Tensor:
    """The dense ``n x n`` Hessian from ``n`` products with the unit vectors, symmetrised ``(H + H^T) / 2``.

    ``like`` gives the shapes (parameters in order, each flattened row-major). For tiny problems only.
    """
    n = sum(t.numel() for t in like)
    flat = like[0].new_zeros(n) if like else torch.zeros(0)
    columns = []
    for j in range(n):
        basis = flat.clone()
        basis[j] = 1
        columns.append(torch.cat([h.reshape(-1) for h in hvp(_unflatten(basis, like))]))
    hessian = torch.stack(columns, dim=1) if columns else flat.new_zeros(0, 0)
    return 0.5 * (hessian + hessian.T)


def _unflatten(flat: Tensor, like: Vector) -> Vector:
    pieces = torch.split(flat, [t.numel() for t in like])
    return tuple(piece.reshape(t.shape).to(t.dtype) for piece, t in zip(pieces, like, strict=True))


def exact(hvp: HVP, v: Vector, *, max_params: int) -> tuple[Vector, SolveInfo]:
    """``H^{-1} v`` by :func:`dense_hessian` (``n`` products, ``n^2`` memory) and ``torch.linalg.solve``.

    Raises:
        ValueError: more than ``max_params`` parameter elements, or a singular Hessian.
    """
    n = sum(t.numel() for t in v)
    if n > max_params:
        raise ValueError(
            f"max_exact_params={max_params} is below the {n} parameter elements: the exact solver builds a "
            f"dense {n} x {n} Hessian; use method='neumann' or 'cg', or raise max_exact_params."
        )
    hessian = dense_hessian(hvp, v)
    rhs = torch.cat([t.reshape(-1) for t in v]).to(hessian.dtype)
    try:
        x = torch.linalg.solve(hessian, rhs)
    except torch.linalg.LinAlgError as error:
        raise ValueError(
            "method='exact': the Hessian d2f/dtheta2 is singular, so H^{-1} does not exist; regularise the "
            "training loss (e.g. weight decay) or use method='neumann'."
        ) from error
    residual = float(torch.linalg.vector_norm(rhs - hessian @ x))
    return _unflatten(x, v), SolveInfo("exact", n, n, residual)


def implicit_hypergradient(
    hvp: HVP, mixed_vjp: Callable[[Vector], Vector], v: Sequence[Tensor], solver: Solver
) -> tuple[Vector, SolveInfo]:
    """``-d2f/dphi dtheta^T H^{-1} v`` with ``v = dg/dtheta`` (paper eq. 3-6): descend along it.

    Args:
        hvp: ``u -> H u`` (e.g. :func:`second_order_vjp` of ``df/dtheta`` with respect to ``theta``).
        mixed_vjp: ``x -> d2f/dphi dtheta^T x``, a tuple aligned with ``phi``.
        v: ``dg/dtheta``, aligned with ``theta`` (detached before use).
        solver: ``(hvp, v) -> (x, info)``, e.g. ``HyperStepConfig().solver()``.

    Returns:
        The hypergradient, aligned with ``phi`` and without graph, and the solver's :class:`SolveInfo`.
    """
    x, info = solver(hvp, tuple(t.detach() for t in v))
    return tuple(-m.detach() for m in mixed_vjp(x)), info
