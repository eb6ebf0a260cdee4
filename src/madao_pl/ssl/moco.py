"""MoCo v2 (He et al. 2020; Chen et al. 2020) as a plain ``nn.Module``: the self-supervised task's network.

A query encoder (a classifier of `madao_pl.models` without its last linear layer) with lightly's MoCo
projection head, a momentum copy of both (the key encoder), a queue of negative keys and the InfoNCE loss.
Nothing here knows of Lightning or of the policy: :class:`madao_pl.ssl.MoCoModule` feeds it views.

From lightly: ``MoCoProjectionHead``, ``update_momentum`` and ``deactivate_requires_grad``. Written here:
the queue and InfoNCE, because lightly's ``MemoryBankModule`` keeps the bank and its pointer in
non-persistent buffers (a resumed run would restart from a random queue) and its ``NTXentLoss`` enqueues
whenever its input requires a gradient, which every evaluation of ``f`` inside a hyper step does (the queue
must stay constant there, and ``hyper.recompute`` evaluates ``f`` once per Hessian-vector product).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

__all__ = ["MoCo", "info_nce", "without_classifier"]


def info_nce(query: Tensor, key: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE loss, the mean over the batch of ``-log softmax([q.k, q.n_1, ..., q.n_N] / T)[0]``.

    Args:
        query: ``(B, D)`` L2-normalised query embeddings (carry the gradient).
        key: ``(B, D)`` L2-normalised keys, row ``i`` the positive of query ``i``.
        queue: ``(N, D)`` L2-normalised negatives.
        temperature: ``T`` > 0.
    """
    positive = (query * key).sum(dim=1, keepdim=True)
    logits = torch.cat([positive, query @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def without_classifier(net: nn.Module) -> tuple[nn.Module, int]:
    """``net`` with its last ``nn.Linear`` replaced by ``nn.Identity`` (in place), and that layer's input
    width: a classifier of `madao_pl.models` (or torchvision) becomes a feature encoder."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"backbone {type(net).__name__} has no nn.Linear classifier to remove")
    name, last = linears[-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return net, last.in_features


class MoCo(nn.Module):
    """Query encoder + projection head, their momentum copies, a queue of keys, and InfoNCE (MoCo v2).

    ``views`` ``(2B, C, H, W)`` are normalised images whose first half are the queries' views and second half
    the keys' views of the same ``B`` images. The key side is a constant: computed without a gradient, its
    weights moved only by :meth:`momentum_update`, the queue only by :meth:`enqueue`.

    Args:
        backbone: a classifier; its last linear layer is removed (:func:`without_classifier`).
        projection_dim, hidden_dim: the projection head's output and hidden widths (MoCo v2: 128, 2048).
        queue_size: ``N`` negative keys (MoCo: 65,536 on ImageNet), >= 1.
        temperature: InfoNCE's ``T`` (MoCo v2: 0.2), > 0.
        momentum: ``m`` of the key encoder's moving average, in [0, 1] (MoCo: 0.999).
    """

    def __init__(
        self,
        backbone: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        queue_size: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.999,
    ) -> None:
        super().__init__()
        for name, value in (
            ("projection_dim", projection_dim),
            ("hidden_dim", hidden_dim),
            ("queue_size", queue_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.encoder, self.feature_dim = without_classifier(backbone)
        self.head = MoCoProjectionHead(self.feature_dim, hidden_dim, projection_dim)
        self.key_encoder, self.key_head = copy.deepcopy(self.encoder), copy.deepcopy(self.head)
        deactivate_requires_grad(self.key_encoder)
        deactivate_requires_grad(self.key_head)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def forward(self, images: Tensor) -> Tensor:
        """Normalised images ``(B, C, H, W)`` -> the query encoder's features ``(B, feature_dim)``."""
        return self.encoder(images)

    def query(self, images: Tensor) -> Tensor:
        """L2-normalised query embeddings ``(B, projection_dim)``."""
        return F.normalize(self.head(self.encoder(images)), dim=1)

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """L2-normalised keys ``(B, projection_dim)`` of the momentum encoder (no gradient)."""
        return F.normalize(self.key_head(self.key_encoder(images)), dim=1)

    def contrastive(self, views: Tensor) -> tuple[Tensor, Tensor]:
        """InfoNCE of the queries' views against the keys' views and the queue, and the keys ``(B, D)``."""
        if len(views) % 2:
            raise ValueError(f"views must hold two views of each image (an even batch), got {len(views)}")
        queries, keys = views.chunk(2)
        key = self.key(keys)
        return info_nce(self.query(queries), key, self.queue, self.temperature), key

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key <- m key + (1 - m) query`` for the encoder's and the head's weights; the key encoder's
        BatchNorm statistics are its own, as in MoCo."""
        update_momentum(self.encoder, self.key_encoder, self.momentum)
        update_momentum(self.head, self.key_head, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` ``(n, D)`` into the queue in order from the pointer on, wrapping around (the oldest
        keys are replaced first); the pointer moves by ``n``."""
        size = len(self.queue)
        keys = keys[-size:]
        index = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % size
        self.queue.index_copy_(0, index, keys.to(self.queue.dtype))
        self.queue_pointer.copy_((self.queue_pointer + len(keys)) % size)
