"""MADAO's categorical policy (paper §3.3, eq. 7-10), trained or replayed, and its JSON format.

- :class:`MADAOPolicy`: trainable selection logits, apply probabilities and magnitudes; Gumbel-softmax
  selection with a straight-through factor ``u_i / stopgrad(u_i)`` and a relaxed Bernoulli apply weight,
  so a loss on the output has gradients to all 78 parameters (K = 2).
- :class:`ReplayPolicy`: the values of a learned MADAO policy, frozen (buffers), to train a new model.

Class-conditional (``MADAOPolicy(num_classes=C)``, the paper's open problem, §4): class ``c`` draws from
``phi_c = phi_global + delta_c``, offsets ``delta`` of shape ``(C, K, .)`` starting at 0, so the policy starts
as the global one, and each training image is augmented with its label's values (``policy(images,
labels=labels)``). Per-sample values are gathered by label, then :func:`~madao_pl.augment.stage.apply_stage`
groups by operation as always: one op call per image per stage, no loop over classes. A hyper batch of ``B``
images sees about ``B / C`` per class (1000 classes, batch 256: most classes none), so ``delta_c`` learns
only from the hyper steps whose batch holds class ``c`` and ``phi_global`` from every one: the shared part is
what rare classes learn through; ``class_offset_decay`` pulls the offsets back to it.

Either may have a 15th selection choice, :data:`IDENTITY` (``MADAOPolicy(identity=True)``): "leave the image
as it is", so the selection can put its mass on doing nothing (torchvision's RandAugment and TrivialAugment
have it). It has no apply probability or magnitude; its apply weight is 0.

Both draw their stages the same way (:meth:`MADAOPolicy.sample_stage`), so with the same generator state
a replay gives exactly what the learned policy gives under ``no_grad``.

Their JSON format is :mod:`madao_pl.augment.policy_json`'s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from madao_pl.augment.base import IDENTITY, Policy, StageDescription, describe_stage
from madao_pl.augment.ops import MAGNITUDE_OPS, OP_NAMES, OPERATIONS
from madao_pl.augment.policy_json import FORMAT, FORMAT_VERSION, OFFSETS, RAW, parse_policy
from madao_pl.augment.stage import (
    StageSample,
    conditional_gumbels,
    conditional_logistic,
    draw_uniform,
    gumbel_from_uniform,
    logistic_from_uniform,
    relaxed_log_one_hot,
    signs_from_uniform,
)

__all__ = ["MADAOPolicy", "ReplayPolicy"]


def _magnitude_op_indices() -> list[int]:
    """Indices into ``OPERATIONS`` of the ``MAGNITUDE_OPS``, in ``MAGNITUDE_OPS`` order (11 entries)."""
    return [OP_NAMES.index(name) for name in MAGNITUDE_OPS]


def _pick(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` per sample, from ``(N,)`` shared by the batch or ``(B, N)`` (a row per sample)."""
    return values[index] if values.dim() == 1 else values.gather(1, index[:, None]).squeeze(1)


class _CategoricalPolicy(Policy):
    """Shared sampling of MADAO-style stages from ``logits`` (K, 14, or 15 with :data:`IDENTITY` last),
    ``probability_raw`` (K, 14), ``magnitude_raw`` (K, 11); subclasses hold them as parameters (MADAO) or
    buffers (replay); class-conditional ones also the offsets ``logits_offset`` (C, K, 14 or 15),
    ``probability_offset`` (C, K, 14), ``magnitude_offset`` (C, K, 11), else ``None``."""

    name: ClassVar[str] = "madao"
    logits: Tensor
    probability_raw: Tensor
    magnitude_raw: Tensor
    logits_offset: Tensor | None
    probability_offset: Tensor | None
    magnitude_offset: Tensor | None
    class_names: list[str]

    def __init__(
        self,
        temperature: float,
        bernoulli_temperature: float,
        eps: float,
        rao_samples: int = 1,
        centered_selection: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(rao_samples, bool) or not isinstance(rao_samples, int) or rao_samples < 1:
            raise ValueError(
                f"rao_samples must be an integer >= 1 (1: the paper's estimator), got {rao_samples!r}"
            )
        self.rao_samples = rao_samples
        self.centered_selection = bool(centered_selection)
        for name, value in (("temperature", temperature), ("bernoulli_temperature", bernoulli_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 (the paper uses 0.05), got {value}")
        if not 0 < eps < 0.5:
            raise ValueError(
                f"eps must be in (0, 0.5) (apply probabilities are clamped into [eps, 1 - eps]), got {eps}"
            )
        self.temperature = float(temperature)
        self.bernoulli_temperature = float(bernoulli_temperature)
        self.eps = float(eps)
        self.register_buffer(
            "_magnitude_index", torch.tensor(_magnitude_op_indices(), dtype=torch.long), persistent=False
        )

    @property
    def num_stages(self) -> int:
        """Number of stages K (the first dimension of the logits)."""
        return self.logits.shape[0]

    @property
    def num_classes(self) -> int:
        """C, the classes with their own offsets (0: one policy for every image)."""
        return 0 if self.logits_offset is None else self.logits_offset.shape[0]

    def _set_class_names(self, class_names: Sequence[str] | None) -> None:
        names = (
            [str(c) for c in range(self.num_classes)]
            if class_names is None
            else [str(n) for n in class_names]
        )
        if len(names) != self.num_classes:
            raise ValueError(f"class_names: {len(names)} names for {self.num_classes} classes")
        self.class_names = names

    @property
    def has_identity(self) -> bool:
        """Whether the selection has the :data:`IDENTITY` choice (a 15th logit)."""
        return self.logits.shape[-1] == len(OPERATIONS) + 1

    @property
    def op_names(self) -> list[str]:
        """The selection's choices, in logit order: ``OP_NAMES`` (then :data:`IDENTITY`)."""
        return [*OP_NAMES, IDENTITY] if self.has_identity else list(OP_NAMES)

    def _without_identity(self, op_index: Tensor, apply_weight: Tensor) -> tuple[Tensor, Tensor]:
        """Samples that chose :data:`IDENTITY` get operation 0 and apply weight 0 (so their image is
        unchanged and the operation sends them no gradient); the others are returned as they are."""
        if not self.has_identity:
            return op_index, apply_weight
        chosen = op_index < len(OPERATIONS)
        return torch.where(chosen, op_index, 0), apply_weight * chosen.to(apply_weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_stages={self.num_stages}, temperature={self.temperature}, "
            f"bernoulli_temperature={self.bernoulli_temperature}, rao_samples={self.rao_samples}, "
            f"identity={self.has_identity}, num_classes={self.num_classes}"
        )

    # -- readable values -------------------------------------------------------------------------------

    def selection_probabilities(self) -> Tensor:
        """``(K, 14)`` (15 with :data:`IDENTITY`) softmax of the selection logits, per stage (with graph)."""
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

    def _described(self, selection: Tensor, apply: Tensor, magnitude: Tensor) -> list[StageDescription]:
        """``(K, .)`` selection, apply and full-table magnitude values -> the K stage descriptions."""
        values = [t.detach().double().tolist() for t in (selection, apply, magnitude)]
        return [
            describe_stage(*(v[k] for v in values), identity=self.has_identity) for k in range(len(values[0]))
        ]

    def describe(self) -> dict[str, Any]:
        """Selection probabilities, apply probabilities (before the eps clamp) and magnitudes per stage,
        in the description schema of :mod:`madao_pl.augment.base` (float64 Python floats); for a
        class-conditional policy those of the shared part ``phi_global`` (:meth:`describe_classes`: each
        class's)."""
        with torch.no_grad():
            stages = self._described(self.selection_probabilities(), self.apply_probabilities(),
                                     self._full_magnitudes())  # fmt: skip
        description = {"policy": self.name, "num_stages": self.num_stages, "stages": stages}
        if self.num_classes:
            description["num_classes"] = self.num_classes
        return description

    def describe_classes(self) -> dict[str, list[StageDescription]]:
        """Class name -> its stages (``phi_global + delta_c``) in the description schema; ``{}`` for a global
        policy."""
        if not self.num_classes:
            return {}
        with torch.no_grad():
            selection = torch.softmax(self.logits + self.logits_offset, dim=-1)
            apply = torch.sigmoid(self.probability_raw + self.probability_offset)
            magnitude = torch.sigmoid(self.magnitude_raw + self.magnitude_offset)
            full = magnitude.new_zeros(*magnitude.shape[:-1], len(OPERATIONS))
            full = full.index_copy(-1, self._magnitude_index, magnitude)
        return {
            name: self._described(selection[c], apply[c], full[c]) for c, name in enumerate(self.class_names)
        }

    def penalty(self) -> Tensor | None:
        """``class_offset_decay / 2 * |delta|^2`` for a class-conditional policy with a decay, else None."""
        decay = getattr(self, "class_offset_decay", 0.0)
        if not self.num_classes or decay == 0:
            return None
        return 0.5 * decay * sum((getattr(self, key) ** 2).sum() for key in OFFSETS)

    # -- sampling --------------------------------------------------------------------------------------

    def _relaxed_by_default(self) -> bool:
        """Whether :meth:`sample_stage` draws relaxed by default: grad mode on and a value requires grad."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _stage_values(self, stage: int, device: torch.device, labels: Tensor | None) -> tuple[Tensor, ...]:
        """Stage ``stage``'s logits, clamped apply probabilities and full-table magnitudes: ``(14,)`` each
        for a global policy, ``(B, .)`` per sample (gathered by label) for a class-conditional one."""
        logits = self.logits[stage].to(device)
        probability_raw = self.probability_raw[stage].to(device)
        magnitude_raw = self.magnitude_raw[stage].to(device)
        if self.num_classes:
            logits = logits + self.logits_offset[:, stage].to(device)[labels]
            probability_raw = probability_raw + self.probability_offset[:, stage].to(device)[labels]
            magnitude_raw = magnitude_raw + self.magnitude_offset[:, stage].to(device)[labels]
        probability = torch.sigmoid(probability_raw).clamp(self.eps, 1.0 - self.eps)
        magnitude = torch.sigmoid(magnitude_raw)
        full = magnitude.new_zeros(*magnitude.shape[:-1], len(OPERATIONS))
        return logits, probability, full.index_copy(-1, self._magnitude_index.to(device), magnitude)

    def _checked_labels(self, labels: Tensor | None, batch_size: int, device: torch.device) -> Tensor | None:
        """The labels a class-conditional policy needs, checked; ``None`` for a global policy."""
        if not self.num_classes:
            return None
        if labels is None:
            raise ValueError(
                f"this policy is class-conditional ({self.num_classes} classes): pass the batch's labels, "
                "policy(images, labels=labels)"
            )
        if labels.shape != (batch_size,) or labels.dtype != torch.long:
            raise ValueError(
                f"labels must be a ({batch_size},) long tensor, got {tuple(labels.shape)} {labels.dtype}"
            )
        if batch_size and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels span [{int(labels.min())}, {int(labels.max())}], outside the policy's "
                f"{self.num_classes} classes [0, {self.num_classes - 1}]"
            )
        return labels.to(device)

    def sample_stage(
        self,
        batch_size: int,
        stage: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        relaxed: bool | None = None,
        labels: Tensor | None = None,
    ) -> StageSample:
        """Draw stage ``stage`` for ``batch_size`` samples (paper eq. 7-10).

        One float32 uniform draw of shape ``(B, n + 2)`` feeds the Gumbel noise ``g`` (``n`` = 14 columns, 15
        with :data:`IDENTITY`), the
        Bernoulli's logistic noise ``l`` and the sign coin, so the relaxed and the hard path make the
        same discrete choices from the same generator state:

        - ``i_n = argmax(pi + g_n)`` (= argmax of ``u_n = softmax((pi + g_n) / tau)``);
        - ``b_n = sigmoid((logit(p_{i_n}) + l_n) / tau_b)`` relaxed, ``1[logit(p_{i_n}) + l_n > 0]`` hard,
          with ``p`` clamped into ``[eps, 1 - eps]``; both are Bernoulli(p) in distribution / threshold;
        - ``scale_n = u_{n,i} / stopgrad(u_{n,i})`` (relaxed only), computed as
          ``exp(log u_{n,i} - stopgrad(log u_{n,i}))``: exactly 1 in value, gradient
          ``(onehot(i_n) - u_n) / tau`` to the logits.

        A sample that chose :data:`IDENTITY` is left unchanged (apply weight 0); its selection still gets
        the straight-through gradient. With ``rao_samples > 1`` the relaxed draw averages these gradients
        over more noise draws given the same choices (:meth:`_rao_blackwellised`).

        Args:
            batch_size: B.
            stage: which of the K stages.
            device: where the returned tensors live (default: the parameters' device).
            generator: source of randomness (default: ``self.generator``, then torch's global one).
            relaxed: ``True`` relaxed draws with gradients, ``False`` hard draws; default ``True`` iff
                grad mode is on and the parameters require grad.
            labels: ``(B,)`` class of each sample, for a class-conditional policy (ignored otherwise).

        Returns:
            A :class:`~madao_pl.augment.stage.StageSample` of ``(B,)`` tensors on ``device``; ``scale`` is
            ``None`` for hard draws.
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}")
        device = torch.device(device) if device is not None else self.logits.device
        generator = generator if generator is not None else self.generator
        relaxed = self._relaxed_by_default() if relaxed is None else relaxed
        labels = self._checked_labels(labels, batch_size, device)
        num_ops = self.logits.shape[-1]
        dtype = self.logits.dtype

        noise = draw_uniform((batch_size, num_ops + 2), generator, device)
        gumbels = gumbel_from_uniform(noise[:, :num_ops]).to(dtype)
        logistic = logistic_from_uniform(noise[:, num_ops]).to(dtype)
        sign = signs_from_uniform(noise[:, num_ops + 1], dtype)

        logits, probability, magnitude_full = self._stage_values(stage, device, labels)

        if relaxed and self.rao_samples > 1:
            return self._rao_blackwellised(batch_size, generator, device, logits, gumbels, logistic, sign,
                                           probability, magnitude_full)  # fmt: skip
        if relaxed:
            log_u = relaxed_log_one_hot(logits, gumbels, self.temperature)
            op_index = log_u.argmax(dim=-1)
            log_u_i = log_u.gather(1, op_index[:, None]).squeeze(1)
            scale = torch.exp(log_u_i - log_u_i.detach())
            op_index, keep = self._without_identity(op_index, torch.ones_like(scale))
            z = torch.logit(_pick(probability, op_index)) + logistic
            apply_weight = torch.sigmoid(z / self.bernoulli_temperature) * keep
            centered = self.centered_selection
            return StageSample(op_index, apply_weight, _pick(magnitude_full, op_index), sign, scale, centered)

        with torch.no_grad():
            op_index, keep = self._without_identity((logits + gumbels).argmax(dim=-1), logistic.new_ones(()))
            z = torch.logit(_pick(probability, op_index)) + logistic
            apply_weight = (z > 0).to(dtype) * keep
            return StageSample(op_index, apply_weight, _pick(magnitude_full, op_index), sign)

    def _rao_blackwellised(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device, logits: Tensor,
        gumbels: Tensor, logistic: Tensor, sign: Tensor, probability: Tensor, magnitude_full: Tensor,
    ) -> StageSample:  # fmt: skip
        """The relaxed draw with ``S = rao_samples`` Gumbel-Rao gradients (Paulus et al. 2021).

        The same discrete choices as the hard draw from the same generator state (``i_n``, and
        ``b_n = 1[logit(p_{i_n}) + l_n > 0]`` *hard* in value), with gradients averaged over the given
        noise and ``S - 1`` more draws conditioned on those choices (``conditional_gumbels``,
        ``conditional_logistic`` of :mod:`madao_pl.augment.stage`):

        - ``scale_n = exp(m_n - stopgrad(m_n))``, ``m_n = mean_s log u^(s)_{n,i}``: gradient
          ``mean_s (onehot(i_n) - u^(s)_n) / tau``;
        - ``b_n = h_n + r_n - stopgrad(r_n)``, ``r_n = mean_s sigmoid((logit(p_{i_n}) + l^(s)_n) / tau_b)``.

        The selection gradient has the expectation of the single-draw one and a smaller variance (it is its
        conditional expectation given the choices, estimated with S draws). The extra draws come after this
        stage's own, so the next stage's draws differ from ``rao_samples=1``'s.
        """
        num_ops = logits.shape[-1]
        extra = draw_uniform((self.rao_samples - 1, batch_size, num_ops + 2), generator, device)
        with torch.no_grad():
            choice = (logits + gumbels).argmax(dim=-1)
            op_index, keep = self._without_identity(choice, logistic.new_ones(()))
            logit_p = torch.logit(_pick(probability, op_index))
            hard = (logit_p + logistic > 0).to(logits.dtype)
            given = conditional_gumbels(logits, choice, extra[..., : num_ops + 1])
            noise = torch.cat([gumbels[None], given])
            levels = torch.cat([logistic[None], conditional_logistic(logit_p, hard, extra[..., num_ops + 1])])
        log_u = relaxed_log_one_hot(logits, noise, self.temperature)  # (S, B, N)
        mean_log_u = log_u.gather(2, choice.view(1, -1, 1).expand(len(noise), -1, 1)).squeeze(2).mean(0)
        scale = torch.exp(mean_log_u - mean_log_u.detach())
        relaxed = torch.sigmoid(
            (torch.logit(_pick(probability, op_index)) + levels) / self.bernoulli_temperature
        )
        mean_relaxed = relaxed.mean(0)
        apply_weight = (hard + (mean_relaxed - mean_relaxed.detach())) * keep
        centered = self.centered_selection
        return StageSample(op_index, apply_weight, _pick(magnitude_full, op_index), sign, scale, centered)

    def sample(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        relaxed: bool | None = None,
        labels: Tensor | None = None,
    ) -> list[StageSample]:
        """:meth:`sample_stage` for every stage, in order (the order :meth:`forward` draws them)."""
        return [
            self.sample_stage(batch_size, k, device, generator, relaxed, labels)
            for k in range(self.num_stages)
        ]

    # -- save / load -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: raw parameter values (exact: float32 -> python float round-trips), settings,
        the op table they refer to and, for humans, :meth:`describe` (and :meth:`describe_classes`)."""
        keys = (*RAW, *OFFSETS) if self.num_classes else RAW
        raw = {key: getattr(self, key).detach().cpu().double().tolist() for key in keys}
        data = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "policy": self.name,
            "num_stages": self.num_stages,
            "temperature": self.temperature,
            "bernoulli_temperature": self.bernoulli_temperature,
            "eps": self.eps,
            "dtype": str(self.logits.dtype).removeprefix("torch."),
            "op_names": self.op_names,
            "magnitude_ops": list(MAGNITUDE_OPS),
            "raw": raw,
            "describe": self.describe(),
        }
        if self.num_classes:
            data["class_names"] = list(self.class_names)
            data["classes"] = self.describe_classes()
        return data

    @staticmethod
    def _parse_dict(data: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """:func:`~madao_pl.augment.policy_json.parse_policy` (the checks and the raw tensors)."""
        return parse_policy(data)

    def save_json(self, path: str | PathLike) -> None:
        """Write :meth:`to_dict` as JSON to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=1)
            handle.write("\n")


class MADAOPolicy(_CategoricalPolicy):
    """The trainable MADAO policy (paper §3.3, eq. 7-10; Appendix A): 39 parameters per stage.

    Per stage k: selection logits ``pi_k`` (14, zeros = uniform), apply-probability raw values (14,
    ``p = sigmoid(raw)``), magnitude raw values (11, ``mu = sigmoid(raw)``); the raw values start at
    ``init_probability`` / ``init_magnitude`` themselves (raw numbers, not probabilities, as the paper
    does): the defaults 0.5 give ``sigmoid(0.5) ~ 0.62`` (so MADAO starts as RandAugment with magnitude
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
        rao_samples: S, noise draws the selection and apply gradients average over (1: the paper's single
            draw and relaxed apply weight; > 1: Gumbel-Rao, hard apply weights, see :meth:`sample_stage`).
        centered_selection: the straight-through factor multiplies only the change each stage makes
            (:func:`~madao_pl.augment.stage.apply_stage`), so samples left unchanged send the selection no
            gradient (False: the paper's, factor on the whole output).
        identity: add the :data:`IDENTITY` choice (one more logit per stage, starting as likely as each
            op), so the policy can learn to leave images alone (False: the paper's 14 ops).
        num_classes: C > 0 makes the policy class-conditional (module doc): offsets ``delta_c`` for every
            class, zeros at the start; 0: one policy for every image.
        class_names: the C names ``policy.json`` and the plots use (default "0", "1", ...).
        class_offset_decay: ``lambda`` of the penalty ``lambda / 2 |delta|^2`` the hyper step adds to the
            validation loss (:meth:`penalty`), pulling each class toward the shared part (0: none).
    """

    def __init__(
        self,
        num_stages: int = 2,
        temperature: float = 0.05,
        bernoulli_temperature: float = 0.05,
        init_magnitude: float = 0.5,
        init_probability: float = 0.5,
        eps: float = 1e-6,
        rao_samples: int = 1,
        centered_selection: bool = False,
        identity: bool = False,
        num_classes: int = 0,
        class_names: Sequence[str] | None = None,
        class_offset_decay: float = 0.0,
    ) -> None:
        super().__init__(temperature, bernoulli_temperature, eps, rao_samples, centered_selection)
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if not isinstance(identity, bool):
            raise ValueError(f"identity must be true or false, got {identity!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(
                f"num_classes must be an integer >= 0 (0: one policy for all), got {num_classes!r}"
            )
        if not class_offset_decay >= 0:
            raise ValueError(f"class_offset_decay must be >= 0, got {class_offset_decay}")
        self.class_offset_decay = float(class_offset_decay)
        self.logits = nn.Parameter(torch.zeros(num_stages, len(OP_NAMES) + int(identity)))
        self.probability_raw = nn.Parameter(torch.full((num_stages, len(OP_NAMES)), float(init_probability)))
        self.magnitude_raw = nn.Parameter(torch.full((num_stages, len(MAGNITUDE_OPS)), float(init_magnitude)))
        for key, base in zip(OFFSETS, RAW, strict=True):
            offset = nn.Parameter(getattr(self, base).new_zeros(num_classes, *getattr(self, base).shape))
            self.register_parameter(key, offset if num_classes else None)
        self._set_class_names(class_names)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MADAOPolicy:
        """Rebuild a trainable policy from :meth:`to_dict` output (exact raw values, same dtype)."""
        tensors, settings = cls._parse_dict(data)
        logits = tensors["logits"]
        classes = len(settings.get("class_names", []))
        identity = logits.shape[1] > len(OP_NAMES)
        policy = cls(num_stages=logits.shape[0], identity=identity, num_classes=classes, **settings)
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
        """A :class:`ReplayPolicy` with the current values: same draws, no parameters."""
        return ReplayPolicy.from_dict(self.to_dict()).to(self.logits.device)


class ReplayPolicy(_CategoricalPolicy):
    """A learned MADAO policy replayed with fixed values (buffers, no parameters), for training a new
    model with it (15 logits per stage: with the :data:`IDENTITY` choice). Always draws hard
    (:meth:`MADAOPolicy.sample_stage` with ``relaxed=False``), so with the same generator state it gives
    exactly what the MADAO policy gives under ``no_grad``.

    Build it with :meth:`from_json` / :meth:`from_dict` or :meth:`MADAOPolicy.freeze`.
    """

    name: ClassVar[str] = "replay"

    def __init__(
        self,
        logits: Tensor,
        probability_raw: Tensor,
        magnitude_raw: Tensor,
        temperature: float = 0.05,
        bernoulli_temperature: float = 0.05,
        eps: float = 1e-6,
        logits_offset: Tensor | None = None,
        probability_offset: Tensor | None = None,
        magnitude_offset: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(temperature, bernoulli_temperature, eps)
        k = logits.shape[0]
        with_identity = logits.dim() == 2 and logits.shape[1] == len(OP_NAMES) + 1
        widths = (len(OP_NAMES) + int(with_identity), len(OP_NAMES), len(MAGNITUDE_OPS))
        for key, value, width in zip(RAW, (logits, probability_raw, magnitude_raw), widths, strict=True):
            if value.dim() != 2 or tuple(value.shape) != (k, width):
                raise ValueError(
                    f"ReplayPolicy: {key} must have shape ({k}, {width}), got {tuple(value.shape)}"
                )
            self.register_buffer(key, value.detach().clone())
        offsets = (logits_offset, probability_offset, magnitude_offset)
        classes = 0 if logits_offset is None else logits_offset.shape[0]
        for key, value, width in zip(OFFSETS, offsets, widths, strict=True):
            if (value is None) != (logits_offset is None) or (
                value is not None and tuple(value.shape) != (classes, k, width)
            ):
                raise ValueError(
                    f"ReplayPolicy: {key} must have shape ({classes}, {k}, {width}) like the others"
                )
            self.register_buffer(key, None if value is None else value.detach().clone())
        self._set_class_names(class_names)

    @classmethod
    def initial(cls, **madao_arguments: Any) -> ReplayPolicy:
        """The policy a :class:`MADAOPolicy` with these arguments starts from, frozen: training with it
        separates what MADAO learns from where it starts (paper Appendix C.3)."""
        return MADAOPolicy(**madao_arguments).freeze()

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
        """Replays always draw hard."""
        return False
