"""What the training loop trains for FastCAR: MSE on hybrid labels, and the inverse transform on the device."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.fastcar.transform import LabelTransform
from mtlbench.train.learners import autocast_for, forward_fn


class FastCARLearner:
    """FastCAR: a single-task regressor on hybrid labels; classes and targets come back by the inverse transform."""

    task_names = ("hybrid",)

    def __init__(self, module: nn.Module, transform: LabelTransform, *, amp: bool = False,
                 compile: bool = False) -> None:
        self.module = module
        self.forward = forward_fn(module, compile)
        self.transform = transform
        self.amp = amp
        self.device = next(module.parameters()).device
        self.constants = torch.tensor(transform.constants, dtype=torch.float32, device=self.device)
        ranges = torch.tensor(transform.ranges(), dtype=torch.float32, device=self.device)
        self.lo, self.hi = ranges[:, 0], ranges[:, 1]
        self.track_grad = False
        self._grad_sum = torch.zeros((), device=self.device)
        self._grad_steps = 0

    def hybrid(self, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (targets + self.constants[labels] - self.transform.centre) / self.transform.scale

    def inverse(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Device-side twin of :meth:`LabelTransform.inverse`."""
        p = pred.reshape(-1, 1)
        dist = (self.lo[None] - p).clamp(min=0) + (p - self.hi[None]).clamp(min=0)
        cls = dist.argmin(1)
        return cls, pred.reshape(-1) * self.transform.scale + self.transform.centre - self.constants[cls]

    def train_step(self, x, labels, targets):
        with autocast_for(self.device, self.amp):
            out = self.forward(x)
        loss = F.mse_loss(out.float().reshape(-1), self.hybrid(labels, targets))
        loss.backward()
        if self.track_grad:
            # The one-epoch test's statistic: mean |gradient| over every parameter element, averaged over steps.
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            total = sum(g.abs().sum() for g in grads)
            self._grad_sum = self._grad_sum + total / sum(g.numel() for g in grads)
            self._grad_steps += 1
        return loss.detach().reshape(1), None

    def mean_grad(self) -> float:
        return float(self._grad_sum) / max(self._grad_steps, 1)

    @torch.no_grad()
    def eval_batch(self, x, labels, targets):
        with autocast_for(self.device, self.amp):
            out = self.forward(x)
        out = out.float().reshape(-1)
        loss = F.mse_loss(out, self.hybrid(labels, targets), reduction="sum")
        cls, target = self.inverse(out)
        return loss, cls, target

    def start_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def end_epoch(self, epoch: int, mean_task_losses: np.ndarray) -> None:
        pass
