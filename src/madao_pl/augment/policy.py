"""Augmentation policies on the shared operation table: learnable MADAO and fixed baselines.

Every policy is an :class:`torch.nn.Module` that maps a batch of images ``(B, C, H, W)`` in ``[0, 1]`` to
an augmented batch of the same shape, on the device the batch lives on. A policy is a sequence of
*stages*; in each stage every sample draws one operation ``i_n`` from the table
:data:`madao_pl.augment.ops.OPERATIONS`, an apply weight ``b_n``, a magnitude ``mu_n`` in ``[0, 1]``
and a sign ``s_n`` (+1 / -1), and all policies then run the same routine, :func:`apply_stage`::

    x_n <- scale_n * (b_n * O_{i_n}(x_n; mu_n, s_n) + (1 - b_n) * x_n)

which groups the samples by operation, so each operation runs at most once per stage on exactly the
samples that chose it. Policies differ only in how they draw ``(i_n, b_n, mu_n, s_n, scale_n)``:

- :class:`MADAOPolicy` (paper §3.3, eq. 7-10): learnable selection logits, apply probabilities and
  magnitudes; Gumbel-softmax selection with a straight-through factor ``u_i / stopgrad(u_i)`` and a
  relaxed Bernoulli apply weight, so a loss on the output has gradients to all 78 parameters (K = 2).
- :class:`ReplayPolicy`: the values of a learned MADAO policy, frozen (buffers), to train a new model.
- :class:`RandAugmentPolicy`, :class:`AutoAugmentPolicy`, :class:`TrivialAugmentPolicy`,
  :class:`IdentityPolicy`: the fixed baselines on the same operations.

Randomness: every policy draws from ``generator`` (forward keyword) or else ``self.generator`` (an
attribute, ``None`` by default = torch's global generator of the batch's device). Give each DDP rank its
own seeded generator so ranks draw different augmentations; give two policies equal seeds to get equal
draws. Noise is drawn in float32 on the generator's device and moved to the batch's device.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from os import PathLike
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES, OPERATIONS

__all__ = [
    "AUTOAUGMENT_POLICIES",
    "POLICY_NAMES",
    "AutoAugmentPolicy",
    "IdentityPolicy",
    "MADAOPolicy",
    "Policy",
    "RandAugmentPolicy",
    "ReplayPolicy",
    "StageSample",
    "TrivialAugmentPolicy",
    "apply_stage",
    "autoaugment_magnitude",
    "build_policy",
    "gumbel_noise",
    "randaugment_magnitude",
    "relaxed_one_hot",
]

_FORMAT = "madao_pl.policy"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# The shared application routine
# ----------------------------------------------------------------------------------------------------------


class StageSample(NamedTuple):
    """What one stage drew for each of the B samples of a batch.

    Attributes:
        op_index: ``(B,)`` long, index into ``OPERATIONS`` of the operation each sample applies.
        apply_weight: ``(B,)`` float, ``b_n``: exactly 1/0 (hard draw) or a relaxed Bernoulli sample.
        magnitude: ``(B,)`` float in ``[0, 1]``, ``mu_n`` of the chosen operation (0 for ops without one).
        sign: ``(B,)`` float, +1 or -1 (signed operations use it, the others ignore it).
        scale: ``(B,)`` float equal to 1 in value that carries the selection gradient, or ``None``.
        selection: ``(B, N_ops)`` relaxed one-hot ``u_n`` (MADAO grad path only), else ``None``.
    """

    op_index: Tensor
    apply_weight: Tensor
    magnitude: Tensor
    sign: Tensor
    scale: Tensor | None = None
    selection: Tensor | None = None


def _check_images(images: Tensor) -> None:
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


def _check_per_sample(name: str, value: Tensor, batch: int) -> None:
    if value.shape != (batch,):
        raise ValueError(
            f"apply_stage: {name} must have shape ({batch},) (one value per image), got {tuple(value.shape)}"
        )


def apply_stage(
    images: Tensor,
    op_index: Tensor,
    apply_weight: Tensor,
    magnitude: Tensor,
    sign: Tensor,
    scale: Tensor | None = None,
) -> Tensor:
    """Apply one policy stage: ``x_n <- scale_n * (b_n * O_{i_n}(x_n; mu_n, s_n) + (1 - b_n) * x_n)``.

    The routine every policy uses. Samples are grouped by operation (one sort + one bincount), each
    operation's ``fn`` is called at most once, on only the samples that chose it (``index_select``), and its
    result is written into a copy of the batch with ``index_copy_``; there is no per-sample Python loop.
    The blend is ``torch.lerp(x, O(x), b)``, exact for ``b`` in ``{0, 1}`` and differentiable in ``b``.
    On a GPU the grouping costs a few host syncs per stage (``nonzero``, the group sizes).

    Samples whose weight is exactly 0 skip the operation unless the weight itself needs a gradient
    (grad enabled and ``apply_weight.requires_grad``): their output is then exactly ``x_n`` and no
    gradient can flow through the skipped operation. So hard draws (no-grad steps, fixed policies)
    cost one operation per *applied* sample.

    Args:
        images: ``(B, C, H, W)`` float in ``[0, 1]``.
        op_index: ``(B,)`` long in ``[0, len(OPERATIONS))``.
        apply_weight: ``(B,)`` float ``b_n`` in ``[0, 1]``.
        magnitude: ``(B,)`` float ``mu_n`` in ``[0, 1]``.
        sign: ``(B,)`` float, +1 / -1.
        scale: ``(B,)`` float multiplier (the straight-through selection factor) or ``None`` for 1.

    Returns:
        ``(B, C, H, W)`` augmented images (a new tensor; ``images`` is not modified).
    """
    _check_images(images)
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
    weight_needs_grad = torch.is_grad_enabled() and apply_weight.requires_grad
    if weight_needs_grad:
        active = torch.arange(batch, device=images.device)
    else:
        active = torch.nonzero(apply_weight != 0).squeeze(1)
    active_ops = op_index[active]
    order = torch.argsort(active_ops, stable=True)
    active = active[order]
    counts = torch.bincount(active_ops, minlength=num_ops).tolist()
    if len(counts) > num_ops:
        raise ValueError(f"apply_stage: op_index has values >= {num_ops}, the number of operations")

    # Hard draws (every remaining weight exactly 1, no gradient to it) need no blend: O(x) is the output.
    hard = not weight_needs_grad and bool((apply_weight[active] == 1).all())
    dtype = images.dtype
    magnitudes = magnitude[active].to(dtype)
    signs = sign[active].to(dtype)
    weights = apply_weight[active].to(dtype).view(-1, 1, 1, 1)
    out = images.clone() if active.numel() > 0 else images
    start = 0
    for op_id, count in enumerate(counts):
        if count == 0:
            continue
        group = slice(start, start + count)
        start += count
        idx = active[group]
        x = images.index_select(0, idx)
        y = OPERATIONS[op_id].fn(x, magnitudes[group], signs[group])
        out.index_copy_(0, idx, y if hard else torch.lerp(x, y, weights[group]))
    if scale is not None:
        out = out * scale.to(dtype).view(-1, 1, 1, 1)
    return out


# ----------------------------------------------------------------------------------------------------------
# Random draws
# ----------------------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Float32 U[0, 1) of ``shape`` from ``generator`` (on its own device), returned on ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(
    high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Long uniform integers in ``[0, high)`` from ``generator``, returned on ``device``."""
    if generator is None:
        return torch.randint(high, shape, device=device)
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def _coin(uniform: Tensor, dtype: torch.dtype) -> Tensor:
    """Fair +1 / -1 signs from U[0, 1) draws of any shape."""
    return torch.where(uniform < 0.5, 1.0, -1.0).to(dtype)


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, float32, from ``generator`` (U clamped away from 0)."""
    u = _uniform(shape, generator, torch.device(device))
    return _gumbel_from_uniform(u)


def _gumbel_from_uniform(u: Tensor) -> Tensor:
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))


def _logistic_from_uniform(u: Tensor) -> Tensor:
    u = u.clamp_min(torch.finfo(u.dtype).tiny)
    return torch.log(u) - torch.log1p(-u)


def relaxed_one_hot(logits: Tensor, gumbels: Tensor, temperature: float) -> Tensor:
    """Gumbel-softmax sample ``u = softmax((logits + g) / tau)`` (Jang et al. 2017; paper eq. 10).

    The temperature divides ``logits + g`` once. (Dividing the logits by tau before adding the noise, as a
    public implementation did, samples ``argmax`` from ``softmax(logits / tau)`` instead of
    ``softmax(logits)``.)

    Args:
        logits: ``(N,)`` or ``(B, N)`` unnormalised log-probabilities ``pi``.
        gumbels: ``(B, N)`` standard Gumbel noise.
        temperature: ``tau > 0``.

    Returns:
        ``(B, N)`` points of the simplex; ``argmax`` is distributed as ``softmax(logits)`` for every tau.
    """
    return torch.softmax((logits + gumbels) / temperature, dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------------


def _magnitude_op_indices() -> list[int]:
    return [OP_NAMES.index(name) for name in MAGNITUDE_OPS]


def _describe_stage(selection: Sequence[float], apply: Sequence[float], magnitude: Sequence[float]) -> dict:
    """``{op name: {"selection", "apply", "magnitude"}}`` for one stage (magnitude None for ops without)."""
    stage = {}
    for i, name in enumerate(OP_NAMES):
        has_magnitude = OPERATIONS[i].has_magnitude
        stage[name] = {
            "selection": float(selection[i]),
            "apply": float(apply[i]),
            "magnitude": float(magnitude[i]) if has_magnitude else None,
        }
    return stage


class Policy(nn.Module):
    """Base class of all augmentation policies: ``forward(images) -> images`` on the shared ops.

    Subclasses implement :meth:`sample` (what each stage draws) and :meth:`describe`; :meth:`forward`
    runs :func:`apply_stage` once per stage. ``describe()`` returns ``{"policy": name, "num_stages": K,
    "stages": [stage_0, ...]}`` where each stage maps every operation name to
    ``{"selection": P(op chosen), "apply": P(applied | chosen), "magnitude": mu in [0, 1] or None}``;
    ``magnitude`` is ``None`` for the operations without one (Invert, AutoContrast, Equalize). Policies
    may add keys of their own.

    Attributes:
        learnable: whether the policy has parameters to learn (class attribute).
        generator: default :class:`torch.Generator` for the draws, or ``None`` for torch's global one.
    """

    learnable: ClassVar[bool] = False
    name: ClassVar[str] = "policy"

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None

    @property
    def num_stages(self) -> int:
        """Number of stages K (operations applied in sequence to each image)."""
        raise NotImplementedError

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> list[StageSample]:
        """Draw what every stage applies to each of ``batch_size`` images, on ``device``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Human-readable per-stage, per-operation probabilities and magnitudes (see the class doc)."""
        raise NotImplementedError

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``images`` ``(B, C, H, W)`` in ``[0, 1]``; returns the same shape, on the same device.

        Args:
            images: the batch.
            generator: overrides ``self.generator`` for this call.
        """
        _check_images(images)
        generator = generator if generator is not None else self.generator
        for stage in self.sample(images.shape[0], device=images.device, generator=generator):
            images = apply_stage(images, *stage[:5])
        return images


# ----------------------------------------------------------------------------------------------------------
# MADAO and its replay
# ----------------------------------------------------------------------------------------------------------


class _CategoricalPolicy(Policy):
    """Shared sampling of MADAO-style stages from ``logits`` (K, 14), ``probability_raw`` (K, 14),
    ``magnitude_raw`` (K, 11); subclasses hold them as parameters (MADAO) or buffers (replay)."""

    name: ClassVar[str] = "madao"
    logits: Tensor
    probability_raw: Tensor
    magnitude_raw: Tensor

    def __init__(self, temperature: float, bernoulli_temperature: float, eps: float) -> None:
        super().__init__()
        if not temperature > 0 or not bernoulli_temperature > 0:
            raise ValueError(
                f"temperatures must be > 0, got temperature={temperature}, "
                f"bernoulli_temperature={bernoulli_temperature} (the paper uses 0.05)"
            )
        if not 0 < eps < 0.5:
            raise ValueError(
                f"eps clamps apply probabilities into [eps, 1 - eps]; it must be in (0, 0.5), got {eps}"
            )
        self.temperature = float(temperature)
        self.bernoulli_temperature = float(bernoulli_temperature)
        self.eps = float(eps)
        self.register_buffer(
            "_magnitude_index", torch.tensor(_magnitude_op_indices(), dtype=torch.long), persistent=False
        )

    @property
    def num_stages(self) -> int:
        return self.logits.shape[0]

    def extra_repr(self) -> str:
        return (
            f"num_stages={self.num_stages}, temperature={self.temperature}, "
            f"bernoulli_temperature={self.bernoulli_temperature}"
        )

    # -- readable values -------------------------------------------------------------------------------

    def selection_probabilities(self) -> Tensor:
        """``(K, 14)`` softmax of the selection logits, per stage (keeps the graph)."""
        return torch.softmax(self.logits, dim=-1)

    def apply_probabilities(self) -> Tensor:
        """``(K, 14)`` apply probabilities ``sigmoid(probability_raw)`` (before the eps clamp; with graph)."""
        return torch.sigmoid(self.probability_raw)

    def magnitudes(self) -> Tensor:
        """``(K, 11)`` magnitudes ``sigmoid(magnitude_raw)`` in ``MAGNITUDE_OPS`` order (keeps the graph)."""
        return torch.sigmoid(self.magnitude_raw)

    def entropy(self) -> Tensor:
        """Scalar: entropy (nats) of the selection distribution, averaged over stages (keeps the graph)."""
        log_p = torch.log_softmax(self.logits, dim=-1)
        return -(log_p.exp() * log_p).sum(-1).mean()

    def _full_magnitudes(self) -> Tensor:
        """``(K, 14)`` magnitudes on the full op table, 0 for the ops without one."""
        full = self.magnitude_raw.new_zeros(self.num_stages, len(OPERATIONS))
        return full.index_copy(1, self._magnitude_index, self.magnitudes())

    def describe(self) -> dict[str, Any]:
        with torch.no_grad():
            selection = self.selection_probabilities().double().tolist()
            apply = self.apply_probabilities().double().tolist()
            magnitude = self._full_magnitudes().double().tolist()
        return {
            "policy": self.name,
            "num_stages": self.num_stages,
            "stages": [_describe_stage(selection[k], apply[k], magnitude[k]) for k in range(self.num_stages)],
        }

    # -- sampling --------------------------------------------------------------------------------------

    def _relaxed_by_default(self) -> bool:
        return torch.is_grad_enabled() and any(
            t.requires_grad for t in (self.logits, self.probability_raw, self.magnitude_raw)
        )

    def sample_stage(
        self,
        batch_size: int,
        stage: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        relaxed: bool | None = None,
    ) -> StageSample:
        """Draw stage ``stage`` for ``batch_size`` samples (paper eq. 7-10).

        One float32 uniform draw of shape ``(B, 16)`` feeds the Gumbel noise ``g`` (14 columns), the
        Bernoulli's logistic noise ``l`` and the sign coin, so the relaxed and the hard path make the
        same discrete choices from the same generator state:

        - ``i_n = argmax(pi + g_n)`` (= argmax of ``u_n = softmax((pi + g_n) / tau)``);
        - ``b_n = sigmoid((logit(p_{i_n}) + l_n) / tau_b)`` relaxed, ``1[logit(p_{i_n}) + l_n > 0]`` hard,
          with ``p`` clamped into ``[eps, 1 - eps]``; both are Bernoulli(p) in distribution / threshold;
        - ``scale_n = u_{n,i} / stopgrad(u_{n,i})`` (relaxed only), computed as
          ``exp(log u_{n,i} - stopgrad(log u_{n,i}))``: exactly 1 in value, gradient
          ``(onehot(i_n) - u_n) / tau`` to the logits.

        Args:
            batch_size: B.
            stage: which of the K stages.
            device: where the returned tensors live (default: the parameters' device).
            generator: source of randomness (default: ``self.generator``, then torch's global one).
            relaxed: ``True`` relaxed draws with gradients, ``False`` hard draws; default ``True`` iff
                grad mode is on and the parameters require grad.
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}")
        device = torch.device(device) if device is not None else self.logits.device
        generator = generator if generator is not None else self.generator
        relaxed = self._relaxed_by_default() if relaxed is None else relaxed
        num_ops = len(OPERATIONS)
        dtype = self.logits.dtype

        noise = _uniform((batch_size, num_ops + 2), generator, device)
        gumbels = _gumbel_from_uniform(noise[:, :num_ops]).to(dtype)
        logistic = _logistic_from_uniform(noise[:, num_ops]).to(dtype)
        sign = _coin(noise[:, num_ops + 1], dtype)

        logits = self.logits[stage].to(device)
        probability = torch.sigmoid(self.probability_raw[stage].to(device)).clamp(self.eps, 1.0 - self.eps)
        magnitude_full = self._full_magnitudes()[stage].to(device)

        if relaxed:
            log_u = torch.log_softmax((logits + gumbels) / self.temperature, dim=-1)
            op_index = log_u.argmax(dim=-1)
            log_u_i = log_u.gather(1, op_index[:, None]).squeeze(1)
            scale = torch.exp(log_u_i - log_u_i.detach())
            z = torch.logit(probability[op_index]) + logistic
            apply_weight = torch.sigmoid(z / self.bernoulli_temperature)
            return StageSample(op_index, apply_weight, magnitude_full[op_index], sign, scale, log_u.exp())

        with torch.no_grad():
            op_index = (logits + gumbels).argmax(dim=-1)
            z = torch.logit(probability[op_index]) + logistic
            apply_weight = (z > 0).to(dtype)
            return StageSample(op_index, apply_weight, magnitude_full[op_index], sign)

    def sample(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        relaxed: bool | None = None,
    ) -> list[StageSample]:
        """:meth:`sample_stage` for every stage, in order (the order :meth:`forward` draws them)."""
        return [self.sample_stage(batch_size, k, device, generator, relaxed) for k in range(self.num_stages)]

    # -- save / load -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: raw parameter values (exact: float32 -> python float round-trips), settings,
        the op table they refer to and, for humans, :meth:`describe`."""
        raw = {
            key: getattr(self, key).detach().cpu().double().tolist()
            for key in ("logits", "probability_raw", "magnitude_raw")
        }
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "policy": self.name,
            "num_stages": self.num_stages,
            "temperature": self.temperature,
            "bernoulli_temperature": self.bernoulli_temperature,
            "eps": self.eps,
            "dtype": str(self.logits.dtype).removeprefix("torch."),
            "op_names": list(OP_NAMES),
            "magnitude_ops": list(MAGNITUDE_OPS),
            "raw": raw,
            "describe": self.describe(),
        }

    @staticmethod
    def _parse_dict(data: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(
                f"not a saved madao_pl policy (expected format {_FORMAT!r}); "
                "save one with MADAOPolicy.save_json"
            )
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"saved policy has format version {data.get('version')}, this code reads {_FORMAT_VERSION}"
            )
        if list(data["op_names"]) != list(OP_NAMES) or list(data["magnitude_ops"]) != list(MAGNITUDE_OPS):
            raise ValueError(
                "the saved policy refers to another operation table: saved "
                f"{data['op_names']} (magnitude ops {data['magnitude_ops']}), current {list(OP_NAMES)} "
                f"(magnitude ops {list(MAGNITUDE_OPS)}); load it with the madao_pl version that saved it"
            )
        dtype = getattr(torch, data.get("dtype", "float32"))
        k = int(data["num_stages"])
        expected = {
            "logits": (k, len(OP_NAMES)),
            "probability_raw": (k, len(OP_NAMES)),
            "magnitude_raw": (k, len(MAGNITUDE_OPS)),
        }
        tensors = {}
        for key, shape in expected.items():
            value = torch.tensor(data["raw"][key], dtype=torch.float64)
            if tuple(value.shape) != shape:
                raise ValueError(f"saved policy: raw {key} has shape {tuple(value.shape)}, expected {shape}")
            tensors[key] = value.to(dtype)
        settings = {
            "temperature": float(data["temperature"]),
            "bernoulli_temperature": float(data["bernoulli_temperature"]),
            "eps": float(data["eps"]),
        }
        return tensors, settings

    def save_json(self, path: str | PathLike) -> None:
        """Write :meth:`to_dict` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)
            handle.write("\n")


class MADAOPolicy(_CategoricalPolicy):
    """The learnable MADAO policy (paper §3.3, eq. 7-10; Appendix A): 39 parameters per stage.

    Per stage k: selection logits ``pi_k`` (14, zeros = uniform), apply-probability raw values (14,
    ``p = sigmoid(raw)``), magnitude raw values (11, ``mu = sigmoid(raw)``); raw values start at
    ``logit(init_probability)`` / ``logit(init_magnitude)`` read as *raw* numbers exactly as the paper
    does: the defaults 0.5 give ``sigmoid(0.5) ~ 0.62`` (so MADAO starts as RandAugment with magnitude
    0.62). For K = 2 that is 78 parameters.

    With grad enabled (the hyper step) the draws are relaxed and the output is differentiable in all
    parameters; under ``torch.no_grad()`` (the inner steps) the same distribution is sampled hard and
    non-applied samples skip their operation. See :meth:`sample_stage` for the exact draws.

    Args:
        num_stages: K, operations applied in sequence.
        temperature: Gumbel-softmax temperature tau of the selection (paper: 0.05).
        bernoulli_temperature: temperature of the relaxed Bernoulli apply weight.
        init_magnitude: initial *raw* magnitude value (mu = sigmoid of it).
        init_probability: initial *raw* apply-probability value (p = sigmoid of it).
        eps: apply probabilities are clamped into ``[eps, 1 - eps]`` before the Bernoulli draw.
    """

    learnable: ClassVar[bool] = True

    def __init__(
        self,
        num_stages: int = 2,
        temperature: float = 0.05,
        bernoulli_temperature: float = 0.05,
        init_magnitude: float = 0.5,
        init_probability: float = 0.5,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(temperature, bernoulli_temperature, eps)
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        self.logits = nn.Parameter(torch.zeros(num_stages, len(OP_NAMES)))
        self.probability_raw = nn.Parameter(torch.full((num_stages, len(OP_NAMES)), float(init_probability)))
        self.magnitude_raw = nn.Parameter(torch.full((num_stages, len(MAGNITUDE_OPS)), float(init_magnitude)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MADAOPolicy:
        """Rebuild a learnable policy from :meth:`to_dict` output (exact raw values, same dtype)."""
        tensors, settings = cls._parse_dict(data)
        policy = cls(num_stages=tensors["logits"].shape[0], **settings)
        with torch.no_grad():
            for key, value in tensors.items():
                getattr(policy, key).data = value.clone()
        return policy

    @classmethod
    def load_json(cls, path: str | PathLike) -> MADAOPolicy:
        """Read a policy written by :meth:`save_json`."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def freeze(self) -> ReplayPolicy:
        """A :class:`ReplayPolicy` with the current values: same draws, no learnable parameters."""
        return ReplayPolicy.from_dict(self.to_dict()).to(self.logits.device)


class ReplayPolicy(_CategoricalPolicy):
    """A learned MADAO policy replayed with fixed values (buffers, no parameters), for training a new
    model with it. Always draws hard (:meth:`MADAOPolicy.sample_stage` with ``relaxed=False``), so with
    the same generator state it gives exactly what the MADAO policy gives under ``no_grad``.

    Build it with :meth:`from_json` / :meth:`from_dict` or :meth:`MADAOPolicy.freeze`.
    """

    learnable: ClassVar[bool] = False
    name: ClassVar[str] = "replay"

    def __init__(
        self,
        logits: Tensor,
        probability_raw: Tensor,
        magnitude_raw: Tensor,
        temperature: float = 0.05,
        bernoulli_temperature: float = 0.05,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(temperature, bernoulli_temperature, eps)
        k = logits.shape[0]
        for key, value, width in (
            ("logits", logits, len(OP_NAMES)),
            ("probability_raw", probability_raw, len(OP_NAMES)),
            ("magnitude_raw", magnitude_raw, len(MAGNITUDE_OPS)),
        ):
            if value.dim() != 2 or tuple(value.shape) != (k, width):
                raise ValueError(
                    f"ReplayPolicy: {key} must have shape ({k}, {width}), got {tuple(value.shape)}"
                )
            self.register_buffer(key, value.detach().clone())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayPolicy:
        """Build from :meth:`MADAOPolicy.to_dict` output (exact raw values)."""
        tensors, settings = cls._parse_dict(data)
        return cls(**tensors, **settings)

    @classmethod
    def from_json(cls, path: str | PathLike) -> ReplayPolicy:
        """Read a policy written by :meth:`MADAOPolicy.save_json`."""
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def _relaxed_by_default(self) -> bool:
        return False


# ----------------------------------------------------------------------------------------------------------
# Fixed policies
# ----------------------------------------------------------------------------------------------------------


def randaugment_magnitude(m: float, num_bins: int = 31) -> float:
    """RandAugment's integer magnitude M on the ``0 .. num_bins - 1`` scale -> ``mu = M / (num_bins - 1)``.

    With the default 31 bins (torchvision, M in 0..30) this is M / 30; the original paper's 0..10 scale
    is ``num_bins=11``. Geometric ops then match torchvision exactly (same maxima: shear 0.3, rotate 30
    degrees); torchvision's enhance ops reach ``1 +- 0.9 M/30`` where these reach ``1 +- M/30``.
    """
    if not 0 <= m <= num_bins - 1:
        raise ValueError(f"RandAugment magnitude must be in [0, {num_bins - 1}], got {m}")
    return float(m) / (num_bins - 1)


class RandAugmentPolicy(Policy):
    """RandAugment (Cubuk et al. 2020) on this op table: ``num_ops`` stages, each op uniform over all 14
    (Invert included, as the MADAO paper's baseline), always applied, every magnitude ``magnitude`` in
    ``[0, 1]`` (see :func:`randaugment_magnitude` for the integer M scale), fair random sign per sample."""

    name: ClassVar[str] = "randaugment"

    def __init__(self, num_ops: int = 2, magnitude: float = 0.5) -> None:
        super().__init__()
        if num_ops < 1:
            raise ValueError(f"num_ops must be >= 1, got {num_ops}")
        if not 0.0 <= magnitude <= 1.0:
            raise ValueError(
                f"magnitude must be in [0, 1], got {magnitude}; for RandAugment's integer M use "
                "randaugment_magnitude(M) (= M / 30)"
            )
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)

    @property
    def num_stages(self) -> int:
        return self.num_ops

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}"

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> list[StageSample]:
        device = torch.device(device)
        stages = []
        for _ in range(self.num_ops):
            op_index = _randint(len(OPERATIONS), (batch_size,), generator, device)
            sign = _coin(_uniform((batch_size,), generator, device), torch.float32)
            ones = torch.ones(batch_size, device=device)
            stages.append(StageSample(op_index, ones, ones * self.magnitude, sign))
        return stages

    def describe(self) -> dict[str, Any]:
        n = len(OPERATIONS)
        stage = _describe_stage([1.0 / n] * n, [1.0] * n, [self.magnitude] * n)
        return {
            "policy": self.name,
            "num_stages": self.num_ops,
            "stages": [dict(stage) for _ in range(self.num_ops)],
        }


class TrivialAugmentPolicy(Policy):
    """TrivialAugment (Mueller & Hutter 2021) on this op table: one stage, one op uniform over the 14,
    always applied, magnitude uniform in [0, 1] per sample, fair random sign. (torchvision's
    TrivialAugmentWide also has an Identity op and wider ranges; this one uses the MADAO ranges.)
    ``describe()`` reports the mean magnitude 0.5."""

    name: ClassVar[str] = "trivialaugment"

    @property
    def num_stages(self) -> int:
        return 1

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> list[StageSample]:
        device = torch.device(device)
        op_index = _randint(len(OPERATIONS), (batch_size,), generator, device)
        uniform = _uniform((batch_size, 2), generator, device)
        ones = torch.ones(batch_size, device=device)
        return [StageSample(op_index, ones, uniform[:, 0], _coin(uniform[:, 1], torch.float32))]

    def describe(self) -> dict[str, Any]:
        n = len(OPERATIONS)
        return {
            "policy": self.name,
            "num_stages": 1,
            "magnitude_distribution": "uniform[0, 1] per sample",
            "stages": [_describe_stage([1.0 / n] * n, [1.0] * n, [0.5] * n)],
        }


class IdentityPolicy(Policy):
    """No augmentation: returns the input batch itself (the crop/flip/cutout-only baseline)."""

    name: ClassVar[str] = "identity"

    @property
    def num_stages(self) -> int:
        return 0

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> list[StageSample]:
        return []

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_images(images)
        return images

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name, "num_stages": 0, "stages": []}


# AutoAugment ---------------------------------------------------------------------------------------------

_SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]

AUTOAUGMENT_POLICIES: dict[str, tuple[_SubPolicy, ...]] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}
"""The published AutoAugment sub-policies (Cubuk et al., "AutoAugment: Learning Augmentation Strategies
from Data", CVPR 2019, Appendix), as listed by torchvision's ``AutoAugmentPolicy``: per data set 25
sub-policies of two ``(operation, probability, magnitude level 0..9 or None)``."""

_AA_LEVELS = 10


def autoaugment_magnitude(op_name: str, level: int | None) -> float:
    """AutoAugment magnitude level (0..9) -> mu in [0, 1] on this op table, at AutoAugment's strength.

    torchvision's bins (10 levels, ``L / 9`` of each maximum) against this table's ranges:

    - ShearX/Y: factor ``0.3 L/9`` = ``0.3 mu`` -> ``mu = L/9``;
    - TranslateX/Y: ``150/331 L/9`` of the size = ``0.45 mu`` -> ``mu = (150/331) (L/9) / 0.45``, capped at
      1 (level 9 is 0.4532 there and 0.45 here; torchvision also rounds to whole pixels, this does not);
    - Rotate: ``30 L/9`` degrees -> ``mu = L/9``;
    - Color, Contrast, Brightness, Sharpness: factor ``1 +- 0.9 L/9`` = ``1 +- mu`` -> ``mu = 0.9 L/9``;
    - Posterize: keeps ``8 - round(4 L/9)`` bits = ``8 - round(4 mu)`` -> ``mu = round(4 L/9) / 4``;
    - Solarize: torchvision inverts the 8-bit values ``v >= 255 (1 - L/9)``, this op ``v >= 256 (1 - mu)``;
      ``mu = 1 - T / 256`` with ``T = ceil(255 (1 - L/9)) - 0.5`` (capped at 1) puts the threshold halfway
      between 8-bit levels, so exactly the same levels are inverted, whatever the float rounding;
    - Invert, AutoContrast, Equalize: no magnitude, ``level`` is ignored -> 0.
    """
    if op_name not in OP_NAMES:
        raise ValueError(f"unknown operation {op_name!r}; the operations are {list(OP_NAMES)}")
    if not OPERATIONS[OP_NAMES.index(op_name)].has_magnitude:
        return 0.0
    if level is None or not 0 <= level < _AA_LEVELS:
        raise ValueError(
            f"{op_name} needs an AutoAugment magnitude level in 0..{_AA_LEVELS - 1}, got {level}"
        )
    frac = level / (_AA_LEVELS - 1)
    if op_name in ("ShearX", "ShearY", "Rotate"):
        return frac
    if op_name == "Solarize":
        return min(1.0, 1.0 - (math.ceil(255 * (1 - frac) - 1e-9) - 0.5) / 256)
    if op_name in ("TranslateX", "TranslateY"):
        return min(1.0, (150.0 / 331.0) * frac / 0.45)
    if op_name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 0.9 * frac
    if op_name == "Posterize":
        return round(4 * frac) / 4
    raise ValueError(f"no AutoAugment magnitude mapping for {op_name!r}")


class AutoAugmentPolicy(Policy):
    """AutoAugment (Cubuk et al. 2019) with the published sub-policies (:data:`AUTOAUGMENT_POLICIES`) on
    this op table: per sample one of the 25 sub-policies uniformly; stage 1 applies its first operation
    with its probability, stage 2 its second; magnitudes by :func:`autoaugment_magnitude`; signed ops
    take a fair random sign per stage, as torchvision does.

    ``describe()`` gives the per-stage marginals: selection = share of sub-policies with that op at that
    stage, apply and magnitude = their mean over those sub-policies (0 where the op does not occur);
    the sub-policies themselves are under ``"subpolicies"``.

    Args:
        policy: ``"cifar10"``, ``"svhn"`` or ``"imagenet"``.
    """

    name: ClassVar[str] = "autoaugment"

    def __init__(self, policy: str = "cifar10") -> None:
        super().__init__()
        if policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {policy!r}; choose one of {sorted(AUTOAUGMENT_POLICIES)}"
            )
        self.policy = policy
        table = AUTOAUGMENT_POLICIES[policy]
        self.register_buffer(
            "_op_index",
            torch.tensor([[OP_NAMES.index(op) for op, _, _ in sub] for sub in table], dtype=torch.long),
            persistent=False,
        )
        self.register_buffer(
            "_probability", torch.tensor([[p for _, p, _ in sub] for sub in table]), persistent=False
        )
        self.register_buffer(
            "_magnitude",
            torch.tensor([[autoaugment_magnitude(op, level) for op, _, level in sub] for sub in table]),
            persistent=False,
        )

    @property
    def num_stages(self) -> int:
        return 2

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"

    def sample(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> list[StageSample]:
        device = torch.device(device)
        choice = _randint(self._op_index.shape[0], (batch_size,), generator, device)
        uniform = _uniform((batch_size, 2, 2), generator, device)
        op_index = self._op_index.to(device)[choice]
        probability = self._probability.to(device)[choice]
        magnitude = self._magnitude.to(device)[choice]
        apply_weight = (uniform[..., 0] < probability).float()
        sign = _coin(uniform[..., 1], torch.float32)
        return [
            StageSample(op_index[:, k], apply_weight[:, k], magnitude[:, k], sign[:, k]) for k in range(2)
        ]

    def describe(self) -> dict[str, Any]:
        table = AUTOAUGMENT_POLICIES[self.policy]
        stages = []
        for k in range(2):
            selection, apply, magnitude = [], [], []
            for name in OP_NAMES:
                rows = [sub[k] for sub in table if sub[k][0] == name]
                selection.append(len(rows) / len(table))
                apply.append(sum(p for _, p, _ in rows) / len(rows) if rows else 0.0)
                mus = [autoaugment_magnitude(name, level) for _, _, level in rows]
                magnitude.append(sum(mus) / len(mus) if mus else 0.0)
            stages.append(_describe_stage(selection, apply, magnitude))
        return {
            "policy": self.name,
            "autoaugment_policy": self.policy,
            "num_stages": 2,
            "stages": stages,
            "subpolicies": [[list(op) for op in sub] for sub in table],
        }


# ----------------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------------

POLICY_NAMES: tuple[str, ...] = (
    "madao",
    "randaugment",
    "autoaugment",
    "trivialaugment",
    "identity",
    "replay",
)


def build_policy(name: str, **kwargs: Any) -> Policy:
    """Build a policy by name: ``"madao"`` (:class:`MADAOPolicy`), ``"randaugment"``, ``"autoaugment"``
    (``policy="cifar10" | "svhn" | "imagenet"``), ``"trivialaugment"``, ``"identity"``, ``"replay"``
    (``path=`` a JSON file written by :meth:`MADAOPolicy.save_json`). ``kwargs`` go to the constructor."""
    if name == "replay":
        path = kwargs.pop("path", None)
        if path is None:
            raise ValueError(
                "build_policy('replay') needs path=<policy .json written by MADAOPolicy.save_json>"
            )
        if kwargs:
            raise TypeError(f"build_policy('replay') takes only path=..., got also {sorted(kwargs)}")
        return ReplayPolicy.from_json(path)
    classes: dict[str, type[Policy]] = {
        "madao": MADAOPolicy,
        "randaugment": RandAugmentPolicy,
        "autoaugment": AutoAugmentPolicy,
        "trivialaugment": TrivialAugmentPolicy,
        "identity": IdentityPolicy,
    }
    if name not in classes:
        raise ValueError(f"unknown policy {name!r}; choose one of {list(POLICY_NAMES)}")
    return classes[name](**kwargs)
