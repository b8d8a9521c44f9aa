"""IMTL (the hybrid IMTL-L + IMTL-G): LibMTL 1.1.5's algorithm, with its closed form computed from the Gramian.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021.
"""

from __future__ import annotations

from typing import Any

import torch

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.weightings import NoOptions

__all__ = ["IMTL", "imtl_weights"]


def imtl_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights ``alpha`` from the Gramian ``G G^T``: with ``u_k = g_k / |g_k|``, ``D`` the rows
    ``g_1 - g_k`` and ``U`` the rows ``u_1 - u_k`` (k >= 2), ``alpha_{2:} = g_1 U^T (D U^T)^{-1}`` and
    ``alpha_1 = 1 - sum alpha_{2:}`` (the paper's eq. 11). Every product is a Gramian entry:
    ``g_a . u_b = (G G^T)_{ab} / |g_b|``."""
    gn = gram / gram.diagonal().sqrt()[None, :]          # gn[a, b] = g_a . u_b
    g1_u = gn[0, 0] - gn[0, 1:]                           # g_1 . (u_1 - u_k)
    d_u = gn[0, 0] - gn[0, 1:][None, :] - gn[1:, 0:1] + gn[1:, 1:]   # (g_1 - g_k) . (u_1 - u_l)
    alpha = g1_u @ torch.linalg.inv(d_u)
    return torch.cat([(1 - alpha.sum()).unsqueeze(0), alpha])


@WEIGHTINGS.register("IMTL", options=NoOptions, library="mtlbench (LibMTL 1.1.5's IMTL, from the Gramian)",
                     gradients=True,
                     conic='with two tasks alpha_i = |g_j| / (|g_1| + |g_2|) > 0 (not promised for three or more '
                           'tasks)',
                     reference="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
                     summary="equal projections of the aggregate on each task gradient + learned loss scales")
class IMTL(libmtl_weighting.IMTL):
    """IMTL (Liu et al., ICLR 2021) exactly as LibMTL 1.1.5 runs it: the losses scaled by learned ``exp(s_i)`` minus
    ``s_i`` (IMTL-L), then the weights ``alpha`` whose aggregate ``alpha^T G`` has equal projections on every unit
    task gradient (IMTL-G). LibMTL builds the unit gradients and the differences D, U as [task_num, n] matrices; here
    ``alpha`` comes from the m x m Gramian (float64, on the device) and the update is one ``alpha^T G``. Equal to
    LibMTL's to float32 rounding; with ``rep_grad`` LibMTL's own code runs. Returns a device tensor."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> Any:
        if self.rep_grad:
            return super().backward(losses, **kwargs)
        losses = self.loss_scale.exp() * losses - self.loss_scale
        grads = self._get_grads(losses, mode="backward")
        alpha = imtl_weights((grads @ grads.t()).double()).to(grads.dtype)
        self._backward_new_grads(alpha, grads=grads)
        return alpha
