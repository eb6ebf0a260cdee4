"""Tests of madao_pl.hypergrad against closed forms, dense oracles and finite differences.

Problems with a known implicit gradient (float64):
- ridge regression with per-feature log-L2 penalties phi and an unpenalised bias,
- logistic regression with per-feature log-L2 penalties phi and per-sample weight logits psi
  (psi enters the data term, so the mixed derivative is dense, as for an augmentation policy).
The analytic hypergradient -M^T H^{-1} dg/dtheta is built with numpy from hand-derived H and M.
Measured errors are printed with the prefix ``[hypergrad]`` (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.special import expit
from torch import nn

from madao_pl.hypergrad import (
    adaptive_neumann,
    conjugate_gradient,
    curvature_scaled_neumann,
    dense_hessian,
    exact,
    implicit_hypergradient,
    neumann,
    second_order_vjp,
    top_eigenvalue,
)
from madao_pl.hyperstep import HyperStepConfig

DT = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny problems: threads only add contention


def _report(name: str, value: float) -> None:
    print(f"[hypergrad] {name}: {value:.3e}")


def _flat(tensors) -> np.ndarray:
    return np.concatenate([t.detach().cpu().double().numpy().reshape(-1) for t in tensors])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class Counted:
    """An HVP callable that counts its calls."""

    def __init__(self, hvp):
        self.hvp, self.calls = hvp, 0

    def __call__(self, u):
        self.calls += 1
        return self.hvp(u)


def hypergradient(train_grads, params, hparams, val_grads, *, retain_graph=True, hvp=None, **settings):
    """implicit_hypergradient of a problem given as ``df/dtheta`` with its graph: products by double backward.

    ``settings`` are HyperStepConfig fields (default: the plain Neumann series). Returns (hypergrad, info).
    """
    config = HyperStepConfig(**{"neumann_tol": 0.0, **settings})
    hvp = hvp if hvp is not None else second_order_vjp(train_grads, params)
    mixed = second_order_vjp(train_grads, hparams, retain_graph=retain_graph)
    return implicit_hypergradient(hvp, mixed, val_grads, config.solver())


# ----------------------------------------------------------------------------- ridge regression


@dataclass
class Ridge:
    """f = |A theta - y|^2 / (2n) + 0.5 sum_k exp(phi_k) w_k^2, A = [X, 1], theta = (w, b)."""

    X: np.ndarray
    y: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    phi: np.ndarray

    @staticmethod
    def make(seed: int = 0, n: int = 120, m: int = 80, d: int = 6) -> Ridge:
        rng = np.random.default_rng(seed)
        w_true = rng.standard_normal(d)
        X = rng.standard_normal((n, d))
        Xv = rng.standard_normal((m, d))
        y = X @ w_true + 0.3 + 0.8 * rng.standard_normal(n)
        yv = Xv @ w_true + 0.3 + 0.8 * rng.standard_normal(m)
        return Ridge(X, y, Xv, yv, rng.uniform(-1.5, 1.0, d))

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def design(self, X: np.ndarray) -> np.ndarray:
        return np.hstack([X, np.ones((X.shape[0], 1))])

    def hessian(self, phi: np.ndarray) -> np.ndarray:
        A = self.design(self.X)
        return A.T @ A / len(self.y) + np.diag(np.append(np.exp(phi), 0.0))

    def solve(self, phi: np.ndarray) -> np.ndarray:
        A = self.design(self.X)
        return np.linalg.solve(self.hessian(phi), A.T @ self.y / len(self.y))

    def val_loss(self, theta: np.ndarray) -> float:
        r = self.design(self.Xv) @ theta - self.yv
        return float(r @ r / (2 * len(self.yv)))

    def analytic(self, phi: np.ndarray) -> np.ndarray:
        theta = self.solve(phi)
        Av = self.design(self.Xv)
        gv = Av.T @ (Av @ theta - self.yv) / len(self.yv)
        mixed = np.zeros((self.d + 1, self.d))  # d2f / dtheta dphi
        mixed[np.arange(self.d), np.arange(self.d)] = np.exp(phi) * theta[: self.d]
        return -mixed.T @ np.linalg.solve(self.hessian(phi), gv)

    def torch_problem(self, phi: np.ndarray, extra_hparam: bool = False):
        theta = self.solve(phi)
        w = torch.tensor(theta[: self.d], dtype=DT, requires_grad=True)
        b = torch.tensor(theta[self.d], dtype=DT, requires_grad=True)
        phi_t = torch.tensor(phi, dtype=DT, requires_grad=True)
        X, y = torch.tensor(self.X), torch.tensor(self.y)
        f = ((X @ w + b - y) ** 2).sum() / (2 * len(self.y)) + 0.5 * (phi_t.exp() * w**2).sum()
        train_grads = torch.autograd.grad(f, (w, b), create_graph=True)
        Xv, yv = torch.tensor(self.Xv), torch.tensor(self.yv)
        g = ((Xv @ w + b - yv) ** 2).sum() / (2 * len(self.yv))
        val_grads = torch.autograd.grad(g, (w, b))
        hparams = (phi_t, torch.zeros(3, dtype=DT, requires_grad=True)) if extra_hparam else (phi_t,)
        return train_grads, (w, b), hparams, val_grads


# ----------------------------------------------------------------------------- logistic regression


@dataclass
class Logistic:
    """f = (1/n) sum_i sigmoid(psi_i) softplus(-y_i a_i theta) + 0.5 sum_k exp(phi_k) w_k^2, y in {-1, 1}."""

    X: np.ndarray
    y: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    phi: np.ndarray
    psi: np.ndarray

    @staticmethod
    def make(seed: int = 1, n: int = 40, m: int = 60, d: int = 5) -> Logistic:
        rng = np.random.default_rng(seed)
        w_true = rng.standard_normal(d)

        def labels(X: np.ndarray) -> np.ndarray:
            p = expit(X @ w_true - 0.2)
            return np.where(rng.uniform(size=len(p)) < p, 1.0, -1.0)

        X = rng.standard_normal((n, d))
        Xv = rng.standard_normal((m, d))
        return Logistic(X, labels(X), Xv, labels(Xv), rng.uniform(-3.0, -1.0, d), rng.standard_normal(n))

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @staticmethod
    def design(X: np.ndarray) -> np.ndarray:
        return np.hstack([X, np.ones((X.shape[0], 1))])

    def grad_hess(self, theta: np.ndarray, phi: np.ndarray, psi: np.ndarray):
        A = self.design(self.X)
        z = self.y * (A @ theta)
        s = expit(psi)
        n = len(self.y)
        penalty = np.append(np.exp(phi), 0.0)
        grad = A.T @ (s * -self.y * expit(-z)) / n + penalty * theta
        hess = (A.T * (s * expit(z) * expit(-z))) @ A / n + np.diag(penalty)
        return grad, hess

    def solve(self, phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
        theta = np.zeros(self.d + 1)
        for _ in range(100):
            grad, hess = self.grad_hess(theta, phi, psi)
            if np.linalg.norm(grad) < 1e-15:
                break
            theta = theta - np.linalg.solve(hess, grad)
        assert np.linalg.norm(self.grad_hess(theta, phi, psi)[0]) < 1e-13
        return theta

    def val_loss(self, theta: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, -self.yv * (self.design(self.Xv) @ theta))))

    def analytic(self, phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
        theta = self.solve(phi, psi)
        _, hess = self.grad_hess(theta, phi, psi)
        Av = self.design(self.Xv)
        gv = Av.T @ (-self.yv * expit(-self.yv * (Av @ theta))) / len(self.yv)
        A = self.design(self.X)
        n = len(self.y)
        mixed_phi = np.zeros((self.d + 1, self.d))
        mixed_phi[np.arange(self.d), np.arange(self.d)] = np.exp(phi) * theta[: self.d]
        s = expit(psi)
        per_sample = -self.y * expit(-self.y * (A @ theta))  # d loss_i / d (a_i theta)
        mixed_psi = (A * (s * (1 - s) * per_sample / n)[:, None]).T  # (d+1, n)
        mixed = np.hstack([mixed_phi, mixed_psi])
        return -mixed.T @ np.linalg.solve(hess, gv)

    def torch_problem(self, phi: np.ndarray, psi: np.ndarray):
        theta = self.solve(phi, psi)
        w = torch.tensor(theta[: self.d], dtype=DT, requires_grad=True)
        b = torch.tensor(theta[self.d], dtype=DT, requires_grad=True)
        phi_t = torch.tensor(phi, dtype=DT, requires_grad=True)
        psi_t = torch.tensor(psi, dtype=DT, requires_grad=True)
        X, y = torch.tensor(self.X), torch.tensor(self.y)
        data = torch.sigmoid(psi_t) * nn.functional.softplus(-y * (X @ w + b))
        f = data.mean() + 0.5 * (phi_t.exp() * w**2).sum()
        train_grads = torch.autograd.grad(f, (w, b), create_graph=True)
        Xv, yv = torch.tensor(self.Xv), torch.tensor(self.yv)
        g = nn.functional.softplus(-yv * (Xv @ w + b)).mean()
        val_grads = torch.autograd.grad(g, (w, b))
        return train_grads, (w, b), (phi_t, psi_t), val_grads


def _oracle_comparisons(name: str, problem, analytic: np.ndarray, hessian: np.ndarray) -> None:
    """exact to 1e-8, cg to 1e-6, converged Neumann to cosine 0.999 against the analytic gradient."""
    train_grads, params, hparams, val_grads = problem
    exact, _ = hypergradient(train_grads, params, hparams, val_grads, method="exact")
    err_exact = _rel(_flat(exact), analytic)
    _report(f"{name} exact rel err", err_exact)
    assert err_exact < 1e-8

    cg, info = hypergradient(
        train_grads, params, hparams, val_grads, method="cg", cg_iterations=100, cg_tol=1e-13
    )
    err_cg = _rel(_flat(cg), analytic)
    _report(f"{name} cg rel err ({info.hvps} HVPs)", err_cg)
    assert err_cg < 1e-6
    assert not info.breakdown

    eig = np.linalg.eigvalsh(hessian)
    alpha = 1.0 / (1.05 * eig[-1])
    steps = 500
    assert (1 - alpha * eig[0]) ** steps < 1e-12, "test problem too ill-conditioned for the Neumann check"
    series = hypergradient(train_grads, params, hparams, val_grads, neumann_alpha=alpha, neumann_steps=steps)
    neumann = _flat(series[0])
    cos = _cos(neumann, analytic)
    _report(f"{name} neumann(J={steps}, alpha={alpha:.3g}) 1-cos", 1 - cos)
    _report(f"{name} neumann rel err", _rel(neumann, analytic))
    assert cos >= 0.999
    assert _rel(neumann, analytic) < 1e-10  # also the scale: alpha factor and sign


def test_ridge_matches_closed_form():
    ridge = Ridge.make()
    _oracle_comparisons(
        "ridge", ridge.torch_problem(ridge.phi), ridge.analytic(ridge.phi), ridge.hessian(ridge.phi)
    )


def test_logistic_matches_closed_form():
    logi = Logistic.make()
    theta = logi.solve(logi.phi, logi.psi)
    hessian = logi.grad_hess(theta, logi.phi, logi.psi)[1]
    analytic = logi.analytic(logi.phi, logi.psi)
    _oracle_comparisons("logistic", logi.torch_problem(logi.phi, logi.psi), analytic, hessian)


# ----------------------------------------------------------------------------- finite differences and sign


def test_ridge_finite_differences():
    ridge = Ridge.make(seed=3)
    exact = _flat(hypergradient(*ridge.torch_problem(ridge.phi), method="exact")[0])
    eps = 1e-5
    fd = np.empty_like(ridge.phi)
    for k in range(ridge.d):
        e = np.zeros_like(ridge.phi)
        e[k] = eps
        fd[k] = (ridge.val_loss(ridge.solve(ridge.phi + e)) - ridge.val_loss(ridge.solve(ridge.phi - e))) / (
            2 * eps
        )
    _check_fd("ridge", fd, exact)


def test_logistic_finite_differences():
    logi = Logistic.make(seed=2)
    exact = _flat(hypergradient(*logi.torch_problem(logi.phi, logi.psi), method="exact")[0])
    eps = 1e-5
    hparams = np.concatenate([logi.phi, logi.psi])
    fd = np.empty_like(hparams)
    for k in range(len(hparams)):
        values = []
        for sign in (1.0, -1.0):
            h = hparams.copy()
            h[k] += sign * eps
            values.append(logi.val_loss(logi.solve(h[: logi.d], h[logi.d :])))
        fd[k] = (values[0] - values[1]) / (2 * eps)
    _check_fd("logistic", fd, exact)


def _check_fd(name: str, fd: np.ndarray, exact: np.ndarray) -> None:
    significant = np.abs(exact) > 1e-3 * np.abs(exact).max()
    assert significant.sum() >= 3
    assert np.all(np.sign(fd[significant]) == np.sign(exact[significant]))
    elementwise = np.abs(fd - exact)[significant] / np.abs(exact[significant])
    _report(f"{name} finite differences max elementwise rel err", elementwise.max())
    _report(f"{name} finite differences rel err (norm)", _rel(fd, exact))
    assert elementwise.max() < 1e-4
    assert _rel(fd, exact) < 1e-4


@pytest.mark.parametrize("method", ["exact", "cg", "neumann"])
def test_descent_step_lowers_validation_loss(method):
    ridge = Ridge.make(seed=4)
    logi = Logistic.make(seed=5)
    cases = [
        ("ridge", ridge.phi, lambda h: ridge.val_loss(ridge.solve(h)), ridge.torch_problem(ridge.phi)),
        (
            "logistic",
            np.concatenate([logi.phi, logi.psi]),
            lambda h: logi.val_loss(logi.solve(h[: logi.d], h[logi.d :])),
            logi.torch_problem(logi.phi, logi.psi),
        ),
    ]
    for name, hparams, val_loss, problem in cases:
        lam_max = np.linalg.eigvalsh(dense_hessian(second_order_vjp(problem[0], problem[1]), problem[1]))[-1]
        grad = _flat(
            hypergradient(
                *problem,
                method=method,
                neumann_steps=500,
                cg_iterations=100,
                neumann_alpha=1 / (1.05 * lam_max),
            )[0]
        )
        step = 1e-3 * grad / np.linalg.norm(grad)
        before = val_loss(hparams)
        after = val_loss(hparams - step)
        predicted = -step @ grad
        _report(f"{name} {method} descent: actual/predicted decrease", (after - before) / predicted)
        assert after < before
        assert val_loss(hparams + step) > before
        assert (after - before) / predicted == pytest.approx(1.0, abs=0.05)


# ----------------------------------------------------------------------------- Neumann series


def _mlp_problem(seed: int = 0, dtype: torch.dtype = DT):
    """A tanh MLP loss (indefinite Hessian) with an unused parameter; returns grads, params, dense H."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=gen, dtype=dtype)
    y = torch.randn(16, 2, generator=gen, dtype=dtype)
    w1 = torch.randn(3, 4, generator=gen, dtype=dtype, requires_grad=True)
    b1 = torch.randn(4, generator=gen, dtype=dtype, requires_grad=True)
    w2 = torch.randn(4, 2, generator=gen, dtype=dtype, requires_grad=True)
    unused = torch.randn(2, generator=gen, dtype=dtype, requires_grad=True)
    params = (w1, b1, w2, unused)

    def loss_fn(w1, b1, w2, unused):
        return ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()

    loss = loss_fn(*params)
    train_grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    blocks = torch.autograd.functional.hessian(loss_fn, tuple(p.detach() for p in params))
    sizes = [p.numel() for p in params]
    hessian = torch.cat(
        [torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(4)], dim=1) for i in range(4)]
    )
    return train_grads, params, hessian.numpy()


def _explicit_series(hessian: np.ndarray, v: np.ndarray, alpha: float, steps: int) -> np.ndarray:
    term, total = v.copy(), v.copy()
    for _ in range(steps):
        term = term - alpha * hessian @ term
        total = total + term
    return alpha * total


def test_hvp_matches_dense_hessian_and_is_zero_without_path():
    train_grads, params, hessian = _mlp_problem()
    assert train_grads[3] is None
    v = tuple(torch.randn_like(p) for p in params)
    hvp = second_order_vjp(train_grads, params)
    hv = hvp(v)
    err = _rel(_flat(hv), hessian @ _flat(v))
    _report("hvp vs autograd.functional.hessian rel err", err)
    assert err < 1e-12
    assert torch.equal(hv[3], torch.zeros(2, dtype=DT))
    np.testing.assert_allclose(dense_hessian(hvp, params).numpy(), hessian, atol=1e-12)


@pytest.mark.parametrize("steps", range(6))
def test_neumann_equals_explicit_series(steps):
    train_grads, params, hessian = _mlp_problem(seed=1)
    alpha = 0.3 / np.abs(np.linalg.eigvalsh(hessian)).max()
    v = tuple(torch.randn_like(p) for p in params)
    explicit = _explicit_series(hessian, _flat(v), alpha, steps)
    # a wrong term count or a lost alpha would be far outside the tolerance:
    assert _rel(_explicit_series(hessian, _flat(v), alpha, steps + 1), explicit) > 1e-3
    hvp = Counted(second_order_vjp(train_grads, params))
    x, info = neumann(hvp, v, alpha=alpha, steps=steps)
    plain = _flat(x)
    assert (info.hvps, info.terms, hvp.calls) == (steps, steps + 1, steps)
    x, info = adaptive_neumann(hvp, v, alpha=alpha, steps=steps, tol=0.0)
    binomial = _flat(x)
    assert info.hvps == steps and info.remainder == 0.0
    err_plain, err_binomial = _rel(plain, explicit), _rel(binomial, explicit)
    _report(f"neumann J={steps} plain / binomial(tol=0) rel err vs explicit", max(err_plain, err_binomial))
    assert err_plain < 1e-10
    assert err_binomial < 1e-10


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("scale", "tol"), [(1e-3, 1e-6), (1e-3, 1e-4), (1e-2, 1e-6), (1e-2, 1e-4)])
def test_adaptive_neumann_stops_early_within_tol(seed, scale, tol):
    """alpha |H| = scale (MADAO: ~1e-3): the 5-term sum to within tol with fewer than 5 HVPs."""
    train_grads, params, hessian = _mlp_problem(seed=seed)
    alpha = scale / np.abs(np.linalg.eigvalsh(hessian)).max()
    v = tuple(torch.randn(p.shape, dtype=DT, generator=torch.Generator().manual_seed(seed)) for p in params)
    steps = 5
    explicit = _explicit_series(hessian, _flat(v), alpha, steps)
    hvp = Counted(second_order_vjp(train_grads, params))
    x, info = adaptive_neumann(hvp, v, alpha=alpha, steps=steps, tol=tol)
    adaptive = _flat(x)
    assert info.hvps == hvp.calls
    err = np.linalg.norm(adaptive - explicit)
    _report(
        f"adaptive neumann seed={seed} alpha|H|={scale} tol={tol}: {info.hvps} HVPs, rel err / tol",
        err / np.linalg.norm(explicit) / tol,
    )
    assert info.method == "neumann-adaptive"
    assert err <= tol * np.linalg.norm(explicit)
    assert err <= info.remainder  # the estimate of what was left out is not optimistic here
    assert info.hvps < steps
    assert info.terms == info.hvps + 1
    # the omitted terms are not negligible at machine precision: stopping even earlier would be wrong
    assert _rel(alpha * (steps + 1) * _flat(v), explicit) > tol


def _matrix_hvp(matrix: torch.Tensor):
    return lambda u: (matrix @ u[0],)


def test_power_iteration_finds_the_largest_magnitude_eigenvalue():
    """Known spectrum, largest in magnitude negative: the estimate is |lambda| and rises to it from below."""
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=DT, generator=gen))
    eigenvalues = torch.tensor([-9.0, 4.0, 2.0, 1.0, 0.5, 0.1], dtype=DT)
    hvp = Counted(_matrix_hvp(q @ torch.diag(eigenvalues) @ q.T))
    start = (torch.randn(6, dtype=DT, generator=gen),)
    estimates = [top_eigenvalue(hvp, start, iterations=n) for n in (1, 5, 60)]
    assert hvp.calls == 66
    assert estimates[0] <= estimates[1] <= estimates[2] <= 9.0 + 1e-9
    assert abs(estimates[2] - 9.0) < 1e-8
    assert top_eigenvalue(hvp, (torch.zeros(6, dtype=DT),), iterations=3) == 0.0


@pytest.mark.parametrize(("scale", "tol"), [(0.5, 0.0), (1.0, 0.0), (0.5, 1e-4)])
def test_curvature_scaled_neumann_is_the_series_at_scale_over_lambda_max(scale, tol):
    """alpha = scale / |lambda_max| (not scale, not scale * lambda): the same x as neumann() at that alpha,
    and with enough terms it reaches H^{-1} v on a positive definite H (alpha 1e-3 gets nowhere near)."""
    train_grads, params, hessian = _mlp_problem(seed=2)
    lam = np.abs(np.linalg.eigvalsh(hessian)).max()
    v = tuple(torch.randn(p.shape, dtype=DT, generator=torch.Generator().manual_seed(5)) for p in params)
    hvp = Counted(second_order_vjp(train_grads, params))
    x, info = curvature_scaled_neumann(hvp, v, scale=scale, steps=8, power_iterations=200, tol=tol)
    assert info.method == "neumann-curvature" and info.hvps == hvp.calls
    assert info.alpha == pytest.approx(scale / lam, rel=1e-6)
    expected = _explicit_series(hessian, _flat(v), scale / lam, 8)
    err = _rel(_flat(x), expected)
    _report(f"curvature-scaled neumann scale={scale} tol={tol} rel err vs explicit series", err)
    assert err < (1e-3 if tol else 1e-8)
    assert _rel(_explicit_series(hessian, _flat(v), scale, 8), expected) > 1e-2


def test_curvature_scaled_neumann_reaches_the_inverse_where_the_fixed_alpha_does_not():
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=DT, generator=gen))
    matrix = q @ torch.diag(torch.tensor([50.0, 20.0, 10.0, 5.0, 2.0], dtype=DT)) @ q.T
    v = (torch.randn(5, dtype=DT, generator=gen),)
    truth = torch.linalg.solve(matrix, v[0]).numpy()
    x, _ = curvature_scaled_neumann(_matrix_hvp(matrix), v, scale=1.0, steps=500, power_iterations=100)
    fixed, _ = neumann(_matrix_hvp(matrix), v, alpha=1e-3, steps=5)  # the paper's series
    _report("curvature-scaled vs fixed alpha, rel err to H^-1 v", _rel(_flat(x), truth))
    assert _rel(_flat(x), truth) < 1e-6
    assert _rel(_flat(fixed), truth) > 0.5
    assert HyperStepConfig(neumann_alpha_scale=1.0).solver().func is curvature_scaled_neumann
    assert HyperStepConfig().solver().func is adaptive_neumann


def test_adaptive_neumann_large_steps_falls_back_to_stable_loop():
    """J = 60 with alpha |H| up to 0.95: the binomial form would cancel catastrophically."""
    logi = Logistic.make(seed=6)
    train_grads, params, _, val_grads = logi.torch_problem(logi.phi, logi.psi)
    hvp = Counted(second_order_vjp(train_grads, params))
    hessian = dense_hessian(hvp, params).numpy()
    hvp.calls = 0
    alpha = 0.95 / np.linalg.eigvalsh(hessian)[-1]
    steps = 60
    explicit = _explicit_series(hessian, _flat(val_grads), alpha, steps)
    x, info = adaptive_neumann(hvp, val_grads, alpha=alpha, steps=steps, tol=1e-12)
    err = _rel(_flat(x), explicit)
    _report(f"adaptive neumann J=60 alpha|H|=0.95 rel err ({info.hvps} HVPs)", err)
    assert err < 1e-10
    assert info.hvps == hvp.calls <= steps
    assert info.terms == steps + 1  # it went over to the plain loop


# ----------------------------------------------------------------------------- HVP counting


@pytest.mark.parametrize(
    "settings",
    [
        {"neumann_steps": 5},
        {"neumann_steps": 7, "neumann_tol": 1e-4, "neumann_alpha": 1e-4},
        {"neumann_steps": 0},
        {"method": "cg", "cg_iterations": 50, "cg_tol": 1e-12},
        {"method": "cg", "cg_iterations": 3},
        {"method": "exact"},
    ],
)
def test_reported_hvps_equal_performed(monkeypatch, settings):
    ridge = Ridge.make(seed=7)
    problem = ridge.torch_problem(ridge.phi)
    hvp = Counted(second_order_vjp(problem[0], problem[1]))
    grad_calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grad_calls.append(1) or original(*a, **k))
    _, info = hypergradient(*problem, hvp=hvp, **settings)
    _report(f"{settings}: HVPs reported", info.hvps)
    assert info.hvps == hvp.calls
    assert len(grad_calls) == info.hvps + 1  # one double backward per HVP, one mixed derivative
    if settings.get("cg_iterations") == 50:
        assert info.hvps <= ridge.d + 1 + 2  # CG on an (d+1)-dim SPD system converges in ~d+1 steps
    if settings.get("method") == "exact":
        assert info.hvps == ridge.d + 1
    if "neumann_tol" in settings:
        assert 0 < info.hvps < settings["neumann_steps"]


# ----------------------------------------------------------------------------- model state, dtypes, graphs


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def _conv_problem(net: nn.Module, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 6, 6, generator=gen).to(dtype)
    pattern = torch.randn(1, 3, 6, 6, generator=gen).to(dtype)
    labels = torch.randint(0, 3, (8,), generator=gen)
    strength = torch.tensor(0.2, dtype=dtype, requires_grad=True)
    weights = torch.zeros(8, dtype=dtype, requires_grad=True)
    unused = torch.ones(2, 2, dtype=dtype, requires_grad=True)
    params = tuple(net.parameters())
    losses = nn.functional.cross_entropy(net(x + strength * pattern), labels, reduction="none")
    f = (torch.sigmoid(weights) * losses).mean() + 0.5 * 1e-2 * sum((p**2).sum() for p in params)
    train_grads = torch.autograd.grad(f, params, create_graph=True)
    net.eval()
    g = nn.functional.cross_entropy(net(x[:4] + 0.1), labels[:4])
    val_grads = torch.autograd.grad(g, params)
    net.train()
    return train_grads, params, (strength, weights, unused), val_grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batchnorm_state_untouched_and_unused_hparam_zero(dtype):
    torch.manual_seed(0)
    net = _ConvNet().to(dtype).train()
    problem = _conv_problem(net, dtype)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    settings = [
        {"neumann_alpha": 1e-2, "neumann_steps": 5},
        {"neumann_alpha": 1e-2, "neumann_steps": 5, "neumann_tol": 1e-3},
        {"method": "cg", "cg_iterations": 3},
    ] + ([{"method": "exact"}] if dtype == torch.float64 else [])
    for setting in settings:
        out, _ = hypergradient(*problem, **setting)
        assert len(out) == 3
        for h, o in zip(problem[2], out, strict=True):
            assert o.shape == h.shape and o.dtype == dtype and o.grad_fn is None and not o.requires_grad
            assert torch.isfinite(o).all()
        assert torch.equal(out[2], torch.zeros(2, 2, dtype=dtype))
        assert out[0].abs() > 0 and out[1].abs().max() > 0
    assert net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in net.parameters())
    assert all(h.grad is None for h in problem[2])


def test_float32_agrees_with_float64():
    torch.manual_seed(1)
    net64 = _ConvNet().double().train()
    net32 = _ConvNet().train()
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    settings = {"neumann_alpha": 1e-2, "neumann_steps": 5}
    out64 = _flat(hypergradient(*_conv_problem(net64, torch.float64), **settings)[0])
    out32 = _flat(hypergradient(*_conv_problem(net32, torch.float32), **settings)[0])
    err = _rel(out32, out64)
    _report("conv+BN neumann float32 vs float64 rel err", err)
    assert err < 1e-4


def test_no_graph_kept_and_retain_graph_flag():
    ridge = Ridge.make(seed=8)
    problem = ridge.torch_problem(ridge.phi)
    first, _ = hypergradient(*problem, method="cg", cg_iterations=20)
    second, _ = hypergradient(*problem, method="cg", cg_iterations=20)  # the caller's graph was retained
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(t.grad_fn is None and not t.requires_grad for t in first)
    hvp = second_order_vjp(problem[0], problem[1])
    for solve in (
        lambda: neumann(hvp, problem[3], alpha=1e-3, steps=3),
        lambda: conjugate_gradient(hvp, problem[3], iterations=3, tol=0.0),
        lambda: exact(hvp, problem[3], max_params=100),
    ):
        assert all(t.grad_fn is None for t in solve()[0])
    hypergradient(*problem, retain_graph=False)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        hypergradient(*problem)


def test_hparam_without_path_gets_zeros():
    ridge = Ridge.make(seed=9)
    out, _ = hypergradient(*ridge.torch_problem(ridge.phi, extra_hparam=True), method="exact")
    assert torch.equal(out[1], torch.zeros(3, dtype=DT))
    assert _rel(_flat(out[:1]), ridge.analytic(ridge.phi)) < 1e-8


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"method": "newton"}, "method must be one of neumann, cg, exact, got 'newton'"),
        ({"neumann_steps": -1}, "neumann_steps must be an integer >= 0, got -1"),
        ({"neumann_steps": 2.5}, "neumann_steps must be an integer >= 0"),
        ({"neumann_alpha": 0.0}, "neumann_alpha must be a number > 0, got 0.0"),
        ({"neumann_alpha": float("nan")}, "neumann_alpha must be a number > 0"),
        ({"neumann_alpha_scale": 2.0}, r"neumann_alpha_scale must be a number in \[0, 2\)"),
        ({"neumann_alpha_scale": -0.5}, r"neumann_alpha_scale must be a number in \[0, 2\)"),
        ({"power_iterations": 0}, "power_iterations must be an integer >= 1, got 0"),
        ({"neumann_tol": -1.0}, r"neumann_tol must be a number in \[0, 1\)"),
        ({"neumann_tol": 1.0}, r"neumann_tol must be a number in \[0, 1\)"),
        ({"cg_iterations": -3}, "cg_iterations must be an integer >= 0"),
        ({"cg_tol": -1e-3}, "cg_tol must be a number >= 0"),
        ({"max_exact_params": 0}, "max_exact_params must be an integer >= 1"),
        ({"recompute": "yes"}, "recompute must be true or false, got 'yes'"),
    ],
)
def test_bad_settings_raise_one_clear_error_naming_the_argument(settings, match):
    with pytest.raises(ValueError, match=match):
        HyperStepConfig(**settings)


def test_exact_refuses_too_many_parameters_and_singular_hessians():
    ridge = Ridge.make()
    with pytest.raises(ValueError, match="max_exact_params=5 is below the 7 parameter elements.*'neumann'"):
        hypergradient(*ridge.torch_problem(ridge.phi), method="exact", max_exact_params=5)
    w = torch.ones(2, dtype=DT, requires_grad=True)
    phi = torch.tensor(0.5, dtype=DT, requires_grad=True)
    f = phi * (w.sum() - 1.0) ** 2  # rank-one Hessian
    train_grads = torch.autograd.grad(f, (w,), create_graph=True)
    with pytest.raises(ValueError, match="singular"):
        hypergradient(train_grads, (w,), (phi,), (torch.ones(2, dtype=DT),), method="exact")


def test_cg_reports_breakdown_on_negative_curvature():
    w = torch.ones(2, dtype=DT, requires_grad=True)
    f = -(w**2).sum()
    hvp = second_order_vjp(torch.autograd.grad(f, (w,), create_graph=True), (w,))
    x, info = conjugate_gradient(hvp, (torch.ones(2, dtype=DT),), iterations=4, tol=1e-10)
    assert info.breakdown and info.hvps == 1 and info.terms == 0
    assert torch.equal(x[0], torch.zeros(2, dtype=DT))
    assert math.isclose(info.remainder, math.sqrt(2.0))
