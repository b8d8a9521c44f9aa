"""Aligned-MTL, written against LibMTL 1.1.5's ``AbsWeighting``.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task Learning", CVPR 2023.
"""

from __future__ import annotations

from typing import Any

import torch

from dataclasses import dataclass

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["Aligned_MTL", "ALIGNED_MTL_DEFAULTS", "aligned_weights"]

@dataclass(frozen=True)
class AlignedMTLOptions:
    """Aligned-MTL's options; see :class:`Aligned_MTL`."""

    Aligned_tol: float | None = None


ALIGNED_MTL_DEFAULTS: dict[str, Any] = options_table(AlignedMTLOptions)[0]


def aligned_weights(grads: torch.Tensor, tol: float | None = None,
                    task_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Aligned-MTL task weights ``B w`` for the gradient matrix ``grads`` [task_num, n] (on its device).

    ``M = G G^T = V diag(lambda) V^T``; eigenvalues ``<= tol * lambda_max`` are dropped (rank truncation);
    ``B = sqrt(lambda_R) V_R diag(lambda_R)^{-1/2} V_R^T`` with ``lambda_R`` the smallest kept eigenvalue.
    ``tol=None`` uses ``task_num * eps(grads.dtype)``, the usual numerical-rank rule (Gram entries carry the
    gradients' rounding). B is symmetric, so ``B^T w = B w``.
    """
    task_num = grads.shape[0]
    gram = grads @ grads.t()
    if tol is None:
        tol = task_num * torch.finfo(grads.dtype).eps
    # The eigendecomposition of the tiny Gram matrix in float64, on the gradients' device.
    evals, evecs = torch.linalg.eigh(gram.double())
    keep = evals > tol * evals.max().clamp(min=0)
    evals_kept = torch.where(keep, evals, torch.zeros_like(evals))
    lam_min = torch.where(keep, evals, torch.full_like(evals, float("inf"))).min()
    lam_min = torch.where(torch.isfinite(lam_min), lam_min, torch.zeros_like(lam_min))  # all-zero gradients
    inv_sqrt = torch.where(keep, evals_kept.clamp(min=torch.finfo(torch.float64).tiny).rsqrt(),
                           torch.zeros_like(evals))
    balance = lam_min.sqrt() * (evecs * inv_sqrt) @ evecs.t()
    if task_weights is None:
        task_weights = torch.ones(task_num, dtype=torch.float64, device=grads.device)
    return (balance @ task_weights.to(balance.dtype)).to(grads.dtype)


@WEIGHTINGS.register("Aligned-MTL", options=AlignedMTLOptions, library="mtlbench", gradients=True,
                     conic=False,
                     reference="Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023",
                     summary="aligns task gradients' principal components (written here)")
class Aligned_MTL(AbsWeighting):
    r"""Aligned-MTL: align the principal components of the task gradients so they have equal magnitude.

    Senushkin, Patakin, Kuznetsov & Konushin, *Independent Component Alignment for Multi-Task Learning*, CVPR 2023,
    Algorithm 1. With G the [task_num, grad_dim] task gradients of the shared parameters and
    ``G G^T = V diag(lambda) V^T``, the balance matrix ``B = sqrt(lambda_min) V diag(lambda)^{-1/2} V^T`` makes the
    aligned gradients (rows of ``B G``) orthogonal with equal norms ``sqrt(lambda_min)`` (the condition number of
    the aligned system is 1); the update is their sum, i.e. the task weights are ``w = B 1`` and the shared
    gradient is ``sum_i w_i g_i``. Every task then has the same projection ``lambda_min`` of the update onto its
    aligned gradient.

    Args (keywords of ``backward``, defaults in :data:`ALIGNED_MTL_DEFAULTS`):
        Aligned_tol (None): eigenvalues ``<= Aligned_tol * lambda_max`` count as zero and are dropped (and
            lambda_min is the smallest kept one). None: ``task_num * eps`` of the gradients' dtype (about 2.4e-7
            for two float32 tasks), the usual numerical-rank tolerance.

    With ``rep_grad=True`` the same weights are computed from the representation gradients (the paper's
    Aligned-MTL-UB variant) and applied there. Task-specific parameters keep their plain task gradients (LibMTL's
    convention). Stateless. Returns ``w`` (a detached tensor of length task_num on the gradients' device).
    """

    def __init__(self) -> None:
        super().__init__()

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tol = kwargs.get("Aligned_tol", ALIGNED_MTL_DEFAULTS["Aligned_tol"])
        grads = self._get_grads(losses, mode="backward")
        if self.rep_grad:
            per_grads, grads = grads[0], grads[1]
            weights = aligned_weights(grads, tol)
            self._backward_new_grads(weights, per_grads=per_grads)
        else:
            weights = aligned_weights(grads, tol)
            self._backward_new_grads(weights, grads=grads)
        return weights.detach()
