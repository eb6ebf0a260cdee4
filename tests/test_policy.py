"""Tests of the augmentation policies (DESIGN.md §4; paper §3.3 eq. 7-10)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import AutoAugment as TorchvisionAutoAugment
from torchvision.transforms import AutoAugmentPolicy as TorchvisionAAPolicy

import madao_pl.augment.stage as stage_module
from madao_pl.augment import (
    AUTOAUGMENT_POLICIES,
    IDENTITY,
    MAGNITUDE_OPS,
    OP_NAMES,
    OPERATIONS,
    AutoAugmentPolicy,
    IdentityPolicy,
    MADAOPolicy,
    Policy,
    RandAugmentPolicy,
    ReplayPolicy,
    TrivialAugmentPolicy,
    apply_stage,
    autoaugment_magnitude,
    conditional_gumbels,
    conditional_logistic,
    describe_stage,
    get_operation,
    randaugment_magnitude,
    relaxed_log_one_hot,
)
from madao_pl.augment.stage import draw_uniform, gumbel_from_uniform

N_OPS = len(OP_NAMES)
SKEWED_LOGITS = torch.linspace(-1.5, 1.5, N_OPS)[
    torch.randperm(N_OPS, generator=torch.Generator().manual_seed(3))
]
SKEWED_PROB_RAW = torch.linspace(-2.0, 2.0, N_OPS)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int, size: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=gen(seed), dtype=dtype)


def skewed_policy(**kwargs) -> MADAOPolicy:
    policy = MADAOPolicy(num_stages=1, **kwargs)
    with torch.no_grad():
        policy.logits.copy_(SKEWED_LOGITS[None])
        policy.probability_raw.copy_(SKEWED_PROB_RAW[None])
    return policy


def learns(policy: torch.nn.Module) -> bool:
    """Whether a policy learns: it has parameters that require grad."""
    return any(p.requires_grad for p in policy.parameters())


def assert_frequencies(counts: torch.Tensor, total: int, probs: torch.Tensor, what: str) -> None:
    """Empirical frequencies within 4 binomial standard errors of ``probs`` (exact where p is 0 or 1)."""
    freq = counts.double() / total
    probs = probs.double()
    se = torch.sqrt(probs * (1 - probs) / total)
    z = torch.where(se > 0, (freq - probs).abs() / se, torch.where(freq == probs, 0.0, math.inf))
    assert bool((z < 4).all()), f"{what}: max |z| = {z.max():.2f}; freq {freq.tolist()} vs {probs.tolist()}"


@pytest.fixture
def counting_ops(monkeypatch):
    """Replace apply_stage's op table by wrappers that record (op name, batch size) per call."""
    calls: list[tuple[str, int]] = []

    def wrap(op):
        def fn(x, magnitude, sign):
            calls.append((op.name, x.shape[0]))
            return op.fn(x, magnitude, sign)

        return dataclasses.replace(op, fn=fn)

    monkeypatch.setattr(stage_module, "OPERATIONS", tuple(wrap(op) for op in OPERATIONS))
    return calls


@pytest.fixture
def identity_counting_ops(monkeypatch):
    """Like counting_ops, but the ops return their input (fast, for the routing statistics)."""
    calls: Counter = Counter()

    def wrap(op):
        def fn(x, magnitude, sign):
            calls[op.name] += x.shape[0]
            return x.clone()

        return dataclasses.replace(op, fn=fn)

    monkeypatch.setattr(stage_module, "OPERATIONS", tuple(wrap(op) for op in OPERATIONS))
    return calls


# -------------------------------------------------------------------------------------------- MADAO: setup


def test_madao_has_78_parameters_and_paper_initialisation():
    policy = MADAOPolicy()
    assert sum(p.numel() for p in policy.parameters()) == 78
    assert learns(policy) and policy.num_stages == 2
    assert policy.logits.shape == (2, 14) and policy.probability_raw.shape == (2, 14)
    assert policy.magnitude_raw.shape == (2, 11)
    expected = 1 / (1 + math.exp(-0.5))
    assert torch.allclose(policy.apply_probabilities(), torch.full((2, 14), expected))
    assert torch.allclose(policy.magnitudes(), torch.full((2, 11), expected))
    assert torch.allclose(policy.selection_probabilities(), torch.full((2, 14), 1 / 14))
    assert policy.entropy().item() == pytest.approx(math.log(14), rel=1e-6)
    described = policy.describe()
    assert len(described["stages"]) == 2
    for stage in described["stages"]:
        assert list(stage) == list(OP_NAMES)
        for name, entry in stage.items():
            assert entry["selection"] == pytest.approx(1 / 14)
            assert entry["apply"] == pytest.approx(expected)
            if name in MAGNITUDE_OPS:
                assert entry["magnitude"] == pytest.approx(expected)
            else:
                assert entry["magnitude"] is None


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        MADAOPolicy(temperature=0.0)
    with pytest.raises(ValueError, match="num_stages"):
        MADAOPolicy(num_stages=0)
    with pytest.raises(ValueError, match="rao_samples"):
        MADAOPolicy(rao_samples=0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        MADAOPolicy()(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        MADAOPolicy()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("policy", [MADAOPolicy(), RandAugmentPolicy(), IdentityPolicy()], ids=type)
def test_images_outside_0_1_are_refused_with_the_fix(policy: Policy) -> None:
    """Float pixels in [0, 255] or already-normalised images get a message naming the fix; rounding just
    outside [0, 1] passes."""
    with pytest.raises(ValueError, match="divide them by 255"):
        policy(images(2) * 255)
    with pytest.raises(ValueError, match="already normalised"):
        policy((images(2) - 0.5) / 0.25)
    assert policy(images(2).clamp(1e-6, 1 - 1e-6) * (1 + 2e-6) - 1e-6).shape == (2, 3, 8, 8)


# -------------------------------------------------------------------------------------------- MADAO: sampling


@pytest.mark.parametrize("relaxed", [True, False])
def test_selection_and_apply_frequencies_match_the_distribution(relaxed):
    policy = skewed_policy()
    n = 20000
    with torch.set_grad_enabled(relaxed):
        sample = policy.sample_stage(n, 0, generator=gen(1))
    assert (sample.scale is not None) == relaxed
    counts = torch.bincount(sample.op_index, minlength=N_OPS)
    assert_frequencies(counts, n, torch.softmax(SKEWED_LOGITS, 0), "selection")
    applied = sample.apply_weight.detach() > 0.5
    if not relaxed:
        assert set(sample.apply_weight.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(SKEWED_PROB_RAW)
    for i in range(N_OPS):
        chosen = sample.op_index == i
        assert_frequencies(
            applied[chosen].sum()[None], int(chosen.sum()), p[i : i + 1], f"apply {OP_NAMES[i]}"
        )
    signs = sample.sign
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert_frequencies((signs > 0).sum()[None], n, torch.tensor([0.5]), "sign")


@pytest.mark.parametrize("grad", [True, False])
def test_forward_routes_samples_by_the_drawn_distribution(identity_counting_ops, grad):
    """Count the samples each op receives in forward: grad path = every chosen sample (N pi_i);
    no-grad path = only the applied ones (N pi_i p_i)."""
    policy = skewed_policy()
    n = 20000
    with torch.set_grad_enabled(grad):
        out = policy(images(n, size=4), generator=gen(2))
    assert out.shape == (n, 3, 4, 4)
    counts = torch.tensor([identity_counting_ops[name] for name in OP_NAMES])
    expected = torch.softmax(SKEWED_LOGITS, 0)
    if not grad:
        expected = expected * torch.sigmoid(SKEWED_PROB_RAW)
    assert_frequencies(counts, n, expected, "op calls")


def test_grad_and_no_grad_paths_make_the_same_discrete_choices():
    policy = skewed_policy()
    relaxed = policy.sample_stage(4000, 0, generator=gen(5), relaxed=True)
    hard = policy.sample_stage(4000, 0, generator=gen(5), relaxed=False)
    assert torch.equal(relaxed.op_index, hard.op_index)
    assert torch.equal(relaxed.sign, hard.sign)
    assert torch.equal((relaxed.apply_weight > 0.5).float(), hard.apply_weight)
    assert torch.equal(relaxed.magnitude, hard.magnitude)
    assert torch.equal(relaxed.scale.detach(), torch.ones(4000))


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_temperature_does_not_change_selection_frequencies(temperature):
    """argmax of softmax((pi + g) / tau) is Categorical(softmax(pi)) for every tau; dividing pi by tau a
    second time (a public implementation's bug) gives softmax(pi / tau) and fails this."""
    policy = skewed_policy(temperature=temperature)
    sample = policy.sample_stage(20000, 0, generator=gen(7), relaxed=True)
    counts = torch.bincount(sample.op_index, minlength=N_OPS)
    assert_frequencies(counts, 20000, torch.softmax(SKEWED_LOGITS, 0), f"selection at tau={temperature}")


def test_relaxed_log_one_hot_applies_the_temperature_once():
    """sample_stage's relaxed selection, log u, is the log of softmax((pi + g) / tau): for one draw (B, N)
    and for S draws (S, B, N), as the Gumbel-Rao path passes them. With tau applied twice,
    (pi / tau + g) / tau, or to the logits only, pi / tau + g, u is far from that, so either mistake fails."""
    logits = SKEWED_LOGITS.double()
    g = gumbel_from_uniform(draw_uniform((3, 5, N_OPS), gen(0), torch.device("cpu"))).double()
    tau = 0.3

    def softmax(z: torch.Tensor) -> torch.Tensor:
        return torch.exp(z) / torch.exp(z).sum(-1, keepdim=True)

    expected = softmax((logits + g) / tau)
    for noise, want in ((g[0], expected[0]), (g, expected)):
        log_u = relaxed_log_one_hot(logits, noise, tau)
        assert log_u.shape == want.shape
        assert torch.allclose(log_u.exp(), want, rtol=1e-12, atol=0)
    for wrong in ((logits / tau + g) / tau, logits / tau + g):
        assert not torch.allclose(softmax(wrong), expected, rtol=1e-3, atol=1e-3)


def test_sample_stage_selection_is_the_gumbel_softmax_of_its_noise_and_gradient_is_one_over_tau():
    """The relaxed u of sample_stage is softmax((pi + g) / tau) for the generator's Gumbel noise (the first
    14 of the 16 uniform columns), and the straight-through factor's gradient is (onehot - u) / tau.

    The factor scale_n = exp(log u_{n,i} - stopgrad(log u_{n,i})) has gradient (onehot_n - u_n) / tau, so
    each sample's drawn u_n is read back from its own gradient: onehot_n - tau * d scale_n / d pi."""
    tau = 0.5
    policy = skewed_policy(temperature=tau)
    sample = policy.sample_stage(64, 0, generator=gen(11), relaxed=True)
    g = gumbel_from_uniform(draw_uniform((64, N_OPS + 2), gen(11), torch.device("cpu"))[:, :N_OPS])
    u = torch.softmax((SKEWED_LOGITS + g) / tau, dim=-1)
    assert torch.equal(sample.op_index, u.argmax(-1))
    one_hot = torch.nn.functional.one_hot(sample.op_index, N_OPS).float()
    per_sample = torch.stack(
        [torch.autograd.grad(sample.scale[n], policy.logits, retain_graph=True)[0][0] for n in range(64)]
    )
    assert torch.allclose(one_hot - tau * per_sample, u, atol=1e-6)
    weights = torch.randn(64, generator=gen(12))
    (grad,) = torch.autograd.grad((sample.scale * weights).sum(), policy.logits)
    expected = (weights[:, None] * (one_hot - u)).sum(0) / tau
    assert torch.allclose(grad[0], expected, atol=1e-4)


def test_conditional_gumbels_sample_the_noise_given_the_winner():
    """Given argmax(pi + g) = d, the conditional draws always pick d and give the same mean relaxed sample
    softmax((pi + g) / tau) as unconditional draws filtered on that event (rejection sampling)."""
    torch.manual_seed(0)
    logits, tau, n = torch.tensor([0.5, -0.3, 0.2, 1.0]), 0.5, 200_000
    g = gumbel_from_uniform(draw_uniform((n, 4), None, torch.device("cpu")))
    u, winner = torch.softmax((logits + g) / tau, -1), (logits + g).argmax(-1)
    for d in range(4):
        cond = conditional_gumbels(logits, torch.tensor([d]), torch.rand(n, 1, 5))[:, 0]
        assert torch.equal((logits + cond).argmax(-1), torch.full((n,), d))
        filtered = u[winner == d]
        tolerance = 4 * filtered.std(0) / len(filtered) ** 0.5 + 1e-4
        assert ((torch.softmax((logits + cond) / tau, -1).mean(0) - filtered.mean(0)).abs() < tolerance).all()


def test_conditional_logistic_samples_the_noise_given_the_outcome():
    """Given 1[a + l > 0] = o, the conditional draws give outcome o and the mean of sigmoid((a + l) / tau)
    of unconditional draws filtered on it."""
    torch.manual_seed(1)
    a, tau, n = torch.tensor([0.7]), 0.5, 200_000
    noise = torch.logit(torch.rand(n))
    outcome = (a + noise > 0).float()
    for o in (0.0, 1.0):
        cond = conditional_logistic(a, torch.tensor([o]), torch.rand(n, 1))[:, 0]
        assert torch.equal((a + cond > 0).float(), torch.full((n,), o))
        filtered = torch.sigmoid((a + noise[outcome == o]) / tau)
        tolerance = 4 * filtered.std() / len(filtered) ** 0.5
        assert abs(float(torch.sigmoid((a + cond) / tau).mean() - filtered.mean())) < tolerance


def test_rao_blackwellised_draws_keep_the_choices_and_the_mean_gradient_with_less_variance():
    """rao_samples = S: the same ops and hard apply values as the hard draw from the same generator state;
    the selection gradient has the single-draw estimator's mean (within Monte-Carlo error) and a smaller
    variance; the apply weight is hard in value with a gradient to the chosen op's probability."""
    tau, batch, rounds = 0.2, 256, 40
    single, averaged = skewed_policy(temperature=tau), skewed_policy(temperature=tau, rao_samples=16)
    hard = averaged.sample_stage(batch, 0, generator=gen(5), relaxed=False)
    rb = averaged.sample_stage(batch, 0, generator=gen(5), relaxed=True)
    assert torch.equal(rb.op_index, hard.op_index)
    assert torch.equal(rb.apply_weight.detach(), hard.apply_weight)
    (grad_p,) = torch.autograd.grad(rb.apply_weight.sum(), averaged.probability_raw)
    assert (grad_p[0] > 0).all() and torch.isfinite(grad_p).all()
    weights = torch.linspace(-1.0, 1.0, N_OPS)  # the loss's sensitivity to each op's selection

    def gradients(policy: MADAOPolicy) -> torch.Tensor:
        rows = []
        for r in range(rounds):
            sample = policy.sample_stage(batch, 0, generator=gen(100 + r), relaxed=True)
            loss = (sample.scale * weights[sample.op_index]).mean()
            rows.append(torch.autograd.grad(loss, policy.logits)[0][0])
        return torch.stack(rows)

    g1, g16 = gradients(single), gradients(averaged)
    se = (g1.var(0) / rounds + g16.var(0) / rounds).sqrt()
    assert ((g1.mean(0) - g16.mean(0)).abs() < 4 * se + 1e-4).all()
    assert g16.var(0).sum() < 0.5 * g1.var(0).sum()


def test_centered_selection_keeps_the_value_and_sends_no_gradient_from_unchanged_samples():
    """centered_selection: the same output; the selection gradient is the paper's with each output replaced
    by its change (z - x), so a batch where no op is applied (hard apply weights, p ~ eps) gives the
    logits a zero gradient while the paper's factor gives them one."""
    x, w = images(32, seed=4), torch.randn(32, 3, 8, 8, generator=gen(6))
    for probability_raw, expect_zero in ((-30.0, True), (30.0, False)):
        grads = {}
        for centered in (False, True):
            policy = MADAOPolicy(num_stages=1, rao_samples=2, centered_selection=centered)
            with torch.no_grad():
                policy.probability_raw.fill_(probability_raw)
            sample = policy.sample_stage(32, 0, generator=gen(7), relaxed=True)
            out = apply_stage(x, *sample)
            grads[centered] = (out, torch.autograd.grad((out * w).sum(), policy.logits)[0])
        assert torch.equal(grads[False][0], grads[True][0])
        assert grads[False][1].abs().sum() > 0
        assert (grads[True][1].abs().sum() == 0) == expect_zero
    scale = torch.ones(32, requires_grad=True)
    changed = apply_stage(x, *sample._replace(scale=scale))
    (through_change,) = torch.autograd.grad((changed * w).sum(), scale)
    assert torch.allclose(through_change, ((changed - x) * w).sum((1, 2, 3)), atol=1e-5)


# -------------------------------------------------------------------------------------------- MADAO: forward


def test_forward_value_equals_the_hard_selected_op_and_selection_gradient_is_exact():
    """Grad path, p ~ 1: each output equals O_i(x_n; mu_i, sign_n) of the drawn op (the factor is 1 in
    value); the logits' gradient is sum_n <dL/dout_n, out_n> (onehot_n - u_n) / tau."""
    policy = MADAOPolicy(num_stages=1, temperature=0.5)
    with torch.no_grad():
        policy.probability_raw.fill_(30.0)
        policy.magnitude_raw.copy_(torch.linspace(-1, 1, 11)[None])
    x = images(48, size=12, seed=3)
    out = policy(x, generator=gen(4))
    sample = policy.sample_stage(48, 0, generator=gen(4))
    # The relaxed one-hot u the stage drew: the Gumbel noise is the first 14 of its 16 uniform columns.
    g = gumbel_from_uniform(draw_uniform((48, N_OPS + 2), gen(4), torch.device("cpu"))[:, :N_OPS])
    u = relaxed_log_one_hot(policy.logits[0].detach(), g, 0.5).exp()
    assert torch.equal(sample.op_index, u.argmax(-1))
    assert torch.equal(sample.apply_weight.detach(), torch.ones(48))
    assert torch.equal(sample.scale.detach(), torch.ones(48))
    for n in range(48):
        op = OPERATIONS[int(sample.op_index[n])]
        expected = op.fn(x[n : n + 1], sample.magnitude[n : n + 1].detach(), sample.sign[n : n + 1])
        assert torch.allclose(out[n : n + 1], expected, atol=1e-6), op.name
    w = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * w).sum(), policy.logits)
    inner = (w * out).detach().sum(dim=(1, 2, 3))
    one_hot = torch.nn.functional.one_hot(sample.op_index, N_OPS).float()
    expected = (inner[:, None] * (one_hot - u)).sum(0) / 0.5
    assert torch.allclose(grad[0], expected, rtol=1e-4, atol=1e-4)


def test_loss_gives_finite_nonzero_gradients_to_all_78_parameters():
    policy = MADAOPolicy()
    x = images(96, size=12, seed=5)
    total = {name: torch.zeros_like(p) for name, p in policy.named_parameters()}
    for draw in range(3):
        policy.zero_grad()
        out = policy(x, generator=gen(100 + draw))
        assert out.shape == x.shape and bool(((out >= 0) & (out <= 1)).all())
        (out * torch.randn(x.shape, generator=gen(200 + draw))).sum().backward()
        for name, p in policy.named_parameters():
            assert bool(torch.isfinite(p.grad).all()), name
            total[name] += p.grad.abs()
    for name, value in total.items():
        assert bool((value > 0).all()), f"{name} has zero gradient entries: {value}"


def test_magnitude_and_probability_gradients_match_finite_differences():
    """Fixed noise (same seed) makes the output a smooth function of the raw magnitude and probability
    (float64, Bernoulli temperature 1): autograd must equal central differences."""
    policy = MADAOPolicy(num_stages=2, bernoulli_temperature=1.0).double()
    brightness, contrast = OP_NAMES.index("Brightness"), OP_NAMES.index("Contrast")
    with torch.no_grad():
        policy.logits.fill_(-30.0)
        policy.logits[0, brightness] = 30.0
        policy.logits[1, contrast] = 30.0
        policy.magnitude_raw.copy_(torch.linspace(-1, 1, 11, dtype=torch.float64).expand(2, 11))
        policy.probability_raw.copy_(torch.linspace(-1, 1, 14, dtype=torch.float64).expand(2, 14))
    x = images(16, size=6, seed=9, dtype=torch.float64) * 0.4 + 0.3  # stays inside [0, 1] after both ops
    w = torch.randn(x.shape, generator=gen(10), dtype=torch.float64)

    def loss() -> torch.Tensor:
        return (policy(x, generator=gen(13)) * w).sum()

    loss().backward()
    for param, entries in (
        (
            policy.magnitude_raw,
            [(0, MAGNITUDE_OPS.index("Brightness")), (1, MAGNITUDE_OPS.index("Contrast"))],
        ),
        (policy.probability_raw, [(0, brightness), (1, contrast)]),
    ):
        for k, j in entries:
            h = 1e-6
            values = []
            for step in (h, -2 * h, h):
                with torch.no_grad():
                    param[k, j] += step
                values.append(loss().item())  # grad mode: the relaxed draws that backward saw
            up, down = values[0], values[1]
            fd = (up - down) / (2 * h)
            assert abs(fd) > 1e-3
            assert param.grad[k, j].item() == pytest.approx(fd, rel=1e-5)


def test_each_op_is_called_at_most_once_per_stage(counting_ops):
    policy = MADAOPolicy(num_stages=1)
    x = images(64, size=8)
    for grad in (True, False):
        counting_ops.clear()
        with torch.set_grad_enabled(grad):
            policy(x, generator=gen(21))
        names = [name for name, _ in counting_ops]
        assert len(names) == len(set(names)) and len(names) >= 10
        assert sum(size for _, size in counting_ops) <= 64
    counting_ops.clear()
    with torch.no_grad():
        MADAOPolicy(num_stages=3)(x, generator=gen(22))
    assert max(Counter(name for name, _ in counting_ops).values()) <= 3


def test_no_grad_path_only_runs_applied_samples(counting_ops):
    policy = MADAOPolicy(num_stages=1)
    with torch.no_grad():
        policy.probability_raw.fill_(-1.0)  # p = 0.27
        sample = policy.sample_stage(256, 0, generator=gen(30))
        policy(images(256), generator=gen(30))
    assert sum(size for _, size in counting_ops) == int(sample.apply_weight.sum())


# -------------------------------------------------------------------------------------------- apply_stage


def test_apply_stage_matches_a_per_sample_loop_and_skips_zero_weights(counting_ops):
    b = 40
    x = images(b, size=10, seed=40)
    op_index = torch.randint(N_OPS, (b,), generator=gen(41))
    weight = torch.rand(b, generator=gen(42))
    weight[::3] = 0.0
    magnitude = torch.rand(b, generator=gen(43))
    sign = torch.where(torch.rand(b, generator=gen(44)) < 0.5, 1.0, -1.0)
    scale = 1 + 0.1 * torch.rand(b, generator=gen(45))
    with torch.no_grad():
        out = apply_stage(x, op_index, weight, magnitude, sign, scale)
    assert sum(size for _, size in counting_ops) == int((weight != 0).sum())
    for n in range(b):
        y = OPERATIONS[int(op_index[n])].fn(x[n : n + 1], magnitude[n : n + 1], sign[n : n + 1])
        expected = scale[n] * (weight[n] * y + (1 - weight[n]) * x[n : n + 1])
        assert torch.allclose(out[n : n + 1], expected, atol=1e-6)
    # A zero weight that needs a gradient is not skipped: d out / d b = O(x) - x.
    counting_ops.clear()
    w = weight.clone().requires_grad_(True)
    apply_stage(x, op_index, w, magnitude, sign).sum().backward()
    assert sum(size for _, size in counting_ops) == b
    for n in (0, 3):
        y = OPERATIONS[int(op_index[n])].fn(x[n : n + 1], magnitude[n : n + 1], sign[n : n + 1])
        assert w.grad[n].item() == pytest.approx((y - x[n : n + 1]).sum().item(), abs=1e-4)


def test_apply_stage_rejects_bad_shapes():
    x = images(4)
    ok = torch.ones(4)
    with pytest.raises(ValueError, match="magnitude must have shape"):
        apply_stage(x, torch.zeros(4, dtype=torch.long), ok, torch.ones(3), ok)
    with pytest.raises(ValueError, match="long"):
        apply_stage(x, torch.zeros(4), ok, ok, ok)


# -------------------------------------------------------------------------------------------- save / replay


def test_json_round_trip_is_exact_and_replay_reproduces_the_policy(tmp_path):
    policy = MADAOPolicy()
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen(p.numel())) * 1.7)
    path = tmp_path / "policy.json"
    policy.save_json(path)
    data = json.loads(path.read_text())
    assert data["describe"]["stages"][1]["Rotate"]["magnitude"] == pytest.approx(
        torch.sigmoid(policy.magnitude_raw[1, MAGNITUDE_OPS.index("Rotate")]).item()
    )
    loaded = MADAOPolicy.load_json(path)
    replay = ReplayPolicy.from_json(path)
    frozen = policy.freeze()
    for key in ("logits", "probability_raw", "magnitude_raw"):
        original = getattr(policy, key)
        for other in (loaded, replay, frozen):
            assert getattr(other, key).dtype == original.dtype
            assert torch.equal(getattr(other, key), original), key
    assert learns(loaded) and isinstance(loaded.logits, torch.nn.Parameter)
    assert not learns(replay) and list(replay.parameters()) == []
    assert not any(t.requires_grad for t in replay.buffers())
    assert set(replay.state_dict()) == {"logits", "probability_raw", "magnitude_raw"}
    x = images(64, size=8)
    with torch.no_grad():
        expected = policy(x, generator=gen(50))
        assert not torch.equal(expected, x)
        assert torch.equal(replay(x, generator=gen(50)), expected)
        assert torch.equal(frozen(x, generator=gen(50)), expected)
    assert torch.equal(replay(x, generator=gen(50)), expected)  # replay is hard in grad mode too
    assert replay.describe()["stages"] == policy.describe()["stages"]
    assert replay.describe()["policy"] == "replay" and data["policy"] == "madao"


def test_loading_a_policy_for_another_op_table_fails_clearly(tmp_path):
    data = MADAOPolicy().to_dict()
    data["op_names"] = list(reversed(data["op_names"]))
    with pytest.raises(ValueError, match="another operation table"):
        ReplayPolicy.from_dict(data)
    with pytest.raises(ValueError, match="not a saved madao_pl policy"):
        MADAOPolicy.from_dict({"logits": []})


def test_generator_attribute_and_keyword_make_runs_reproducible():
    policy = MADAOPolicy()
    x = images(32)
    policy.generator = gen(60)
    with torch.no_grad():
        first = policy(x)
        assert torch.equal(policy(x, generator=gen(60)), first)
        assert not torch.equal(policy(x, generator=gen(61)), first)


# -------------------------------------------------------------------------------------------- fixed policies


def assert_describe_in_unit_range(described: dict) -> None:
    for stage in described["stages"]:
        assert list(stage) == list(OP_NAMES)
        assert sum(entry["selection"] for entry in stage.values()) == pytest.approx(1.0)
        for name, entry in stage.items():
            assert 0 <= entry["selection"] <= 1 and 0 <= entry["apply"] <= 1
            if name in MAGNITUDE_OPS:
                assert 0 <= entry["magnitude"] <= 1
            else:
                assert entry["magnitude"] is None


@pytest.mark.parametrize(
    "policy",
    [RandAugmentPolicy(), RandAugmentPolicy(3, 1.0), TrivialAugmentPolicy()]
    + [AutoAugmentPolicy(name) for name in ("cifar10", "svhn", "imagenet")],
    ids=lambda p: repr(p),
)
def test_fixed_policies_have_no_parameters_and_valid_outputs(policy):
    assert not learns(policy) and list(policy.parameters()) == []
    assert policy.state_dict() == {}
    assert_describe_in_unit_range(policy.describe())
    x = images(64, size=16)
    out = policy(x, generator=gen(70))
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert bool(((out >= 0) & (out <= 1)).all()) and not torch.equal(out, x)
    assert torch.equal(policy(x, generator=gen(70)), out)


def test_identity_policy_is_exact():
    policy = IdentityPolicy()
    x = images(8)
    assert policy(x) is x and policy.describe()["stages"] == []


def test_randaugment_draws_uniform_ops_always_applied_with_fixed_magnitude():
    policy = RandAugmentPolicy(num_ops=2, magnitude=randaugment_magnitude(9))
    assert policy.magnitude == pytest.approx(0.3)
    stages = policy.sample(20000, generator=gen(80))
    assert len(stages) == 2
    for stage in stages:
        assert_frequencies(
            torch.bincount(stage.op_index, minlength=N_OPS), 20000, torch.full((N_OPS,), 1 / 14), "RA"
        )
        assert torch.equal(stage.apply_weight, torch.ones(20000))
        assert torch.equal(stage.magnitude, torch.full((20000,), 0.3))
        assert_frequencies((stage.sign > 0).sum()[None], 20000, torch.tensor([0.5]), "RA sign")
    assert randaugment_magnitude(5, num_bins=11) == 0.5
    with pytest.raises(ValueError, match="randaugment_magnitude"):
        RandAugmentPolicy(magnitude=9)


def test_trivialaugment_draws_one_uniform_op_with_uniform_magnitude():
    (stage,) = TrivialAugmentPolicy().sample(20000, generator=gen(81))
    assert_frequencies(
        torch.bincount(stage.op_index, minlength=N_OPS), 20000, torch.full((N_OPS,), 1 / 14), "TA"
    )
    assert torch.equal(stage.apply_weight, torch.ones(20000))
    # Uniform magnitude: decile counts of a U[0, 1] draw.
    deciles = torch.bincount((stage.magnitude * 10).long().clamp(max=9), minlength=10)
    assert_frequencies(deciles, 20000, torch.full((10,), 0.1), "TA magnitude")


@pytest.mark.parametrize("name", ["cifar10", "svhn", "imagenet"])
def test_autoaugment_tables_are_the_published_ones(name):
    ours = AUTOAUGMENT_POLICIES[name]
    published = TorchvisionAutoAugment(TorchvisionAAPolicy(name)).policies
    assert [tuple(map(tuple, sub)) for sub in published] == [tuple(map(tuple, sub)) for sub in ours]
    assert len(ours) == 25
    for sub in ours:
        for op_name, probability, level in sub:
            assert op_name in OP_NAMES
            assert 0 <= probability <= 1
            assert (level is None) == (not get_operation(op_name).has_magnitude)


def test_autoaugment_magnitude_levels_give_autoaugment_strengths():
    def strength(op, level):
        return autoaugment_magnitude(op, level) * get_operation(op).max_value

    assert autoaugment_magnitude("ShearX", 9) == 1.0 and strength("ShearX", 9) == pytest.approx(0.3)
    assert strength("ShearY", 3) == pytest.approx(0.1)
    assert strength("Rotate", 9) == pytest.approx(30.0) and strength("Rotate", 3) == pytest.approx(10.0)
    assert 1 + strength("Color", 9) == pytest.approx(1.9)
    assert 1 + strength("Sharpness", 5) == pytest.approx(1.5)
    assert strength("TranslateX", 4) == pytest.approx(150 / 331 * 4 / 9)
    assert autoaugment_magnitude("TranslateY", 9) == 1.0  # 0.4532 of the size there, 0.45 here
    assert autoaugment_magnitude("Equalize", None) == 0.0
    with pytest.raises(ValueError, match="level"):
        autoaugment_magnitude("Rotate", 10)
    with pytest.raises(ValueError, match="ShearX"):
        autoaugment_magnitude("Shear", 3)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_autoaugment_levels_reproduce_torchvision_functional_ops(sign):
    """This library's op at the mapped mu equals torchvision's functional op at AutoAugment's magnitude
    (enhance ops: factor 1 + sign 0.9 L/9; Rotate: sign 30 L/9 degrees, bilinear)."""
    x = images(4, size=16, seed=95)
    level = 7
    factor = 1 + sign * 0.9 * level / 9
    for op_name, reference in (
        ("Brightness", TF.adjust_brightness(x, factor)),
        ("Color", TF.adjust_saturation(x, factor)),
        ("Contrast", TF.adjust_contrast(x, factor)),
        ("Sharpness", TF.adjust_sharpness(x, factor)),
        ("Rotate", TF.rotate(x, sign * 30 * level / 9, interpolation=TF.InterpolationMode.BILINEAR)),
    ):
        mu = torch.full((4,), autoaugment_magnitude(op_name, level))
        ours = get_operation(op_name).fn(x, mu, torch.full((4,), sign))
        assert torch.allclose(ours, reference, atol=1e-5), (op_name, (ours - reference).abs().max())


@pytest.mark.parametrize("level", range(10))
def test_autoaugment_posterize_and_solarize_levels_equal_torchvision_on_8bit_images(level):
    """Run this library's ops at the mapped mu on every 8-bit value and compare with torchvision's uint8
    ops at AutoAugment's bins (8 - round(L / (9/4)) bits; threshold linspace(255, 0, 10)[L])."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = levels.float() / 255
    bits = int(8 - round(level / (9 / 4)))
    threshold = float(torch.linspace(255.0, 0.0, 10)[level])
    one = torch.ones(1)
    for op_name, reference in (
        ("Posterize", TF.posterize(levels, bits)),
        ("Solarize", TF.solarize(levels, threshold)),
    ):
        mu = torch.tensor([autoaugment_magnitude(op_name, level)])
        ours = get_operation(op_name).fn(x, mu, one)
        assert torch.equal(torch.round(ours * 255).to(torch.uint8), reference), (op_name, level)


def test_autoaugment_sampling_matches_its_description():
    policy = AutoAugmentPolicy("svhn")
    n = 20000
    stages = policy.sample(n, generator=gen(90))
    described = policy.describe()
    for k, stage in enumerate(stages):
        selection = torch.tensor([described["stages"][k][name]["selection"] for name in OP_NAMES])
        assert_frequencies(torch.bincount(stage.op_index, minlength=N_OPS), n, selection, f"AA stage {k}")
        applied = torch.tensor([stage.apply_weight[stage.op_index == i].sum() for i in range(N_OPS)])
        assert_frequencies(
            applied,
            n,
            selection * torch.tensor([described["stages"][k][name]["apply"] for name in OP_NAMES]),
            f"AA apply {k}",
        )
    # Both stages come from the same sub-policy: the second op is determined by the first for
    # sub-policies with a unique first op (ShearX, 4) -> Invert / AutoContrast / Solarize only.
    first_shear = stages[0].op_index == OP_NAMES.index("ShearX")
    allowed = {OP_NAMES.index(name) for name in ("Invert", "AutoContrast", "Solarize", "TranslateY")}
    assert set(stages[1].op_index[first_shear].tolist()) <= allowed
    with pytest.raises(ValueError, match="cifar10"):
        AutoAugmentPolicy("cifar100")


# -------------------------------------------------------------------------------------------- base class


def test_describe_stage_is_the_one_schema():
    n = N_OPS
    stage = describe_stage([1 / n] * n, [0.25] * n, [0.75] * n)
    assert list(stage) == list(OP_NAMES)
    for name, entry in stage.items():
        assert set(entry) == {"selection", "apply", "magnitude"}
        assert entry["selection"] == pytest.approx(1 / n) and entry["apply"] == 0.25
        assert entry["magnitude"] == (0.75 if name in MAGNITUDE_OPS else None)
    assert RandAugmentPolicy(magnitude=0.75).describe()["stages"][0] == describe_stage(
        [1 / n] * n, [1.0] * n, [0.75] * n
    )


def test_a_policy_without_its_methods_says_which_subclass_misses_them():
    class Incomplete(Policy):
        pass

    policy = Incomplete()
    with pytest.raises(NotImplementedError, match="Incomplete must implement the num_stages"):
        policy.num_stages  # noqa: B018
    with pytest.raises(NotImplementedError, match=r"Incomplete must implement sample\(\)"):
        policy(images(2))
    with pytest.raises(NotImplementedError, match=r"Incomplete must implement describe\(\)"):
        policy.describe()


# -------------------------------------------------------------------------------- MADAO: the Identity choice


def identity_policy(identity_logit: float, **kwargs) -> MADAOPolicy:
    """One stage, every op certain to apply, Identity's logit set apart from the 14 zeros."""
    policy = MADAOPolicy(num_stages=1, identity=True, init_probability=20.0, **kwargs)
    with torch.no_grad():
        policy.logits[0, N_OPS] = identity_logit
    return policy


def test_identity_choice_is_a_15th_logit_described_last_with_apply_zero():
    policy = identity_policy(math.log(3.0))  # selection odds 3 : 1 : ... : 1
    assert policy.logits.shape == (1, N_OPS + 1) and policy.probability_raw.shape == (1, N_OPS)
    assert policy.op_names == [*OP_NAMES, IDENTITY] and MADAOPolicy().op_names == list(OP_NAMES)
    stage = policy.describe()["stages"][0]
    assert list(stage) == [*OP_NAMES, IDENTITY]
    assert stage[IDENTITY] == {"selection": pytest.approx(3 / (N_OPS + 3)), "apply": 0.0, "magnitude": None}
    assert sum(v["selection"] for v in stage.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="identity must be true or false"):
        MADAOPolicy(identity="yes")


@pytest.mark.parametrize("rao_samples", [1, 8])
@pytest.mark.parametrize("relaxed", [False, True])
def test_samples_that_choose_identity_are_unchanged_and_the_others_are_not(rao_samples, relaxed):
    """Identity drawn at its probability; those images exactly unchanged (the 14 ops always apply here, so
    every other image changes); in relaxed draws Identity's logit gets a gradient, as any choice does."""
    policy = identity_policy(math.log(3.0), rao_samples=rao_samples)
    x = images(3000, size=6, seed=1)
    with torch.set_grad_enabled(relaxed):
        (stage,) = policy.sample(len(x), generator=gen(7), relaxed=relaxed)
        out = apply_stage(x, *stage)
    unchanged = (out == x).flatten(1).all(1)
    assert_frequencies(unchanged.sum(), len(x), torch.tensor(3 / (N_OPS + 3)), "Identity")
    assert bool((stage.apply_weight[unchanged] == 0).all()) and bool(
        (stage.apply_weight[~unchanged] > 0.5).all()
    )
    assert int(stage.op_index.max()) < N_OPS  # apply_stage sees only real operations
    if relaxed:
        out.sum().backward()
        assert float(policy.logits.grad[0, N_OPS].abs()) > 0


def test_identity_policy_round_trips_through_json_and_replays_exactly(tmp_path):
    policy = identity_policy(0.7)
    with torch.no_grad():
        policy.probability_raw.copy_(SKEWED_PROB_RAW[None])
    path = tmp_path / "policy.json"
    policy.save_json(path)
    data = json.loads(path.read_text())
    assert data["op_names"] == [*OP_NAMES, IDENTITY] and len(data["raw"]["logits"][0]) == N_OPS + 1
    loaded, replay = MADAOPolicy.load_json(path), ReplayPolicy.from_json(path)
    assert loaded.has_identity and replay.has_identity
    assert torch.equal(loaded.logits, policy.logits) and torch.equal(replay.logits, policy.logits)
    x = images(256, size=8)
    with torch.no_grad():
        expected = policy(x, generator=gen(9))
    assert torch.equal(replay(x, generator=gen(9)), expected)
    assert replay.describe()["stages"] == policy.describe()["stages"]
    assert ReplayPolicy.initial(identity=True).has_identity
