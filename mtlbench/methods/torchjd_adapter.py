"""LibMTL-style weightings backed by :mod:`torchjd.aggregation` weightings.

A torchjd ``Weighting`` maps a statistic of the [task_num, grad_dim] gradient matrix G (its Gramian ``G G^T`` for
the Gramian weightings, G itself for the others) to a vector of task weights. :class:`TorchJDWeighting` turns one
into a LibMTL ``AbsWeighting``: ``backward`` takes the per-task gradients of the shared parameters (or, with
``rep_grad``, of the shared representation), asks the torchjd weighting for ``w`` and back-propagates ``sum_i w_i g_i``.

torchjd's default dual-cone projector (UPGrad, DualProj) needs the optional ``quadprog``/``qpsolvers`` packages;
:class:`TorchDualConeProjector` solves the same quadratic program in torch, on the Gramian's device, and is used
instead.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torchjd.aggregation import Weighting
from torchjd.linalg import DualConeProjector

from mtlbench.libmtl_compat import AbsWeighting

__all__ = ["TorchJDWeighting", "TorchDualConeProjector", "gramian_of"]


def gramian_of(grads: torch.Tensor) -> torch.Tensor:
    """``G G^T`` of the [task_num, n] matrix ``grads``, on its device."""
    return grads @ grads.t()


class TorchDualConeProjector(DualConeProjector):
    r"""torchjd's dual-cone projection, solved exactly in torch (no quadprog, no host round trip).

    For each row ``u`` of ``U``: ``argmin_v v^T G v`` subject to ``v >= u`` (Proposition 1 of Quinton & Rey,
    arXiv:2406.16232), after the same preprocessing as torchjd's ``QuadprogProjector``: G is divided by its trace
    (zero when the trace is below ``norm_eps``) and ``reg_eps * I`` is added, so the problem is strictly convex.
    With ``v = u + s, s >= 0`` every candidate active set F gives ``s_F = -(G_FF)^{-1} (G u)_F``; the minimiser is
    the feasible candidate of least objective. All ``2^m`` sets are solved in one batch (m is the task count,
    small in MTL), in float64.
    """

    def __init__(self, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> None:
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError("norm_eps and reg_eps must be non-negative")
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        out_dtype = G.dtype
        G = G.double()
        m = G.shape[0]
        trace = G.diagonal().sum()
        G = torch.where(trace < self.norm_eps, torch.zeros_like(G), G / trace)
        G = G + self.reg_eps * torch.eye(m, dtype=G.dtype, device=G.device)
        masks = torch.tensor(list(itertools.product((0.0, 1.0), repeat=m)), dtype=G.dtype, device=G.device)  # [S, m]
        eye = torch.eye(m, dtype=G.dtype, device=G.device)
        # Restricted systems padded with the identity outside F: [S, m, m].
        A = masks[:, :, None] * G[None] * masks[:, None, :] + eye[None] * (1.0 - masks)[:, :, None]
        flat = U.double().reshape(-1, m)  # [B, m]
        Gu = flat @ G  # [B, m] (G symmetric)
        b = -(masks[None] * Gu[:, None, :])  # [B, S, m]
        # Pseudo-inverse: with reg_eps=0 a restricted Gramian may be singular; its system stays consistent
        # ((G u)_F lies in the range of G_FF for a PSD G), and pinv gives one of its solutions.
        s = torch.einsum("sij,bsj->bsi", torch.linalg.pinv(A, hermitian=True), b)  # [B, S, m]
        s = s * masks[None]
        feasible = (s >= -1e-10).all(dim=-1)  # the empty set (s = 0) always is
        obj = torch.einsum("bsi,ij,bsj->bs", s, G, s) + 2.0 * (s * Gu[:, None, :]).sum(-1)
        obj = torch.where(feasible, obj, torch.full_like(obj, float("inf")))
        best = obj.argmin(dim=1)
        s_best = s[torch.arange(flat.shape[0], device=G.device), best].clamp(min=0.0)
        return (flat + s_best).reshape(U.shape).to(out_dtype)


class TorchJDWeighting(AbsWeighting):
    """Base class: a LibMTL weighting whose task weights come from a :mod:`torchjd.aggregation` weighting.

    Subclasses set :attr:`GRAMIAN` (whether the torchjd weighting takes the Gramian ``G G^T`` rather than G) and
    override :meth:`make_weighting`, which builds the torchjd weighting from the options (``backward``'s keyword
    arguments, merged over :attr:`DEFAULTS`). It is built once per model, on the first ``backward``, and kept, so
    stateful weightings (e.g. CR-MOGM's moving average) carry their state across steps. The weights are computed
    on the gradients' device; the adapter itself never moves data to the host. With ``rep_grad=True`` the weights
    come from the representation gradients and are applied there (as Aligned-MTL does here). Returns ``w``
    detached, a tensor of length task_num.
    """

    #: Whether the torchjd weighting takes the Gramian (True) or the gradient matrix itself (False).
    GRAMIAN: ClassVar[bool] = True
    #: The options' defaults (set by subclasses from their options dataclass).
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        """The torchjd weighting for these options."""
        raise NotImplementedError

    def torchjd_weighting(self, **kwargs: Any) -> Weighting:
        """The model's torchjd weighting, built from ``kwargs`` on first use (kept out of the module tree, so the
        model's ``state_dict`` does not change)."""
        weighting = self.__dict__.get("_torchjd_weighting")
        if weighting is None:
            weighting = self.make_weighting({**self.DEFAULTS, **kwargs})
            self.__dict__["_torchjd_weighting"] = weighting
        return weighting

    def weights_for(self, grads: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Task weights for the [task_num, n] gradient matrix ``grads``, on its device."""
        weighting = self.torchjd_weighting(**kwargs)
        with torch.no_grad():
            stat = gramian_of(grads) if self.GRAMIAN else grads
            weights = weighting(stat)
        return weights.to(device=grads.device, dtype=grads.dtype)

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        grads = self._get_grads(losses, mode="backward")
        if self.rep_grad:
            per_grads, grads = grads[0], grads[1]
            weights = self.weights_for(grads, **kwargs)
            self._backward_new_grads(weights, per_grads=per_grads)
        else:
            weights = self.weights_for(grads, **kwargs)
            self._backward_new_grads(weights, grads=grads)
        return weights.detach()
