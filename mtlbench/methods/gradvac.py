"""GradVac: LibMTL 1.1.5's algorithm, computed from the Gramian of the task gradients.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively
Multilingual Models", ICLR 2021.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS

__all__ = ["GradVac", "GradVacOptions", "gradvac_weights"]


@dataclass(frozen=True)
class GradVacOptions:
    beta: float = 0.5       # EMA rate of the target cosine similarity


def gradvac_weights(gram: torch.Tensor, orders: list[list[int]], rho_t: torch.Tensor, beta: float
                    ) -> torch.Tensor:
    """GradVac's combined gradient ``sum_i pc_i = w^T G`` as the weights ``w``, from the Gramian ``G G^T``; updates
    the EMA targets ``rho_t`` [m, m] in place.

    ``pc_i = C_i G`` throughout, so ``pc_i . g_j = C_i (G G^T)_{:, j}`` and ``|pc_i|^2 = C_i (G G^T) C_i^T``.
    ``orders[i]`` is the order of the other tasks for task i. Branch-free on the Gramian's device.
    """
    m = gram.shape[0]
    norms = gram.diagonal().sqrt()
    coef = torch.eye(m, dtype=gram.dtype, device=gram.device)
    for i, order in enumerate(orders):
        for j in order:
            pc_norm = (coef[i] @ gram @ coef[i]).sqrt()
            rho = (coef[i] @ gram[:, j]) / (pc_norm * norms[j])
            target = rho_t[i, j].to(gram.dtype)
            below = rho < target
            # Below the target similarity, add the multiple of g_j that lifts the cosine to it (paper eq. 5).
            w = pc_norm * (target * (1 - rho ** 2).sqrt() - rho * (1 - target ** 2).sqrt()) / (
                norms[j] * (1 - target ** 2).sqrt())
            coef[i, j] += torch.where(below, w, torch.zeros_like(w))
            # LibMTL 1.1.5 moves the target only when it adjusted the gradient.
            rho_t[i, j] = torch.where(below, (1 - beta) * target + beta * rho, target).to(rho_t.dtype)
    return coef.sum(0)


@WEIGHTINGS.register("GradVac", options=GradVacOptions, library="mtlbench (LibMTL 1.1.5's GradVac, from the Gramian)",
                     gradients=True,
                     conic='each adjustment adds a positive multiple of g_j (rho_ij < rho_T gives a positive '
                           'coefficient)',
                     reference="Wang et al., Gradient Vaccine, ICLR 2021",
                     summary="aligns gradient similarity to an EMA target")
class GradVac(libmtl_weighting.GradVac):
    """GradVac (Wang et al., ICLR 2021) exactly as LibMTL 1.1.5 runs it: for each task i, in a shuffled order of the
    other tasks (the same ``random.shuffle`` draws as LibMTL's), when the cosine ``rho_ij`` of ``pc_i`` and ``g_j`` is
    below its target ``rho_T[i, j]``, ``pc_i += w g_j`` lifts it to the target and the target moves to
    ``(1 - beta) rho_T + beta rho_ij``; the update is ``sum_i pc_i``, the returned weights each task gradient's
    coefficient in it. LibMTL runs it on [task_num, n] vectors with host synchronisations; here the tests and
    coefficients run on the m x m Gramian (float64, on the device) and the update is one ``w^T G``. Equal to LibMTL's
    to float32 rounding. State: ``rho_T`` (float32, on the device), as LibMTL's; returns a device tensor."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        beta = kwargs["beta"]
        if getattr(self, "rho_T", None) is None:
            self.rho_T = torch.zeros(self.task_num, self.task_num, device=self.device)
        if self.rep_grad:
            raise ValueError("No support method GradVac with representation gradients (rep_grad=True)")
        self._compute_grad_dim()
        grads = self._compute_grad(losses, mode="backward")
        orders = []
        for i in range(self.task_num):
            order = [j for j in range(self.task_num) if j != i]
            random.shuffle(order)
            orders.append(order)
        weights = gradvac_weights((grads @ grads.t()).double(), orders, self.rho_T, float(beta)).to(grads.dtype)
        self._reset_grad(weights @ grads)
        return weights
