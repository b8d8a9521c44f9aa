"""STCH (smooth Tchebycheff scalarisation), written against LibMTL 1.1.5's ``AbsWeighting``.

Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024
(arXiv:2402.19078).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["STCH", "STCH_DEFAULTS", "stch_softmax", "stch_terms"]

_LOG_EPS = 1e-20   # log(l_i / r_i + eps), LibMTL main's (and the authors' MTL code's) guard


@dataclass(frozen=True)
class STCHOptions:
    """STCH's options (LibMTL main's names and defaults, plus the paper's preference vector); see :class:`STCH`."""

    STCH_mu: float = 1.0               # mu: smoothing parameter (mu -> 0: the Tchebycheff max)
    STCH_warmup_epoch: int = 4         # epochs 0 .. W-1 warm up, epoch W also estimates the reference point
    STCH_pref: tuple[float, ...] = ()  # preference lambda_i >= 0; empty: all 1 (LibMTL main, the authors' code)


STCH_DEFAULTS: dict[str, Any] = options_table(STCHOptions)[0]


def _preference(pref: Sequence[float], task_num: int, like: torch.Tensor) -> torch.Tensor:
    if not pref:
        return torch.ones(task_num, dtype=like.dtype, device=like.device)
    if len(pref) != task_num:
        raise ValueError(f"STCH_pref has {len(pref)} entries for {task_num} tasks")
    if any(float(p) < 0 for p in pref):
        raise ValueError(f"STCH_pref must be nonnegative, got {list(pref)}")
    return torch.tensor([float(p) for p in pref], dtype=like.dtype, device=like.device)


def stch_terms(losses: torch.Tensor, reference: torch.Tensor, pref: torch.Tensor) -> torch.Tensor:
    """``u_i = lambda_i (f_i - z_i)`` with ``f_i = log l_i`` and ``z_i = log r_i`` (r: the reference losses), i.e.
    ``lambda_i log(l_i / r_i)``; differentiable in ``losses``."""
    return pref * torch.log(losses / reference.to(losses) + _LOG_EPS)


def stch_softmax(terms: torch.Tensor, mu: float) -> torch.Tensor:
    """``softmax(u / mu)``: the gradient of ``mu log sum_i exp(u_i / mu)`` is ``sum_i softmax(u / mu)_i grad u_i``.
    As mu -> 0 it tends to the indicator of ``argmax_i u_i`` (the Tchebycheff max's subgradient)."""
    return torch.softmax(terms.detach() / mu, dim=0)


@WEIGHTINGS.register("STCH", options=STCHOptions, library="mtlbench", gradients=False,
                     conic=("loss weights task_num softmax(u / mu)_i lambda_i / L_i >= 0 (warm-up: 1 / L_i), "
                            "lambda_i >= 0"),
                     reference="Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, "
                               "ICML 2024 (arXiv:2402.19078)",
                     summary="smooth Tchebycheff scalarisation of the log-losses after a warm-up (written here)")
class STCH(AbsWeighting):
    r"""STCH: minimise the smooth Tchebycheff scalarisation ``mu log sum_i exp(lambda_i (f_i - z_i) / mu)``.

    Lin, Zhang, Yang, Liu, Wang & Zhang, *Smooth Tchebycheff Scalarization for Multi-Objective Optimization*,
    ICML 2024 (arXiv:2402.19078). The smooth Tchebycheff function (the paper's eq. for ``g_mu^STCH``) is a smooth
    upper bound of the Tchebycheff max ``max_i lambda_i (f_i - z_i)`` that tends to it as mu -> 0; its gradient is
    ``sum_i p_i lambda_i grad f_i`` with ``p = softmax(lambda (f - z) / mu)``.

    For multi-task learning, as in the authors' MTL code and LibMTL main, the objectives are the log-losses
    ``f_i = log l_i`` and the reference point is ``z_i = log r_i``, ``r_i`` the mean training loss of task i over
    the last warm-up epoch (so ``f_i - z_i = log(l_i / r_i)``: scale-free, 0 at the warm-up level). Schedule, with
    W = ``STCH_warmup_epoch`` and LibMTL's 0-based epochs:

    - epochs 0 .. W-1: warm-up, the sum of the log-losses ``sum_i log l_i`` (loss weights ``1 / l_i``);
    - epoch W: the same loss, and every step's losses are accumulated into ``r``;
    - epochs W+1 ...: ``task_num * mu log sum_i exp(lambda_i log(l_i / r_i) / mu)``; the factor task_num (LibMTL
      main, the authors' code) keeps the gradient's scale that of a sum of task_num terms (the softmax sums to 1).
      Should that epoch have had no step (a run resumed past it), the first STCH step's losses become ``r``.

    The paper's ``z`` is an ideal point (a lower bound of the objectives); LibMTL main calls ``r`` the nadir vector.
    Neither changes the formula; the paper's guarantees (Pareto optimality for exact optimisation) are stated for an
    ideal point, while the mean warm-up loss is what the authors' MTL experiments use: mtlbench follows them. The
    paper's preference vector lambda, fixed to all ones in LibMTL main, is the option ``STCH_pref`` (default empty:
    all ones).

    Args (keywords of ``backward``, defaults in :data:`STCH_DEFAULTS`):
        STCH_mu (1.0): mu > 0, the smoothing.
        STCH_warmup_epoch (4): W above.
        STCH_pref (empty): lambda, task_num nonnegative numbers; empty means all ones.

    State (plain attributes, saved by ``attribute_state``): ``stch_loss_sum`` / ``stch_loss_count`` (the
    accumulation over epoch W) and ``stch_reference`` (r, once fixed).

    Returns the loss weights w (a detached tensor of length task_num on the losses' device): the gradient of every
    parameter is ``sum_i w_i grad l_i``, with ``w_i = task_num p_i lambda_i / l_i`` (warm-up: ``1 / l_i``).
    """

    def __init__(self) -> None:
        super().__init__()

    def init_param(self) -> None:
        self.stch_loss_sum: torch.Tensor | None = None
        self.stch_loss_count = 0
        self.stch_reference: torch.Tensor | None = None

    def stch_weights(self, losses: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, str]:
        """(loss weights w for these losses at the current epoch, phase: "warmup", "estimate" or "stch"); updates
        the state. The gradient to apply is ``sum_i w_i grad l_i``."""
        opts = {**STCH_DEFAULTS, **kwargs}
        mu, warmup = float(opts["STCH_mu"]), int(opts["STCH_warmup_epoch"])
        if not mu > 0:
            raise ValueError(f"STCH_mu must be positive, got {mu}")
        if not hasattr(self, "stch_loss_count"):
            self.init_param()
        values = losses.detach()
        task_num = values.shape[0]
        epoch = int(getattr(self, "epoch", 0) or 0)
        if epoch <= warmup:
            if epoch == warmup:
                total = self.stch_loss_sum
                self.stch_loss_sum = values.clone() if total is None else total.to(values) + values
                self.stch_loss_count += 1
            return 1.0 / (values + _LOG_EPS), ("warmup" if epoch < warmup else "estimate")
        if self.stch_reference is None:
            if self.stch_loss_count > 0 and self.stch_loss_sum is not None:
                self.stch_reference = self.stch_loss_sum / self.stch_loss_count
            else:
                self.stch_reference = values.clone()
        reference = self.stch_reference.to(values)
        pref = _preference(list(opts["STCH_pref"]), task_num, values)
        p = stch_softmax(stch_terms(values, reference, pref), mu)
        # d/dl_i of lambda_i log(l_i / r_i + eps) = lambda_i / (l_i + eps r_i)
        return task_num * p * pref / (values + _LOG_EPS * reference), "stch"

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weights, _ = self.stch_weights(losses, **kwargs)
        # sum_i w_i l_i (w detached) has the gradient of the scalarisation: task_num sum_i p_i lambda_i grad log l_i.
        (weights.detach() * losses).sum().backward()
        return weights.detach().clone()
