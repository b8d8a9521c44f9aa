"""FAMO (Fast Adaptive Multitask Optimization), written against LibMTL 1.1.5's ``AbsWeighting``.

Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023 (arXiv:2306.03792).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["FAMO", "FAMO_DEFAULTS", "famo_logit_gradient", "famo_loss_weights"]

W_OPTIMS = ("adam", "sgd")
_EPS = 1e-8                    # the paper's (and LibMTL main's) guard inside log(l_i - l_i^* + eps)
_ADAM_BETAS = (0.9, 0.999)     # torch.optim.Adam's defaults, which the official code and LibMTL main use
_ADAM_EPS = 1e-8


@dataclass(frozen=True)
class FAMOOptions:
    """FAMO's options (LibMTL main's names and defaults); see :class:`FAMO`."""

    FAMO_w_lr: float = 0.025       # beta: step size of the logits xi
    FAMO_w_gamma: float = 1e-3     # gamma: weight decay (l2 regularisation) of the logits
    FAMO_w_optim: str = field(default="adam", metadata={"choices": W_OPTIMS})


FAMO_DEFAULTS: dict[str, Any] = options_table(FAMOOptions)[0]


def _shifted(losses: torch.Tensor) -> torch.Tensor:
    """``l_i - l_i^* + eps`` with the lower bounds ``l_i^* = 0``, floored at eps (a negative loss would make the
    logarithm undefined; the paper assumes ``l_i > l_i^*``)."""
    return (losses.detach() + _EPS).clamp(min=_EPS)


def famo_loss_weights(logits: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """FAMO's loss weights ``w_i = c z_i / l_i`` with ``z = softmax(xi)`` and ``c = (sum_j z_j / l_j)^-1``: the
    gradient of ``c sum_i z_i log l_i`` is ``sum_i w_i grad l_i``, a convex combination (the weights sum to 1)."""
    dtype = torch.promote_types(logits.dtype, losses.dtype)
    z = torch.softmax(logits.to(dtype), dim=0)
    r = z / _shifted(losses).to(dtype)
    return r / r.sum()


def famo_logit_gradient(logits: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``J_z(xi)^T delta`` with ``z = softmax(xi)``: the gradient in xi of ``z^T delta``, in closed form
    ``z * (delta - z . delta)``."""
    z = torch.softmax(logits, dim=0)
    delta = delta.to(z.dtype)
    return z * (delta - (z * delta).sum())


@WEIGHTINGS.register("FAMO", options=FAMOOptions, library="mtlbench", gradients=False,
                     conic="loss weights c z_i / L_i with z = softmax(xi) > 0, c > 0 (they sum to 1)",
                     reference="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023 "
                               "(arXiv:2306.03792)",
                     summary="O(1) loss weighting: softmax logits follow the change of the log-losses (written here)")
class FAMO(AbsWeighting):
    r"""FAMO: loss weights from softmax logits xi that are updated so that every log-loss decreases at the same rate.

    Liu, Feng, Stone & Liu, *FAMO: Fast Adaptive Multitask Optimization*, NeurIPS 2023 (arXiv:2306.03792),
    Algorithm 1. With ``z = softmax(xi)`` and the losses ``l_i`` (lower bounds ``l_i^* = 0``, as in LibMTL main):

    - model update: back-propagate ``c sum_i z_i log(l_i + eps)`` with ``c = (sum_i z_i / (l_i + eps))^-1``
      held constant, i.e. the gradient ``sum_i w_i grad l_i`` with ``w_i = c z_i / (l_i + eps)`` (convex weights);
    - logit update: ``delta_i = log l_i(before) - log l_i(after)`` (how much each log-loss dropped over a step) and
      ``xi <- xi - beta (J_z(xi)^T delta + gamma xi)``: descending ``z^T delta`` moves weight away from the tasks
      whose log-loss dropped most, so a task whose loss dropped less gains weight.

    Timing (a divergence from the paper's order, forced by a loop that calls ``backward`` once per step): the paper
    updates xi right after the parameter step, with the losses of the same batch re-evaluated at the new
    parameters. Here the update happens at the start of the next ``backward``, from the stored log-losses of the
    previous step and the current step's: ``delta`` then compares two consecutive batches (no extra forward, and
    still O(1)), so it carries batch-to-batch noise besides the parameter step's effect. LibMTL main does *not* do
    this: its Trainer runs a second forward of the same batch after ``optimizer.step()`` and calls ``update_w``
    with those losses (the paper's order, one extra forward per step). The first step only weights (xi = 0,
    ``z = 1/k``); the logits first move at the second.

    The logit step: ``FAMO_w_optim = "adam"`` (default) is Adam with l2 weight decay gamma (gamma xi added to the
    gradient before Adam's moments; torch's default betas (0.9, 0.999) and eps 1e-8): the official implementation
    and LibMTL main. ``"sgd"`` is Algorithm 1's plain step ``xi <- xi - beta (J^T delta + gamma xi)``.

    Args (keywords of ``backward``, defaults in :data:`FAMO_DEFAULTS`):
        FAMO_w_lr (0.025): beta, the logits' step size.
        FAMO_w_gamma (0.001): gamma, the logits' weight decay.
        FAMO_w_optim ("adam"): ``adam`` (official code, LibMTL main) or ``sgd`` (Algorithm 1 as printed).

    State (plain attributes, saved by ``mtlbench.train.checkpoint.attribute_state``): ``famo_logits`` (xi),
    ``famo_prev_log_losses`` (the previous step's ``log(l + eps)``), ``famo_adam_m`` / ``famo_adam_v`` /
    ``famo_adam_t`` (Adam's moments and step count) and ``famo_step``.

    Returns the loss weights w (a detached tensor of length task_num on the losses' device, summing to 1; no host
    sync). Every parameter, shared or task-specific, gets the gradient of ``sum_i w_i l_i``.
    """

    def __init__(self) -> None:
        super().__init__()

    def init_param(self) -> None:
        self.famo_step = 0
        self.famo_logits: torch.Tensor | None = None
        self.famo_prev_log_losses: torch.Tensor | None = None
        self.famo_adam_m: torch.Tensor | None = None
        self.famo_adam_v: torch.Tensor | None = None
        self.famo_adam_t = 0

    def famo_update_logits(self, log_losses: torch.Tensor, **kwargs: Any) -> None:
        """One logit step from the stored previous log-losses to ``log_losses`` (no-op on the first step)."""
        opts = {**FAMO_DEFAULTS, **kwargs}
        if opts["FAMO_w_optim"] not in W_OPTIMS:
            raise ValueError(f"FAMO_w_optim must be one of {W_OPTIMS}, got {opts['FAMO_w_optim']!r}")
        prev, xi = self.famo_prev_log_losses, self.famo_logits
        if prev is None or xi is None or prev.shape != log_losses.shape:
            return
        lr, gamma = float(opts["FAMO_w_lr"]), float(opts["FAMO_w_gamma"])
        delta = prev.to(xi) - log_losses.to(xi)
        grad = famo_logit_gradient(xi, delta) + gamma * xi
        if opts["FAMO_w_optim"] == "sgd":
            self.famo_logits = xi - lr * grad
            return
        b1, b2 = _ADAM_BETAS
        if self.famo_adam_m is None or self.famo_adam_v is None or self.famo_adam_m.shape != xi.shape:
            self.famo_adam_m, self.famo_adam_v, self.famo_adam_t = torch.zeros_like(xi), torch.zeros_like(xi), 0
        self.famo_adam_t += 1
        t = self.famo_adam_t
        self.famo_adam_m = b1 * self.famo_adam_m.to(xi) + (1 - b1) * grad
        self.famo_adam_v = b2 * self.famo_adam_v.to(xi) + (1 - b2) * grad * grad
        m_hat = self.famo_adam_m / (1 - b1 ** t)
        v_hat = self.famo_adam_v / (1 - b2 ** t)
        self.famo_logits = xi - lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)

    def famo_weights(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Update the logits from the previous step's log-losses to these, store these, return the loss weights."""
        if not hasattr(self, "famo_step"):
            self.init_param()
        losses = losses.detach()
        log_losses = torch.log(_shifted(losses)).float()
        if self.famo_logits is None or self.famo_logits.shape != log_losses.shape:
            self.famo_logits = torch.zeros_like(log_losses)
            self.famo_prev_log_losses = None
            self.famo_adam_m = self.famo_adam_v = None
            self.famo_adam_t = 0
        self.famo_logits = self.famo_logits.to(log_losses.device)
        self.famo_update_logits(log_losses, **kwargs)
        self.famo_prev_log_losses = log_losses.clone()
        self.famo_step += 1
        return famo_loss_weights(self.famo_logits, losses)

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weights = self.famo_weights(losses, **kwargs)
        (weights.to(losses.dtype) * losses).sum().backward()
        return weights.detach().clone()
