"""GradNorm: LibMTL 1.1.5's algorithm, with its gradient norms taken once from the task gradients.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS

__all__ = ["GradNorm", "GradNormOptions"]


@dataclass(frozen=True)
class GradNormOptions:
    alpha: float = 1.5      # the restoring force's strength (paper: 1.5 for NYUv2)


@WEIGHTINGS.register("GradNorm", options=GradNormOptions,
                     library="mtlbench (LibMTL 1.1.5's GradNorm, norms taken once)", gradients=True,
                     conic='loss weights task_num * softmax(loss_scale) > 0 applied to the task gradients',
                     reference="Chen et al., GradNorm, ICML 2018",
                     summary="balances gradient norms by training rates")
class GradNorm(libmtl_weighting.GradNorm):
    """GradNorm (Chen et al., ICML 2018) exactly as LibMTL 1.1.5 runs it: equal weighting during epoch 0; from
    epoch 1 the loss weights are ``w = task_num * softmax(s)`` for learned ``s``, the update is ``w^T G``, and ``s``
    gets the gradient of ``sum_i |w_i |g_i| - mean_j(w_j |g_j|) r_i^alpha|``, with ``r_i`` the task's loss over its
    first epoch's mean loss, relative to the tasks' mean.

    LibMTL differentiates ``|w_i g_i|`` through a [task_num, n] product of the weights and the gradients, which
    costs about 15 times one read of G (forward, saved for backward, and the backward's own products). Since
    ``w_i > 0``, ``|w_i g_i| = w_i |g_i|``: here the norms ``|g_i|`` are read once and the rest runs on task_num
    numbers. The loss ratios are computed on the device, rounded to float32 as LibMTL's ``torch.Tensor`` is (LibMTL
    reads each loss with a host synchronisation). Equal to LibMTL's to float32 rounding; with ``rep_grad`` LibMTL's
    own code runs. Returns a device tensor."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> Any:
        if self.rep_grad:
            return super().backward(losses, **kwargs)
        if self.epoch < 1:   # LibMTL's first epoch: the plain sum of the losses
            losses.sum().backward()
            return torch.ones(self.task_num, device=losses.device)
        scale = self.task_num * F.softmax(self.loss_scale, dim=-1)
        grads = self._get_grads(losses, mode="backward")
        per_task = scale * grads.norm(dim=-1)                  # w_i |g_i|, differentiable in s only
        ratio = (losses.detach().double() / self._first_epoch_losses(losses.device)).float()
        ratio = ratio / ratio.mean()
        target = (per_task.mean(0) * ratio ** kwargs["alpha"]).detach()
        (per_task - target).abs().sum(0).backward()
        weights = scale.detach().clone()
        self._backward_new_grads(weights, grads=grads)
        return weights

    def _first_epoch_losses(self, device: torch.device) -> torch.Tensor:
        """The tasks' first-epoch mean losses (the loop's host buffer) on ``device``, copied again only when they
        change: a copy from the host to a GPU waits for the GPU's queue."""
        values = tuple(float(v) for v in self.train_loss_buffer[:, 0])
        cached = self.__dict__.get("_gradnorm_first")
        if cached is None or cached[0] != values or cached[1].device != device:
            cached = (values, torch.tensor(values, dtype=torch.float64, device=device))
            self._gradnorm_first = cached
        return cached[1]
