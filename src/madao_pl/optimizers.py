"""The optimisers of `madao_pl.module.MADAOModule` (manual optimisation): the network's, with at most one LR
scheduler stepped per epoch, and the policy's, which exists only for a policy with trainable parameters.

Inner steps take the network's optimiser alone (``backward``'s gradients, averaged by DDP). A hyper step ends
with `OptimizerHooks.step_network_and_policy`: both optimisers step with flat gradients the hyper step
computed with ``torch.autograd.grad``, averaged over the ranks by hand
(`madao_pl.distributed.mean_over_ranks`); a non-finite hypergradient skips the policy's step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.profiler import record_function

from madao_pl.distributed import mean_over_ranks, set_grads
from madao_pl.hyperstep import trainable_parameters

__all__ = ["POLICY_OPTIMIZER", "OptimizerFactory", "OptimizerHooks", "SchedulerFactory", "step_with"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
POLICY_OPTIMIZER: OptimizerFactory = partial(torch.optim.RMSprop, lr=1e-2)
"""The policy's optimiser when none is given: the paper's RMSprop, lr 1e-2."""


def step_with(optimizer: Any, module: nn.Module, flat_grad: Tensor) -> None:
    """One step of ``optimizer`` with ``flat_grad`` as the gradient of ``module``'s trainable parameters."""
    optimizer.zero_grad()
    set_grads(trainable_parameters(module), flat_grad)
    optimizer.step()


class OptimizerHooks(pl.LightningModule):
    """``configure_optimizers``, the scheduler's step at each training epoch's end, and the optimiser steps
    that end a hyper step, for a LightningModule with manual optimisation.

    The subclass sets ``net`` and ``policy`` (modules), ``learns_policy`` (whether the policy gets an
    optimiser), and the factories ``optimizer_factory`` (the network's), ``scheduler_factory`` (None: no
    scheduler) and ``policy_optimizer_factory``, as `madao_pl.module.MADAOModule` does.
    """

    net: nn.Module
    policy: nn.Module
    optimizer_factory: OptimizerFactory
    scheduler_factory: SchedulerFactory | None
    policy_optimizer_factory: OptimizerFactory

    def configure_optimizers(self) -> Any:
        """``[network's, policy's]`` (the policy's only if it learns), each over its module's trainable
        parameters, and ``[the network's scheduler]`` (``[]`` without one)."""
        net_opt = self.optimizer_factory(trainable_parameters(self.net))
        optimizers = (
            [net_opt, self.policy_optimizer_factory(trainable_parameters(self.policy))]
            if self.learns_policy
            else [net_opt]
        )
        return optimizers, [] if self.scheduler_factory is None else [self.scheduler_factory(net_opt)]

    def on_train_epoch_end(self) -> None:
        """Step the network's LR scheduler, if there is one."""
        scheduler = self.lr_schedulers()  # configure_optimizers returns at most one
        if scheduler is not None:
            scheduler.step()

    def step_network_and_policy(
        self, network_grads: Sequence[Tensor], hypergrad: Sequence[Tensor]
    ) -> tuple[Tensor, bool]:
        """The end of a hyper step: average ``network_grads`` and ``hypergrad`` over the ranks, step the
        network and, if the hypergradient is finite, the policy. Returns the averaged flat hypergradient and
        whether it was finite (the same on every rank: it is the same tensor)."""
        with record_function("madao/optimizer_steps"):
            flat_network_grads, flat_hypergrad = mean_over_ranks(network_grads, hypergrad)
            net_opt, policy_opt = self._optimizers()
            step_with(net_opt, self.net, flat_network_grads)
            finite = bool(torch.isfinite(flat_hypergrad).all())
            if finite:
                step_with(policy_opt, self.policy, flat_hypergrad)
        return flat_hypergrad, finite

    def _optimizers(self) -> list[Any]:
        """``self.optimizers()`` as a list: the network's first (Lightning returns a lone one bare)."""
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]
