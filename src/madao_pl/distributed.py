"""The few collectives MADAO does by hand under DDP (DESIGN.md §6).

DDP's reducer averages only gradients that go through ``backward``; the hyper step takes its gradients with
``torch.autograd.grad``, so they are averaged here, in one flat all-reduce, and the policy is kept out of
DDP's reducer (`kept_out_of_ddp`). Every collective is the identity (or a no-op) when ``torch.distributed``
is not initialised or has one process.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["broadcast_", "destroy_process_group_at_exit", "kept_out_of_ddp", "mean_over_ranks", "set_grads"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(*groups: Sequence[Tensor]) -> list[Tensor]:
    """Each group of tensors as one flat tensor, averaged over all ranks in a single all-reduce.

    Every rank must call it (never behind a rank-local condition). One process: the flat groups as they are.
    """
    sizes = [sum(t.numel() for t in group) for group in groups]
    flat = torch.cat([t.reshape(-1) for group in groups for t in group])
    world = _world_size()
    if world > 1:
        flat = flat.contiguous()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat / world
    return list(flat.split(sizes))


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (e.g. the policy at the start of fit)."""
    if _world_size() > 1:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=src)


def kept_out_of_ddp(policy: nn.Module, buffers: Iterable[str]) -> list[str]:
    """The names for a LightningModule's ``_ddp_params_and_buffers_to_ignore``: the parameters and buffers of
    its ``policy`` attribute (its gradient is the hypergradient, averaged by :func:`mean_over_ranks`, not by
    DDP's reducer), then the module's own ``buffers``."""
    return [
        *(f"policy.{name}" for name, _ in policy.named_parameters()),
        *(f"policy.{name}" for name, _ in policy.named_buffers()),
        *buffers,
    ]


def set_grads(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    """Give each parameter its slice of ``flat`` (in order) as its ``.grad``."""
    for p, piece in zip(params, torch.split(flat, [p.numel() for p in params]), strict=True):
        p.grad = piece.view_as(p).to(p.dtype).clone()


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy this process's default process group when it exits, whatever the backend (once per process).

    A gloo process that exits with its group alive aborts now and then (SIGABRT, "terminate called without
    an active exception": gloo's threads are torn down with the interpreter; pytorch/pytorch#190489), and a
    spawned rank that aborts fails the whole fit after the work is done. Lightning destroys the group at exit
    for NCCL only. A no-op when ``torch.distributed`` is not initialised.
    """
    if dist.is_available() and dist.is_initialized():
        atexit.unregister(_destroy_process_group)
        atexit.register(_destroy_process_group)
