"""Tests of madao_pl.hyperstep: the hyper step (keeping or recomputing its graph) against independent oracles.

Oracles are built here from the pieces the hyper step does not use together: the policy's own forward and
Cutout on a direct graph to the policy parameters, and :func:`madao_pl.hypergrad.implicit_hypergradient` on
that one graph. Measured errors are printed with the prefix ``[hyperstep]`` (run pytest with ``-s``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from madao_pl.augment import MADAOPolicy, RandAugmentPolicy, cutout
from madao_pl.hypergrad import dense_hessian, implicit_hypergradient, second_order_vjp
from madao_pl.hyperstep import HyperStepConfig, HyperStepResult, augment_batch, hyper_step
from madao_pl.models import SmallCNN

SIZE = 12
BATCH = 12
CUTOUT = 4
POLICY_SEED = 3
GLOBAL_SEED = 7


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny problems: threads only add contention


def _report(name: str, value: float) -> None:
    print(f"[hyperstep] {name}: {value:.3e}")


def _flat(tensors) -> Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _rel(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float((a - b).norm() / b.norm())


def _cos(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(a @ b / (a.norm() * b.norm()))


def normalize(images: Tensor) -> Tensor:
    return (images - 0.5) / 0.25


class SmoothNet(nn.Module):
    """Conv - tanh - conv - tanh - pool - linear: no cross-sample layer, so the loss is a sum over samples."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_problem(dtype: torch.dtype, batchnorm: bool = True, seed: int = 0):
    """A network (BatchNorm or not), a MADAO policy and train / validation batches, all in ``dtype``."""
    torch.manual_seed(seed)
    net = (SmallCNN(num_classes=3, width=4) if batchnorm else SmoothNet()).to(dtype)
    policy = MADAOPolicy().to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g, dtype=dtype)
    labels = torch.randint(0, 3, (BATCH,), generator=g)
    val_images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g, dtype=dtype)
    val_labels = torch.randint(0, 3, (BATCH,), generator=g)
    return net, policy, (images, labels, val_images, val_labels)


def run(net: nn.Module, policy: MADAOPolicy, batches, generator=None, **settings) -> HyperStepResult:
    """hyper_step with fixed policy and global seeds (so every call draws the same augmentation);
    ``settings`` are HyperStepConfig fields (default: the plain series, neumann_tol=0)."""
    images, labels, val_images, val_labels = batches
    torch.manual_seed(GLOBAL_SEED)
    return hyper_step(
        net,
        policy,
        (images, labels),
        (val_images, val_labels),
        normalize=normalize,
        cutout=CUTOUT,
        config=HyperStepConfig(**{"neumann_tol": 0.0, **settings}),
        generator=generator if generator is not None else torch.Generator().manual_seed(POLICY_SEED),
    )


def reference_inputs(policy: MADAOPolicy, images: Tensor) -> Tensor:
    """The augmented, normalised batch with a graph to the policy, drawn like :func:`run` draws it."""
    torch.manual_seed(GLOBAL_SEED)
    augmented = policy(images, generator=torch.Generator().manual_seed(POLICY_SEED))
    return normalize(cutout(augmented, CUTOUT))


def validation_grads(net: nn.Module, val_images: Tensor, val_labels: Tensor) -> tuple[Tensor, ...]:
    net.eval()
    grads = torch.autograd.grad(
        F.cross_entropy(net(normalize(val_images)), val_labels), list(net.parameters())
    )
    net.train()
    return grads


def bn_state(net: nn.Module) -> list[Tensor]:
    return [b.clone() for b in net.buffers()]


def test_hyper_step_is_implicit_hypergradient_on_one_graph():
    """The plain hyper step is implicit_hypergradient on one graph from the policy parameters through Cutout
    and the network: df/dtheta with create_graph, dg/dtheta in eval mode. Also the network gradient, both
    losses, the running statistics (one train-mode update) and the mode afterwards."""
    net, policy, batches = make_problem(torch.float64)
    images, labels, val_images, val_labels = batches
    reference_net = copy.deepcopy(net)
    result = run(net, policy, batches)

    inputs = reference_inputs(policy, images)
    params, hparams = list(reference_net.parameters()), list(policy.parameters())
    loss = F.cross_entropy(reference_net(inputs), labels)
    train_grads = torch.autograd.grad(loss, params, create_graph=True)
    val_grads = validation_grads(reference_net, val_images, val_labels)
    expected, info = implicit_hypergradient(
        second_order_vjp(train_grads, params),
        second_order_vjp(train_grads, hparams),
        val_grads,
        HyperStepConfig(neumann_tol=0.0).solver(),
    )

    error = _rel(result.hypergrad, expected)
    _report("hyper step vs implicit_hypergradient on one graph (float64)", error)
    assert error <= 1e-12
    assert _rel(result.network_grads, train_grads) <= 1e-14
    assert result.train_loss.item() == pytest.approx(loss.item(), rel=1e-14)
    reference_net.eval()
    val_loss = F.cross_entropy(reference_net(normalize(val_images)), val_labels)
    assert result.val_loss.item() == pytest.approx(val_loss.item(), rel=1e-14)
    for got, want in zip(bn_state(net), bn_state(reference_net), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net.training
    assert result.info == info and info.hvps == 5 and info.method == "neumann"
    assert all(g.grad is None for g in policy.parameters()) and all(p.grad is None for p in net.parameters())


def test_damping_solves_the_damped_hessian():
    """Every method with damping lambda gives -M^T (H + lambda I)^{-1} v: exact (lambda = 0 and 0.3) and CG to
    convergence (lambda large enough for a positive definite H + lambda I) against dense solves on the
    reference graph (float64); damping changes the answer."""
    net, policy, batches = make_problem(torch.float64, batchnorm=False)
    images, labels, val_images, val_labels = batches
    reference_net = copy.deepcopy(net)
    inputs = reference_inputs(policy, images)
    params, hparams = list(reference_net.parameters()), list(policy.parameters())
    train_grads = torch.autograd.grad(
        F.cross_entropy(reference_net(inputs), labels), params, create_graph=True
    )
    hessian = dense_hessian(second_order_vjp(train_grads, params), tuple(params))
    v = torch.cat([g.reshape(-1) for g in validation_grads(reference_net, val_images, val_labels)])
    mixed = second_order_vjp(train_grads, hparams)

    def expected(damping: float) -> tuple[Tensor, ...]:
        x = torch.linalg.solve(hessian + damping * torch.eye(len(v), dtype=v.dtype), v)
        pieces = torch.split(x, [p.numel() for p in params])
        return tuple(-m for m in mixed(tuple(t.view_as(p) for t, p in zip(pieces, params, strict=True))))

    positive = float(-torch.linalg.eigvalsh(hessian).min().clamp(max=0)) + 0.5
    for method, damping, tol in (("exact", 0.0, 1e-8), ("exact", 0.3, 1e-8), ("cg", positive, 1e-6)):
        settings = {"cg_iterations": 2000, "cg_tol": 1e-13} if method == "cg" else {}
        got = run(net, policy, batches, method=method, damping=damping, **settings)
        assert _rel(got.hypergrad, expected(damping)) <= tol, (method, damping)
        assert not got.info.breakdown
    assert _rel(expected(0.3), expected(0.0)) > 1e-2


def test_direction_only_is_the_gradient_of_the_unit_training_gradient():
    """direction_only=True is -d/dphi <u / |u|, x> with u = df/dtheta (graph to phi) and x = H^{-1} v held
    fixed (exact solve, float64, autograd of the normalised gradient as the oracle); it is orthogonal in
    the sense that an x along u gives zero, and it differs from the plain hypergradient."""
    net, policy, batches = make_problem(torch.float64, batchnorm=False)
    images, labels, val_images, val_labels = batches
    reference_net = copy.deepcopy(net)
    inputs = reference_inputs(policy, images)
    params, hparams = list(reference_net.parameters()), list(policy.parameters())
    u = torch.autograd.grad(F.cross_entropy(reference_net(inputs), labels), params, create_graph=True)
    flat_u = torch.cat([g.reshape(-1) for g in u])
    hessian = dense_hessian(second_order_vjp(u, params), tuple(params))
    v = torch.cat([g.reshape(-1) for g in validation_grads(reference_net, val_images, val_labels)])
    x = torch.linalg.solve(hessian, v).detach()
    objective = (flat_u / flat_u.norm()) @ x
    expected = tuple(-g for g in torch.autograd.grad(objective, hparams, retain_graph=True))
    got = run(net, policy, batches, method="exact", direction_only=True).hypergrad
    assert _rel(got, expected) <= 1e-8
    plain = run(net, policy, batches, method="exact").hypergrad
    assert _rel(plain, got) > 1e-2
    along = (flat_u.detach() * 3.0) @ (flat_u / flat_u.norm())
    assert abs(float(torch.autograd.grad(along, hparams, retain_graph=True)[0].norm())) < 1e-12
    with pytest.raises(ValueError, match="direction_only must be true or false"):
        HyperStepConfig(direction_only="yes")


@pytest.mark.parametrize("alpha", [1e-3, 3e-2, 1e-1])
def test_adaptive_neumann_within_tolerance_of_full_series(alpha):
    """Default tol 1e-4: the hypergradient stays within 1e-3 relative of the full J = 5 series (float64,
    BatchNorm net), with fewer HVPs; larger alpha makes |alpha H| larger, so more terms are needed."""
    net, policy, batches = make_problem(torch.float64)
    full = run(copy.deepcopy(net), policy, batches, neumann_alpha=alpha)
    for tol in (1e-3, 1e-4):
        adaptive = run(copy.deepcopy(net), policy, batches, neumann_alpha=alpha, neumann_tol=tol)
        error = _rel(adaptive.hypergrad, full.hypergrad)
        _report(f"adaptive tol={tol:g} alpha={alpha:g} ({adaptive.info.hvps} HVPs) vs full series", error)
        assert adaptive.info.method == "neumann-adaptive"
        assert adaptive.info.hvps < full.info.hvps == 5
        assert error <= (1e-3 if tol == 1e-4 else 3 * tol)
        assert _rel(adaptive.network_grads, full.network_grads) == 0.0


@pytest.mark.parametrize("settings", [{}, {"neumann_tol": 1e-4}, {"method": "cg", "cg_iterations": 4}])
def test_recompute_equals_keeping_the_graph(settings):
    """recompute=True rebuilds df/dtheta's graph for every HVP and the mixed derivative: the same maths as
    keeping it (BatchNorm net, float64), the same network gradient, losses and running statistics."""
    net, policy, batches = make_problem(torch.float64)
    kept_net = copy.deepcopy(net)
    kept = run(kept_net, policy, batches, **settings)
    recomputed = run(net, policy, batches, recompute=True, **settings)
    error = _rel(recomputed.hypergrad, kept.hypergrad)
    _report(f"recompute vs keeping the graph, {settings} (float64)", error)
    assert error <= 1e-12
    assert recomputed.info.hvps == kept.info.hvps > 0
    assert _rel(recomputed.network_grads, kept.network_grads) <= 1e-13
    assert recomputed.train_loss.item() == pytest.approx(kept.train_loss.item(), rel=1e-14)
    assert recomputed.val_loss.item() == pytest.approx(kept.val_loss.item(), rel=1e-14)
    for got, want in zip(bn_state(net), bn_state(kept_net), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("recompute", [False, True])
def test_fast_settings_agree_with_the_full_series_in_float32(recompute):
    """The default tol=1e-4 (with or without recompute) against the full series, float32: relative
    difference <= 1e-3 and cosine >= 0.9999, with fewer products."""
    net, policy, batches = make_problem(torch.float32, seed=4)
    plain = run(copy.deepcopy(net), policy, batches)
    fast = run(copy.deepcopy(net), policy, batches, neumann_tol=1e-4, recompute=recompute)
    error, cosine = _rel(fast.hypergrad, plain.hypergrad), _cos(fast.hypergrad, plain.hypergrad)
    _report(f"fast (tol 1e-4, recompute {recompute}) vs full series, float32: rel", error)
    _report(f"fast (tol 1e-4, recompute {recompute}) vs full series, float32: 1 - cos", 1 - cosine)
    assert error <= 1e-3 and cosine >= 0.9999
    assert fast.info.hvps < plain.info.hvps


def count_passes(net: nn.Module) -> dict[str, int]:
    """Count train-mode forwards of ``net`` and backward passes that reach its logits."""
    counts = {"train_forwards": 0, "logit_backwards": 0}

    def hook(module, args, output):
        if module.training:
            counts["train_forwards"] += 1
        if output.requires_grad:
            output.register_hook(
                lambda grad: counts.__setitem__("logit_backwards", counts["logit_backwards"] + 1)
            )

    net.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("tol,recompute", [(0.0, False), (1e-4, False), (0.0, True), (1e-4, True)])
def test_reported_hvps_are_the_ones_performed(tol, recompute):
    """info.hvps against passes counted on the network itself: keeping the graph, every HVP is one more
    backward pass through the logits (after the df/dtheta pass, before the mixed derivative's); recomputing,
    every HVP and the mixed derivative rebuild the forward."""
    net, policy, batches = make_problem(torch.float64)
    counts = count_passes(net)
    k = run(net, policy, batches, neumann_tol=tol, recompute=recompute).info.hvps
    assert k == (5 if tol == 0 else 1)
    if not recompute:
        assert counts == {"train_forwards": 1, "logit_backwards": 1 + k + 1 + 1}  # + validation backward
    else:
        assert counts["train_forwards"] == 1 + (k + 1)


@pytest.mark.parametrize("recompute", [False, True])
def test_policy_and_cutout_draw_once(recompute):
    """One augmentation's random draws per hyper step: the global RNG ends where one Cutout call leaves it,
    and the policy generator where one policy forward leaves it. Keeping the graph, the policy runs once;
    recomputing, a second time at the end on the saved draws (a replay whose images are checked bit for
    bit), and the generators are put back after it."""
    net, policy, batches = make_problem(torch.float64)
    calls = []
    policy.register_forward_hook(lambda module, args, output: calls.append(1))
    generator = torch.Generator().manual_seed(POLICY_SEED)
    run(net, policy, batches, generator=generator, recompute=recompute)
    after_global, after_policy = torch.get_rng_state(), generator.get_state()
    assert len(calls) == (2 if recompute else 1)
    expected_generator = torch.Generator().manual_seed(POLICY_SEED)
    torch.manual_seed(GLOBAL_SEED)
    with torch.enable_grad():
        cutout(policy(batches[0], generator=expected_generator), CUTOUT)
    assert torch.equal(after_global, torch.get_rng_state())
    assert torch.equal(after_policy, expected_generator.get_state())


class DrawingNet(SmoothNet):
    """SmoothNet that draws one number from torch's global RNG in every forward (as dropout would) and
    counts its forwards, so a test can tell where the global stream must end."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        return super().forward(x + 0.0 * torch.rand((), dtype=x.dtype))


@pytest.mark.parametrize("use_policy_generator", [False, True])
def test_recompute_replays_augmentation_exactly_and_keeps_rng_streams(use_policy_generator):
    """Recomputing frees the augmentation graph and rebuilds it at the end from the saved generator states:
    the hypergradient equals keeping the graph (float64; the policy drawing from the explicit generator or
    from ``policy.generator``), and the replay puts the generators back, so the policy generator ends where
    one augmentation leaves it and the global stream where one augmentation and the network's own draws
    (one per forward, made between the augmentation and the replay) leave it."""
    _, policy, (images, labels, val_images, val_labels) = make_problem(torch.float64, batchnorm=False)
    results = []
    for recompute in (False, True):
        generator = torch.Generator().manual_seed(POLICY_SEED)
        policy.generator = generator if use_policy_generator else None
        torch.manual_seed(0)
        net = DrawingNet().double()
        torch.manual_seed(GLOBAL_SEED)
        result = hyper_step(
            net,
            policy,
            (images, labels),
            (val_images, val_labels),
            normalize=normalize,
            cutout=CUTOUT,
            config=HyperStepConfig(recompute=recompute),
            generator=None if use_policy_generator else generator,
        )
        results.append(result)
        after_global, after_policy = torch.get_rng_state(), generator.get_state()
        expected_generator = torch.Generator().manual_seed(POLICY_SEED)
        torch.manual_seed(GLOBAL_SEED)
        with torch.enable_grad():
            cutout(policy(images, generator=expected_generator), CUTOUT)
        for _ in range(net.forwards):
            torch.rand((), dtype=torch.float64)
        assert torch.equal(after_policy, expected_generator.get_state())
        assert torch.equal(after_global, torch.get_rng_state())
    policy.generator = None
    kept, replayed = results
    assert _flat(kept.hypergrad).norm() > 0
    for got, want in zip(replayed.hypergrad, kept.hypergrad, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


class ImpurePolicy(MADAOPolicy):
    """A MADAO policy that adds noise from a private generator the hyper step cannot save: not replayable."""

    def __init__(self) -> None:
        super().__init__()
        self.private = torch.Generator().manual_seed(0)

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        noise = torch.rand(images.shape, generator=self.private, dtype=images.dtype)
        return super().forward(images, generator=generator, labels=labels) + 1e-3 * noise


def test_recompute_refuses_an_augmentation_it_cannot_replay():
    """A replay that gives other images would put the hypergradient at the wrong point: it is an error
    naming the fix, not a silently wrong result (keeping the graph still works)."""
    _, _, batches = make_problem(torch.float64, batchnorm=False)
    policy = ImpurePolicy().double()
    with pytest.raises(RuntimeError, match="recompute=False"):
        run(SmoothNet().double(), policy, batches, recompute=True)
    assert _flat(run(SmoothNet().double(), policy, batches).hypergrad).norm() > 0


def test_augment_batch_is_policy_then_cutout_with_a_graph_under_grad():
    _, policy, (images, *_) = make_problem(torch.float64)
    torch.manual_seed(GLOBAL_SEED)
    got = normalize(augment_batch(policy, images, CUTOUT, torch.Generator().manual_seed(POLICY_SEED)))
    assert got.requires_grad
    torch.testing.assert_close(got, reference_inputs(policy, images), rtol=0, atol=0)
    with torch.no_grad():
        assert not augment_batch(policy, images, CUTOUT).requires_grad


def test_fixed_policy_gets_empty_hypergradient_and_exact_network_gradient():
    net, _, batches = make_problem(torch.float64)
    result = run(net, RandAugmentPolicy(), batches)
    assert result.hypergrad == () and result.info.hvps == 0
    assert len(result.network_grads) == len(list(net.parameters()))


def test_profiler_sees_one_range_per_section_and_per_product():
    """The benchmark reads the hyper step's sections from these torch.profiler ranges."""
    net, policy, batches = make_problem(torch.float64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run(net, policy, batches, neumann_steps=3)
    counts = {}
    for event in profile.events():
        if event.name.startswith("madao/"):
            counts[event.name] = counts.get(event.name, 0) + 1
    assert counts == {
        "madao/augment": 1,
        "madao/train_gradient": 1,
        "madao/validation_gradient": 1,
        "madao/hvp": 3,
        "madao/mixed_derivative": 1,
    }


def test_the_config_states_the_library_defaults():
    """One default per knob: ``augment.hyper`` restates every :class:`HyperStepConfig` field (so each can be
    overridden on the command line) with the dataclass's own default, and ``augment.policy_optimizer`` is
    the module's default policy optimiser; a value changed in one place only fails here."""
    import dataclasses

    from hydra.utils import instantiate

    from madao_pl.optimizers import POLICY_OPTIMIZER
    from tests.conftest import compose_config

    cfg = compose_config("/tmp/unused")
    stated = {k: v for k, v in cfg.augment.hyper.items() if k != "_target_"}
    defaults = {f.name: f.default for f in dataclasses.fields(HyperStepConfig)}
    assert stated == defaults
    optimizer = instantiate(cfg.augment.policy_optimizer)
    assert (optimizer.func, optimizer.keywords) == (POLICY_OPTIMIZER.func, POLICY_OPTIMIZER.keywords)
