"""The MADAO hyper step on a network and a policy: plain, adaptive and memory-bounded (chunked).

One call does what paper Algorithm 1 does every ``s``-th step (DESIGN.md §5): the augmented forward
(policy with its graph -> cutout -> normalise -> network in train mode), ``df/dtheta``, ``dg/dtheta`` on an
un-augmented held-out batch with the network in eval mode, and the implicit hypergradient
``-d2f/dphi dtheta^T [alpha sum_{j<=J} (I - alpha H)^j] dg/dtheta`` by :mod:`madao_pl.hypergrad`. It returns
the hypergradient and the network gradient; the caller (``MADAOModule``) averages both across DDP ranks
and steps the two optimisers.

How the work is split. The augmented batch ``x = normalise(cutout(policy(images)))`` is computed once with
its graph to the policy parameters ``phi``. The network sees ``x`` through a detached leaf, so everything
second-order (the HVPs, and the mixed derivative as ``d/dx <df/dtheta, u>``) stays inside the network; the
mixed derivative reaches ``phi`` by one vector-Jacobian product through the augmentation at the end. This
is the chain rule, not an approximation, and it means the policy's random draws and the Cutout mask are
drawn exactly once per hyper step, whatever the number of chunks.

Switches (all off = the plain path, today's maths):

- ``tol > 0``: the adaptive Neumann series of :func:`madao_pl.hypergrad.neumann_binomial_inverse_hvp`
  (the same ``J``-term sum to within ``tol`` relative, usually after 1 HVP when ``alpha |H|`` is small).
- ``recompute``: instead of keeping one ``create_graph`` graph alive across all HVPs and the mixed
  derivative, rebuild it (forward + ``df/dtheta``) for each of them and let each double backward free it as
  it goes; the network gradient then comes from an ordinary first-order forward and backward, and the
  validation gradient is taken with no graph alive. Exact (the same values up to rounding): it trades one
  first-order pass plus one forward and ``create_graph`` backward per HVP for the memory of the graph
  sitting under the validation pass and the first HVP. The augmentation's graph is not kept either: the
  generator states are saved before the augmentation, and at the end the augmentation is replayed on
  them (same draws, images checked bit for bit, generators put back afterwards) to take the product to
  ``phi``; that costs one more policy forward (tens of milliseconds). WRN-28-2, batch 128, CPU: peak RSS
  above setup 1182 -> 1161 MB with ``MALLOC_MMAP_THRESHOLD_`` at 128 KiB (live tensors, see
  ``benchmarks/bench_cost.py``).
- ``chunks > 1`` (implies ``recompute``): a memory-bounded hyper step. Every HVP and the mixed derivative
  are taken chunk by chunk, each chunk's graph rebuilt and freed in turn, so only one chunk's graph is
  alive at a time (peak memory about ``1 / chunks`` of the hyper step's graph).

What ``chunks > 1`` computes on networks with BatchNorm. In train mode BatchNorm normalises with the
statistics of the batch it sees, so the training loss is *not* a sum over samples and its Hessian is not a
sum of per-chunk Hessians; an exact chunked HVP of the full-batch loss would need every chunk's graph at
once (the cross-sample terms run through every BatchNorm layer), which is the memory this mode saves. The
chunked hyper step therefore differentiates the *per-chunk-statistics* training loss

    f_C(theta, phi) = sum_c (|c| / B) * CE(net_train(x_c(phi)), y_c),   BatchNorm statistics over chunk c,

("ghost batch norm"), which is exactly the loss DDP differentiates when ``C`` ranks hold ``B / C`` samples
each (BatchNorm statistics are per rank; SyncBatchNorm is refused). It equals the plain path's loss when
the network has no train-mode cross-sample layer, and then the chunked hyper step equals the plain one up
to rounding. Its *unchunked* counterpart is the same ``f_C`` with every chunk's graph alive at once (the
tests compare against it to 1e-10 in float64). Everything first-order stays exact full-batch maths: the
network gradient ``df/dtheta`` and ``train_loss`` come from one ordinary full-batch train-mode forward and
backward, exactly an inner step, and that forward is the only one that updates the BatchNorm running
statistics (the chunk forwards' updates are undone), so the network trains and the running statistics
evolve exactly as in the plain path; only the second-order terms (the HVPs and the mixed derivative) use
chunk statistics. That changes the hypergradient a lot on BatchNorm networks: on WRN-28-2 with batch 128
(``benchmarks/bench_cost.py``) it differed from the full-batch one by 19 % relative with 2 chunks at
initialisation, and by 32-76 % (cosine 0.95-0.72) with 4 chunks, against about 3e-5 for the adaptive series.
So ``chunks > 1`` is no default: it is for a hyper step that does not fit in memory otherwise (its live
peak on WRN-28-2 is that of an inner step).

Randomness: the policy draws come from ``generator`` (default ``policy.generator``, else torch's global
generator) and Cutout from torch's global generator, in the same order as ``MADAOModule.augment``
(policy, then Cutout), each exactly once (with ``recompute`` the replay re-uses the saved states and leaves
every generator where it found it). The network's own draws (dropout) are not replayed: with ``recompute``
every rebuilt forward draws a new dropout mask, so use dropout 0 there.

Host syncs: none of its own unless a :class:`StepTimer` is passed (the timer synchronises CUDA around each
timed section), and one with ``recompute`` (the bit-for-bit check of the replayed augmentation). The
adaptive Neumann series syncs once per term (``.item()``), and the policy's grouping of samples by operation
syncs a few times per stage (see :func:`madao_pl.augment.policy.apply_stage`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from madao_pl.augment.ops import cutout
from madao_pl.augment.policy import Policy
from madao_pl.hypergrad import (
    METHODS,
    HypergradInfo,
    conjugate_gradient_inverse_hvp,
    exact_inverse_hvp,
    neumann_inverse_hvp,
)

__all__ = ["HyperStepResult", "StepTimer", "augment_for_hyper_step", "hyper_step"]

Vector = tuple[Tensor, ...]
Section = Callable[[str], contextlib.AbstractContextManager]


class StepTimer:
    """Wall-clock seconds of named sections, summed per name, for profiling a hyper step.

    On CUDA it synchronises the device before and after each section, so the times are those of the
    work, not of its launch; that is why :func:`hyper_step` only times (and syncs) when given a timer.
    Sections with the same name add up; :meth:`reset` clears them.

    Args:
        device: the device the work runs on (synchronised when it is a CUDA device).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.times: dict[str, float] = {}

    def reset(self) -> None:
        """Forget every recorded section."""
        self.times = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and add the seconds to ``times[name]``."""
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start


@dataclass
class HyperStepResult:
    """What one hyper step returns; no tensor carries a graph.

    Attributes:
        hypergrad: ``-d2f/dphi dtheta^T H^{-1} dg/dtheta`` (approximated by ``method``), one tensor per
            trainable policy parameter, in ``policy.parameters()`` order. Descend along it.
        network_grads: ``df/dtheta`` of the full-batch training loss, one tensor per trainable network
            parameter, in ``net.parameters()`` order: the network step of this (fused inner) step.
        train_loss: ``f``, the full-batch augmented training loss (0-d).
        val_loss: ``g``, the validation loss in eval mode (0-d).
        info: the inverse-HVP diagnostics; ``info.hvps`` is the number of Hessian-vector products of the
            whole batch performed (with ``chunks > 1`` each one is ``chunks`` chunk products).
        timings: seconds per section when a :class:`StepTimer` was passed (its ``times`` after this call),
            else empty. Sections: ``augmented_forward``, ``train_gradient`` (df/dtheta),
            ``validation_gradient``, ``hvp_1`` .. ``hvp_k`` (with ``recompute`` or chunks: including the
            rebuilt forward and ``df/dtheta``), ``mixed_derivative`` (likewise, and including the product
            through the augmentation to phi), ``inverse_hvp_overhead`` (the Neumann/CG arithmetic around
            the HVPs) and ``restore_buffers`` (with ``recompute`` or chunks).
    """

    hypergrad: Vector
    network_grads: Vector
    train_loss: Tensor
    val_loss: Tensor
    info: HypergradInfo
    timings: dict[str, float] = field(default_factory=dict)


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require grad, in ``parameters()`` order."""
    return [p for p in module.parameters() if p.requires_grad]


def augment_for_hyper_step(
    policy: Policy,
    images: Tensor,
    *,
    normalize: Callable[[Tensor], Tensor],
    cutout_size: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``normalize(cutout(policy(images)))`` with grad enabled, so the result has a graph to the policy.

    The same order and the same random draws as ``MADAOModule.augment`` followed by ``normalize``:
    the policy draws from ``generator`` (default ``policy.generator``), Cutout from torch's global
    generator. With grad enabled a :class:`~madao_pl.augment.policy.MADAOPolicy` draws relaxed (its
    selection, apply weight and magnitude carry gradients).

    Shapes: ``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, C, H, W)`` normalised.
    """
    with torch.enable_grad():
        augmented = policy(images, generator=generator)
        if cutout_size > 0:
            augmented = cutout(augmented, cutout_size)
        return normalize(augmented)


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Run the block with ``net`` in eval mode, restoring its previous mode afterwards."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def _validation_gradient(
    net: nn.Module, images: Tensor, labels: Tensor, params: Sequence[Tensor]
) -> tuple[Tensor, Vector]:
    """``g`` and ``dg/dtheta`` on un-augmented, normalised images with the network in eval mode.

    Eval mode makes BatchNorm use, and not update, its running statistics; zeros where ``g`` does not
    depend on a parameter.
    """
    with _eval_mode(net), torch.enable_grad():
        loss = F.cross_entropy(net(images), labels)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return loss.detach(), _zeros_for_none(grads, params)


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> Vector:
    return tuple(torch.zeros_like(p) if g is None else g.detach() for g, p in zip(grads, like, strict=True))


class _HessianOperator(torch.autograd.Function):
    """Packs a Hessian-vector-product routine as the backward of a stand-in for ``df/dtheta``.

    ``outputs = _HessianOperator.apply(hvp, values, *params)`` returns tensors equal to ``values`` (the
    gradient ``df/dtheta``) whose vector-Jacobian product with respect to ``params`` is ``hvp(v)``. So
    ``torch.autograd.grad(outputs, params, grad_outputs=v)`` is ``H v`` computed however ``hvp`` computes
    it (chunk by chunk here), and the inverse-HVP routines of :mod:`madao_pl.hypergrad`, which only take
    such products through ``df/dtheta``, run unchanged on it.
    """

    @staticmethod
    def forward(ctx, hvp: Callable[[Vector], Vector], values: Vector, *params: Tensor) -> Vector:  # type: ignore[override]
        ctx.hvp = hvp
        return tuple(v.detach().clone() for v in values)

    @staticmethod
    def backward(ctx, *vector: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return (None, None, *ctx.hvp(tuple(vector)))


class _RandomState:
    """The random-generator states the augmentation draws from, saved to replay its draws exactly.

    The policy draws from ``generator`` (or torch's global generator of the batch's device when it is
    ``None``) and Cutout from torch's global generator of the batch's device; saving those states before
    the augmentation and restoring them lets :meth:`rerun` rebuild the very same augmented batch (same
    draws, bit-identical images) with its graph to the policy, so the graph need not stay alive in between.
    :meth:`rerun` puts every generator back where it was before the replay, so the random streams after the
    hyper step are those of a single augmentation. For batches on the devices in ``DEVICE_TYPES`` (elsewhere
    the hyper step keeps the augmentation's graph).
    """

    DEVICE_TYPES = ("cpu", "cuda")

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.device = device
        self.saved = self._get()

    def _get(self) -> tuple[Tensor | None, Tensor, Tensor | None]:
        return (
            self.generator.get_state() if self.generator is not None else None,
            torch.get_rng_state(),
            torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        )

    def _set(self, state: tuple[Tensor | None, Tensor, Tensor | None]) -> None:
        own, cpu, cuda = state
        if self.generator is not None and own is not None:
            self.generator.set_state(own)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.device)

    def rerun(self, augment: Callable[[], Tensor], expected: Tensor) -> Tensor:
        """``augment()`` with the saved draws; checks it gives ``expected`` bit for bit (one host sync)."""
        now = self._get()
        self._set(self.saved)
        try:
            augmented = augment()
        finally:
            self._set(now)
        if not torch.equal(augmented.detach(), expected.detach()):
            raise RuntimeError(
                "replaying the augmentation with the same random draws gave different images, so the "
                "hypergradient would be taken at the wrong point: the policy or Cutout is not deterministic "
                "on this device; set augment.hyper_recompute=false (keeps the augmentation graph instead)."
            )
        return augmented


class _BufferSnapshot:
    """Copies of every buffer of a module (BatchNorm running statistics and counters), to restore later."""

    def __init__(self, module: nn.Module) -> None:
        self.saved = [(b, b.detach().clone()) for b in module.buffers()]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, value in self.saved:
                buffer.copy_(value)


def _check_arguments(
    images: Tensor,
    labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    cutout_size: int,
    alpha: float,
    steps: int,
    method: str,
    tol: float,
    chunks: int,
    recompute: bool,
) -> None:
    """Refuse bad settings and mismatched batches with a message naming the fix."""
    if not isinstance(recompute, bool):
        raise ValueError(f"recompute (augment.hyper_recompute) must be true or false, got {recompute!r}.")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(repr(m) for m in METHODS)}.")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(
            f"chunks (augment.hyper_chunks) must be an int >= 1 (1 = whole batch at once), got {chunks!r}."
        )
    if chunks > images.shape[0]:
        raise ValueError(
            f"chunks={chunks} is more than the batch size {images.shape[0]}: every chunk needs a sample; "
            "lower augment.hyper_chunks."
        )
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(
            f"tol (augment.neumann_tol) must be a finite float >= 0 (0 = all J terms), got {tol!r}."
        )
    if isinstance(cutout_size, bool) or not isinstance(cutout_size, int) or cutout_size < 0:
        raise ValueError(f"cutout_size must be an int >= 0 pixels (0 = off), got {cutout_size!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps (augment.neumann_steps) must be an int >= 0, got {steps!r}.")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (augment.neumann_alpha) must be a finite float > 0, got {alpha!r}.")
    for name, x, y in (("images", images, labels), ("val_images", val_images, val_labels)):
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(
                f"{name} must be (B, C, H, W) with B >= 1 and its labels (B,), got {tuple(x.shape)} and "
                f"{tuple(y.shape)}."
            )


def _inverse_hvp(
    train_grads: Sequence[Tensor],
    params: Sequence[Tensor],
    vector: Sequence[Tensor],
    *,
    method: str,
    alpha: float,
    steps: int,
    tol: float,
    info: HypergradInfo,
) -> Vector:
    """``H^{-1} v`` by ``method``, as :func:`madao_pl.hypergrad.implicit_hypergradient` chooses it."""
    if method == "neumann":
        return neumann_inverse_hvp(train_grads, params, vector, alpha=alpha, steps=steps, tol=tol, info=info)
    if method == "cg":
        return conjugate_gradient_inverse_hvp(train_grads, params, vector, steps=steps, info=info)
    return exact_inverse_hvp(train_grads, params, vector, info=info)


@dataclass
class _Pieces:
    """What the whole-batch and the chunked modes provide to :func:`hyper_step`.

    ``hvp(v)`` is ``H v`` (``None`` when ``df/dtheta`` has no path back to ``theta``); ``mixed(u)`` is
    ``d/dx <df/dtheta, u>`` with respect to the network's input batch ``x``; ``snapshot`` holds buffers
    to restore at the end (chunked mode).
    """

    train_loss: Tensor
    network_grads: Vector
    hvp: Callable[[Vector], Vector] | None
    mixed: Callable[[Vector], Tensor]
    snapshot: _BufferSnapshot | None = None


def _pairs(grads: Sequence[Tensor | None], vector: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The gradients that carry a graph and the matching entries of ``vector``."""
    kept = [(g, v) for g, v in zip(grads, vector, strict=True) if g is not None and g.requires_grad]
    return [g for g, _ in kept], [v for _, v in kept]


def _whole_batch(
    net: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    params: list[Tensor],
    section: Section,
) -> _Pieces:
    """Plain path: one train-mode forward of the whole batch and ``df/dtheta`` with ``create_graph=True``;
    every HVP and the mixed derivative are double backward passes through that one graph."""
    with section("augmented_forward"), torch.enable_grad():
        train_loss = F.cross_entropy(net(inputs), labels)
    with section("train_gradient"), torch.enable_grad():
        grads = torch.autograd.grad(train_loss, params, create_graph=True, allow_unused=True)

    def hvp(vector: Vector) -> Vector:
        outputs, grad_outputs = _pairs(grads, vector)
        products = torch.autograd.grad(
            outputs, params, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True
        )
        return _zeros_for_none(products, params)

    def mixed(direction: Vector) -> Tensor:
        outputs, grad_outputs = _pairs(grads, direction)
        (product,) = torch.autograd.grad(outputs, [inputs], grad_outputs=grad_outputs, allow_unused=True)
        return torch.zeros_like(inputs) if product is None else product

    has_graph = any(g is not None and g.requires_grad for g in grads)
    return _Pieces(train_loss.detach(), _zeros_for_none(grads, params), hvp if has_graph else None, mixed)


def _chunked(
    net: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    params: list[Tensor],
    chunks: int,
    section: Section,
) -> _Pieces:
    """Recomputing path: the network gradient from one full-batch train-mode forward and first-order
    backward (an inner step: the only forward whose BatchNorm updates are kept); every HVP and the mixed
    derivative as a sum over ``chunks`` chunks (one chunk = the whole batch, exact), each chunk's forward and
    ``create_graph`` gradient rebuilt in turn and freed by its double backward."""
    batch = inputs.shape[0]
    with section("augmented_forward"), torch.enable_grad():
        train_loss = F.cross_entropy(net(inputs.detach()), labels)
    with section("train_gradient"):
        grads = torch.autograd.grad(train_loss, params, allow_unused=True)
    snapshot = _BufferSnapshot(net)
    slices = [(int(s[0]), len(s)) for s in torch.tensor_split(torch.arange(batch), chunks)]

    def chunk_grads(start: int, chunk_inputs: Tensor) -> tuple[Tensor | None, ...]:
        """``d f_c / dtheta`` with its graph, ``f_c = sum_{n in c} CE_n / B`` (BatchNorm over the chunk)."""
        with torch.enable_grad():
            chunk_labels = labels.narrow(0, start, chunk_inputs.shape[0])
            loss = F.cross_entropy(net(chunk_inputs), chunk_labels, reduction="sum") / batch
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        del loss
        return grads

    def hvp(vector: Vector) -> Vector:
        total = [torch.zeros_like(p) for p in params]
        for start, length in slices:
            outputs, grad_outputs = _pairs(
                chunk_grads(start, inputs.detach().narrow(0, start, length)), vector
            )
            if outputs:
                products = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, allow_unused=True)
                for t, h in zip(total, products, strict=True):
                    if h is not None:
                        t.add_(h)
        return tuple(total)

    def mixed(direction: Vector) -> Tensor:
        product = torch.zeros_like(inputs)
        for start, length in slices:
            chunk_inputs = inputs.detach().narrow(0, start, length).requires_grad_(True)
            outputs, grad_outputs = _pairs(chunk_grads(start, chunk_inputs), direction)
            if outputs:
                (part,) = torch.autograd.grad(
                    outputs, [chunk_inputs], grad_outputs=grad_outputs, allow_unused=True
                )
                if part is not None:
                    product.narrow(0, start, length).copy_(part)
        return product

    return _Pieces(train_loss.detach(), _zeros_for_none(grads, params), hvp, mixed, snapshot)


def hyper_step(
    net: nn.Module,
    policy: Policy,
    images: Tensor,
    labels: Tensor,
    val_images: Tensor,
    val_labels: Tensor,
    *,
    normalize: Callable[[Tensor], Tensor],
    cutout_size: int = 0,
    alpha: float = 1e-3,
    steps: int = 5,
    method: str = "neumann",
    tol: float = 0.0,
    chunks: int = 1,
    recompute: bool = False,
    generator: torch.Generator | None = None,
    timer: StepTimer | None = None,
) -> HyperStepResult:
    """One MADAO hyper step: network gradient and implicit policy hypergradient (see the module doc).

    Plain path (``tol=0, chunks=1``): one train-mode forward of the augmented batch (it updates the
    BatchNorm running statistics once, as an inner step does), ``df/dtheta`` with ``create_graph=True``,
    ``dg/dtheta`` in eval mode, ``J`` HVPs through that graph and the mixed derivative.

    Args:
        net: the classifier (unwrapped, not DDP); takes normalised images, returns logits. Its
            train/eval mode is used for the augmented forward and restored after the validation forward.
        policy: the augmentation policy; its trainable parameters are ``phi``.
        images, labels: the training batch ``(B, C, H, W)`` in ``[0, 1]`` and ``(B,)``.
        val_images, val_labels: an un-augmented held-out batch in ``[0, 1]`` and its labels.
        normalize: per-channel normalisation applied after the augmentation (and to ``val_images``).
        cutout_size: Cutout square side in pixels after the policy (0 = off).
        alpha: Neumann step.
        steps: ``J``, HVPs of the plain Neumann loop (CG iterations for ``method="cg"``).
        method: ``"neumann"``, ``"cg"`` or ``"exact"`` (see :mod:`madao_pl.hypergrad`).
        tol: adaptive Neumann tolerance (``augment.neumann_tol``); 0 = all ``J`` terms.
        chunks: ``augment.hyper_chunks``; 1 = whole batch, ``C > 1`` = memory-bounded chunked hyper step
            (per-chunk BatchNorm statistics in the second-order terms, see the module doc).
        recompute: ``augment.hyper_recompute``; rebuild and free the ``create_graph`` graph for every HVP and
            the mixed derivative instead of keeping it, and replay the augmentation at the end instead of
            keeping its graph (exact; less memory, more time). Implied by ``chunks > 1``.
        generator: the policy's random generator (default ``policy.generator``).
        timer: a :class:`StepTimer` to time each section (it synchronises CUDA); ``None`` = no timing.

    Returns:
        :class:`HyperStepResult`.
    """
    _check_arguments(
        images,
        labels,
        val_images,
        val_labels,
        cutout_size=cutout_size,
        alpha=alpha,
        steps=steps,
        method=method,
        tol=tol,
        chunks=chunks,
        recompute=recompute,
    )
    section = timer.section if timer is not None else _no_section
    params = _trainable(net)
    hparams = _trainable(policy)
    if not params:
        raise ValueError("the network has no trainable parameters: the hyper step differentiates them.")
    info = HypergradInfo(method=method)
    performed = {"hvps": 0, "seconds": 0.0}

    def counted(hvp: Callable[[Vector], Vector]) -> Callable[[Vector], Vector]:
        def run(vector: Vector) -> Vector:
            performed["hvps"] += 1
            start = time.perf_counter()
            with section(f"hvp_{performed['hvps']}"):
                product = hvp(vector)
            performed["seconds"] += time.perf_counter() - start
            return product

        return run

    recompute = recompute or chunks > 1
    replay = (
        _RandomState(generator if generator is not None else policy.generator, images.device)
        if recompute and images.device.type in _RandomState.DEVICE_TYPES
        else None
    )
    with section("augmented_forward"):
        augmented: Tensor | None = augment_for_hyper_step(
            policy, images, normalize=normalize, cutout_size=cutout_size, generator=generator
        )
        inputs = augmented.detach().requires_grad_(True)
    if replay is not None:
        augmented = None
    if not recompute:
        pieces = _whole_batch(net, inputs, labels, params, section)
    else:
        pieces = _chunked(net, inputs, labels, params, chunks, section)
    try:
        with section("validation_gradient"):
            val_loss, val_grads = _validation_gradient(net, normalize(val_images), val_labels, params)
        hypergrad = tuple(torch.zeros_like(h) for h in hparams)
        if pieces.hvp is not None and hparams:
            operator = _HessianOperator.apply(counted(pieces.hvp), pieces.network_grads, *params)
            with section("inverse_hvp_overhead"):
                solution = _inverse_hvp(
                    operator, params, val_grads, method=method, alpha=alpha, steps=steps, tol=tol, info=info
                )
            del operator
            if info.hvps != performed["hvps"]:
                raise RuntimeError(
                    f"internal error: {performed['hvps']} HVPs performed but {info.hvps} reported."
                )
            del val_grads
            with section("mixed_derivative"):
                input_product = pieces.mixed(solution)
                del solution
                if replay is not None:
                    augmented = replay.rerun(
                        lambda: augment_for_hyper_step(
                            policy, images, normalize=normalize, cutout_size=cutout_size, generator=generator
                        ),
                        inputs,
                    )
                products = torch.autograd.grad(
                    augmented, hparams, grad_outputs=input_product, allow_unused=True
                )
                hypergrad = tuple(
                    torch.zeros_like(h) if m is None else -m.detach()
                    for m, h in zip(products, hparams, strict=True)
                )
    finally:
        if pieces.snapshot is not None:
            with section("restore_buffers"):
                pieces.snapshot.restore()
    if timer is not None and "inverse_hvp_overhead" in timer.times:
        timer.times["inverse_hvp_overhead"] -= performed["seconds"]
    return HyperStepResult(
        hypergrad=hypergrad,
        network_grads=pieces.network_grads,
        train_loss=pieces.train_loss,
        val_loss=val_loss,
        info=info,
        timings=dict(timer.times) if timer is not None else {},
    )


@contextlib.contextmanager
def _no_section(name: str) -> Iterator[None]:
    """Stand-in for :meth:`StepTimer.section` when not timing: no clock, no sync."""
    yield
