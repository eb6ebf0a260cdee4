"""Tests of madao_pl.hyperstep: the plain, adaptive and chunked hyper steps against independent oracles.

Oracles are built here from the pieces the module does not use together: the policy's own forward and
Cutout on a direct graph to the policy parameters, and :func:`madao_pl.hypergrad.implicit_hypergradient`
(plain path = today's MADAOModule maths); for the chunked step, the same per-chunk-statistics loss with
every chunk's graph alive at once. Measured errors are printed with the prefix ``[hyperstep]``
(run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from madao_pl.augment.ops import cutout
from madao_pl.augment.policy import MADAOPolicy, RandAugmentPolicy
from madao_pl.hypergrad import implicit_hypergradient
from madao_pl.hyperstep import HyperStepResult, StepTimer, augment_for_hyper_step, hyper_step
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


def run(net: nn.Module, policy: MADAOPolicy, batches, **kwargs) -> HyperStepResult:
    """hyper_step with fixed policy and global seeds (so every call draws the same augmentation)."""
    torch.manual_seed(GLOBAL_SEED)
    kwargs.setdefault("cutout_size", CUTOUT)
    return hyper_step(
        net,
        policy,
        *batches,
        normalize=normalize,
        generator=torch.Generator().manual_seed(POLICY_SEED),
        **kwargs,
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


def test_plain_path_is_todays_hyper_step():
    """tol=0, chunks=1 equals the module's original maths: one graph from the policy parameters through
    Cutout and the network, df/dtheta with create_graph, dg/dtheta in eval mode, implicit_hypergradient.
    Also the network gradient, both losses, the running statistics (one train-mode update) and the mode."""
    net, policy, batches = make_problem(torch.float64)
    images, labels, val_images, val_labels = batches
    reference_net = copy.deepcopy(net)
    result = run(net, policy, batches)

    inputs = reference_inputs(policy, images)
    params = list(reference_net.parameters())
    loss = F.cross_entropy(reference_net(inputs), labels)
    train_grads = torch.autograd.grad(loss, params, create_graph=True)
    val_grads = validation_grads(reference_net, val_images, val_labels)
    expected = implicit_hypergradient(train_grads, params, list(policy.parameters()), val_grads)

    error = _rel(result.hypergrad, expected)
    _report("plain vs implicit_hypergradient on one graph (float64)", error)
    assert error <= 1e-12
    assert _rel(result.network_grads, train_grads) <= 1e-14
    assert result.train_loss.item() == pytest.approx(loss.item(), rel=1e-14)
    reference_net.eval()
    val_loss = F.cross_entropy(reference_net(normalize(val_images)), val_labels)
    assert result.val_loss.item() == pytest.approx(val_loss.item(), rel=1e-14)
    for got, want in zip(bn_state(net), bn_state(reference_net), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net.training
    assert result.info.hvps == 5 and result.info.method == "neumann"
    assert all(g.grad is None for g in policy.parameters()) and all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("alpha", [1e-3, 3e-2, 1e-1])
def test_adaptive_neumann_within_tolerance_of_full_series(alpha):
    """Default tol 1e-4: the hypergradient stays within 1e-3 relative of the full J = 5 series (float64,
    BatchNorm net), with fewer HVPs; larger alpha makes |alpha H| larger, so more terms are needed."""
    net, policy, batches = make_problem(torch.float64)
    full = run(copy.deepcopy(net), policy, batches, alpha=alpha)
    for tol in (1e-3, 1e-4):
        adaptive = run(copy.deepcopy(net), policy, batches, alpha=alpha, tol=tol)
        error = _rel(adaptive.hypergrad, full.hypergrad)
        _report(f"adaptive tol={tol:g} alpha={alpha:g} ({adaptive.info.hvps} HVPs) vs full series", error)
        assert adaptive.info.method == "neumann-adaptive"
        assert adaptive.info.hvps < full.info.hvps == 5
        assert error <= (1e-3 if tol == 1e-4 else 3 * tol)
        assert _rel(adaptive.network_grads, full.network_grads) == 0.0


def chunk_reference(net: nn.Module, policy: MADAOPolicy, batches, chunks: int) -> tuple[Tensor, ...]:
    """The per-chunk-statistics hypergradient with every chunk's graph alive at once (float64): the
    'unchunked' evaluation of the loss the chunked hyper step differentiates."""
    images, labels, val_images, val_labels = batches
    inputs = reference_inputs(policy, images)
    with torch.no_grad():
        net(inputs)  # the one full-batch train-mode forward: running statistics as the hyper step leaves them
    val_grads = validation_grads(net, val_images, val_labels)
    params = list(net.parameters())
    loss = sum(
        F.cross_entropy(net(x), y, reduction="sum")
        for x, y in zip(torch.tensor_split(inputs, chunks), torch.tensor_split(labels, chunks), strict=True)
    ) / len(labels)
    train_grads = torch.autograd.grad(loss, params, create_graph=True)
    return implicit_hypergradient(train_grads, params, list(policy.parameters()), val_grads)


@pytest.mark.parametrize("chunks", [2, 5])
def test_chunked_equals_unchunked_per_chunk_statistics(chunks):
    """BatchNorm net, float64: the chunked hyper step (one chunk's graph at a time, rebuilt for every HVP
    and the mixed derivative; 5 chunks of 12 samples are uneven) equals the same loss evaluated with all
    chunk graphs alive, to 1e-10; network gradient and running statistics are the full-batch ones."""
    net, policy, batches = make_problem(torch.float64)
    plain_net, reference_net = copy.deepcopy(net), copy.deepcopy(net)
    plain = run(plain_net, policy, batches)
    chunked = run(net, policy, batches, chunks=chunks)
    expected = chunk_reference(reference_net, policy, batches, chunks)
    error = _rel(chunked.hypergrad, expected)
    _report(f"chunked ({chunks}) vs unchunked per-chunk-statistics reference (float64)", error)
    assert error <= 1e-10
    assert _rel(chunked.network_grads, plain.network_grads) <= 1e-13
    assert chunked.train_loss.item() == pytest.approx(plain.train_loss.item(), rel=1e-14)
    assert chunked.val_loss.item() == pytest.approx(plain.val_loss.item(), rel=1e-14)
    for got, want in zip(bn_state(net), bn_state(plain_net), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert chunked.info.hvps == 5


@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_recompute_equals_plain_path(tol):
    """recompute=True rebuilds df/dtheta's graph for every HVP and the mixed derivative: the same maths as
    keeping it (BatchNorm net, float64), the same network gradient, losses and running statistics."""
    net, policy, batches = make_problem(torch.float64)
    plain_net = copy.deepcopy(net)
    plain = run(plain_net, policy, batches, tol=tol)
    recomputed = run(net, policy, batches, tol=tol, recompute=True)
    error = _rel(recomputed.hypergrad, plain.hypergrad)
    _report(f"recompute vs keeping the graph, tol={tol:g} (float64)", error)
    assert error <= 1e-12
    assert recomputed.info.hvps == plain.info.hvps
    assert _rel(recomputed.network_grads, plain.network_grads) <= 1e-13
    assert recomputed.train_loss.item() == pytest.approx(plain.train_loss.item(), rel=1e-14)
    assert recomputed.val_loss.item() == pytest.approx(plain.val_loss.item(), rel=1e-14)
    for got, want in zip(bn_state(net), bn_state(plain_net), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["neumann", "cg"])
def test_chunked_equals_plain_when_loss_is_a_sum_over_samples(method):
    """Without a cross-sample layer the per-chunk loss is the full-batch loss: chunked == plain to 1e-10."""
    net, policy, batches = make_problem(torch.float64, batchnorm=False)
    plain = run(copy.deepcopy(net), policy, batches, method=method)
    for chunks in (3, 12):
        chunked = run(copy.deepcopy(net), policy, batches, method=method, chunks=chunks)
        error = _rel(chunked.hypergrad, plain.hypergrad)
        _report(f"chunked ({chunks}) vs plain, no BatchNorm, {method} (float64)", error)
        assert error <= 1e-10
        assert chunked.info.hvps == plain.info.hvps > 0


@pytest.mark.parametrize("batchnorm,chunks,recompute", [(True, 1, False), (True, 1, True), (False, 4, True)])
def test_fast_settings_agree_with_plain_path_in_float32(batchnorm, chunks, recompute):
    """tol=1e-4 with recompute (and chunks where the loss is a sum over samples) against the plain path,
    float32: relative difference <= 1e-3 and cosine >= 0.9999."""
    net, policy, batches = make_problem(torch.float32, batchnorm=batchnorm, seed=4)
    plain = run(copy.deepcopy(net), policy, batches)
    fast = run(copy.deepcopy(net), policy, batches, tol=1e-4, chunks=chunks, recompute=recompute)
    error, cosine = _rel(fast.hypergrad, plain.hypergrad), _cos(fast.hypergrad, plain.hypergrad)
    name = f"fast (tol 1e-4, chunks {chunks}, recompute {recompute}, BatchNorm {batchnorm}) vs plain, float32"
    _report(f"{name}: rel", error)
    _report(f"{name}: 1 - cos", 1 - cosine)
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


@pytest.mark.parametrize(
    "tol,chunks,recompute",
    [(0.0, 1, False), (1e-4, 1, False), (0.0, 1, True), (0.0, 3, True), (1e-4, 3, True)],
)
def test_reported_hvps_are_the_ones_performed(tol, chunks, recompute):
    """info.hvps against passes counted on the network itself: one graph, every HVP is one more backward
    pass through the logits (after the df/dtheta pass, before the mixed derivative's); recomputing (and
    chunked), every HVP and the mixed derivative rebuild each chunk's forward."""
    net, policy, batches = make_problem(torch.float64)
    counts = count_passes(net)
    result = run(net, policy, batches, tol=tol, chunks=chunks, recompute=recompute)
    k = result.info.hvps
    assert k == (5 if tol == 0 else 1)
    if not recompute:
        assert counts == {"train_forwards": 1, "logit_backwards": 1 + k + 1 + 1}  # + validation backward
    else:
        assert counts["train_forwards"] == 1 + chunks * (k + 1)


@pytest.mark.parametrize("chunks,recompute", [(1, False), (1, True), (3, True)])
def test_policy_and_cutout_draw_once(chunks, recompute):
    """One augmentation's random draws per hyper step, whatever the mode: the global RNG ends where one
    Cutout call leaves it, and the policy generator where one policy forward leaves it. Keeping the graph,
    the policy runs once; recomputing, it runs a second time at the end on the saved draws (a replay whose
    images are checked bit for bit), and the generators are put back after it."""
    net, policy, batches = make_problem(torch.float64)
    calls = []
    policy.register_forward_hook(lambda module, args, output: calls.append(1))
    generator = torch.Generator().manual_seed(POLICY_SEED)
    torch.manual_seed(GLOBAL_SEED)
    hyper_step(
        net,
        policy,
        *batches,
        normalize=normalize,
        cutout_size=CUTOUT,
        chunks=chunks,
        recompute=recompute,
        generator=generator,
    )
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
    _, policy, batches = make_problem(torch.float64, batchnorm=False)
    results = []
    for recompute in (False, True):
        torch.manual_seed(GLOBAL_SEED)
        generator = torch.Generator().manual_seed(POLICY_SEED)
        policy.generator = generator if use_policy_generator else None
        kwargs = {} if use_policy_generator else {"generator": generator}
        torch.manual_seed(0)
        net = DrawingNet().double()
        torch.manual_seed(GLOBAL_SEED)
        result = hyper_step(
            net, policy, *batches, normalize=normalize, cutout_size=CUTOUT, recompute=recompute, **kwargs
        )
        results.append(result)
        after_global, after_policy = torch.get_rng_state(), generator.get_state()
        expected_generator = torch.Generator().manual_seed(POLICY_SEED)
        torch.manual_seed(GLOBAL_SEED)
        with torch.enable_grad():
            cutout(policy(batches[0], generator=expected_generator), CUTOUT)
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

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.rand(images.shape, generator=self.private, dtype=images.dtype)
        return super().forward(images, generator=generator) + 1e-3 * noise


def test_recompute_refuses_an_augmentation_it_cannot_replay():
    """A replay that gives other images would put the hypergradient at the wrong point: it is an error
    naming the fix, not a silently wrong result (keeping the graph still works)."""
    _, _, batches = make_problem(torch.float64, batchnorm=False)
    policy = ImpurePolicy().double()
    with pytest.raises(RuntimeError, match="hyper_recompute=false"):
        run(SmoothNet().double(), policy, batches, recompute=True)
    assert _flat(run(SmoothNet().double(), policy, batches).hypergrad).norm() > 0


def test_augment_for_hyper_step_has_graph_and_matches_policy_then_cutout():
    net, policy, (images, *_) = make_problem(torch.float64)
    torch.manual_seed(GLOBAL_SEED)
    with torch.no_grad():  # enables grad itself: relaxed draws and a graph even inside no_grad
        got = augment_for_hyper_step(
            policy,
            images,
            normalize=normalize,
            cutout_size=CUTOUT,
            generator=torch.Generator().manual_seed(POLICY_SEED),
        )
    assert got.requires_grad
    torch.testing.assert_close(got, reference_inputs(policy, images), rtol=0, atol=0)


def test_fixed_policy_gets_empty_hypergradient_and_exact_network_gradient():
    net, _, batches = make_problem(torch.float64)
    policy = RandAugmentPolicy()
    result = hyper_step(net, policy, *batches, normalize=normalize)
    assert result.hypergrad == () and result.info.hvps == 0
    assert len(result.network_grads) == len(list(net.parameters()))


def test_timer_records_every_section_and_no_timer_records_nothing():
    net, policy, batches = make_problem(torch.float64)
    assert run(copy.deepcopy(net), policy, batches).timings == {}
    timer = StepTimer("cpu")
    result = run(copy.deepcopy(net), policy, batches, tol=1e-4, chunks=2, timer=timer)
    expected = {
        "augmented_forward",
        "train_gradient",
        "validation_gradient",
        "hvp_1",
        "inverse_hvp_overhead",
        "mixed_derivative",
        "restore_buffers",
    }
    assert set(result.timings) == expected and result.timings == timer.times
    assert all(t >= 0 for t in result.timings.values())
    with timer.section("optimiser_steps"):
        pass
    assert "optimiser_steps" in timer.times
    timer.reset()
    assert timer.times == {}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"chunks": 0}, "hyper_chunks"),
        ({"chunks": BATCH + 1}, "more than the batch size"),
        ({"tol": -1.0}, "neumann_tol"),
        ({"method": "newton"}, "unknown method"),
        ({"alpha": 0.0}, "neumann_alpha"),
        ({"steps": -1}, "neumann_steps"),
        ({"cutout_size": -2}, "cutout_size"),
        ({"recompute": 1}, "hyper_recompute"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, match):
    net, policy, batches = make_problem(torch.float64)
    with pytest.raises(ValueError, match=match):
        run(net, policy, batches, **kwargs)


def test_mismatched_labels_raise():
    net, policy, (images, labels, val_images, val_labels) = make_problem(torch.float64)
    with pytest.raises(ValueError, match="val_images"):
        hyper_step(net, policy, images, labels, val_images, val_labels[:-1], normalize=normalize)
