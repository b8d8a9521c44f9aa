"""PCGrad: LibMTL 1.1.5's algorithm, computed from the Gramian of the task gradients.

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.weightings import NoOptions

__all__ = ["PCGrad", "pcgrad_weights"]


def pcgrad_weights(gram: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """PCGrad's combined gradient ``sum_i pc_i = w^T G`` as the weights ``w``, from the Gramian ``G G^T``.

    Every projected gradient stays a combination ``pc_i = C_i G`` of the task gradients, so each of LibMTL's dot
    products is ``pc_i . g_j = C_i (G G^T)_{:, j}``. ``orders[i]`` is the order in which task i is projected (LibMTL
    shuffles every task index, i included). Branch-free on the Gramian's device: no host synchronisation.
    """
    m = gram.shape[0]
    coef = torch.eye(m, dtype=gram.dtype, device=gram.device)
    for i, order in enumerate(orders):
        for j in order:
            g_ij = coef[i] @ gram[:, j]
            # A conflict (g_ij < 0) removes pc_i's component along g_j: C_ij -= g_ij / |g_j|^2.
            coef[i, j] -= torch.where(g_ij < 0, g_ij / gram[j, j], torch.zeros_like(g_ij))
    return coef.sum(0)


@WEIGHTINGS.register("PCGrad", options=NoOptions, library="mtlbench (LibMTL 1.1.5's PCGrad, from the Gramian)",
                     gradients=True,
                     conic='each projection subtracts g_ij / |g_j|^2 g_j with g_ij < 0: every coefficient only grows '
                           'from 1',
                     reference="Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020",
                     summary="projects away conflicting gradient components")
class PCGrad(libmtl_weighting.PCGrad):
    """PCGrad (Yu et al., NeurIPS 2020) exactly as LibMTL 1.1.5 runs it: for each task i, in a shuffled order of all
    tasks (``random.shuffle``, the same draws as LibMTL's), ``pc_i -= (pc_i . g_j) / |g_j|^2 g_j`` whenever
    ``pc_i . g_j < 0``; the update is ``sum_i pc_i`` and the returned weights are each task gradient's coefficient
    in it (LibMTL's ``batch_weight``). LibMTL runs it on [task_num, n] vectors with a host synchronisation per test;
    here the tests and coefficients run on the m x m Gramian (float64, on the device) and the update is one
    ``w^T G``. Equal to LibMTL's to float32 rounding; returns the weights as a device tensor."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.rep_grad:
            raise ValueError("No support method PCGrad with representation gradients (rep_grad=True)")
        self._compute_grad_dim()
        grads = self._compute_grad(losses, mode="backward")
        orders = []
        for _ in range(self.task_num):
            order = list(range(self.task_num))
            random.shuffle(order)
            orders.append(order)
        weights = pcgrad_weights((grads @ grads.t()).double(), orders).to(grads.dtype)
        self._reset_grad(weights @ grads)
        return weights
