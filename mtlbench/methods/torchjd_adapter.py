"""LibMTL-style weightings backed by :mod:`torchjd.aggregation` weightings.

A torchjd ``Weighting`` maps a statistic of the [task_num, grad_dim] gradient matrix G (its Gramian ``G G^T`` for
the Gramian weightings, G itself for the others) to a vector of task weights. :class:`TorchJDWeighting` turns one
into a LibMTL ``AbsWeighting``: ``backward`` takes the per-task gradients of the shared parameters (or, with
``rep_grad``, of the shared representation), asks the torchjd weighting for ``w`` and back-propagates ``sum_i w_i g_i``.
A weighting that needs independent gradient samples (MoDo, SDMGrad) takes a list of loss vectors, one per batch:
the torchjd weighting gets ``G_a G_b^T`` of two samples and the update follows a third, ``G_u^T w``.

torchjd's default dual-cone projector (UPGrad, DualProj) needs the optional ``quadprog``/``qpsolvers`` packages;
:class:`TorchDualConeProjector` solves the same quadratic program in torch, on the Gramian's device, and is used
instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torchjd.aggregation import Weighting
from torchjd.linalg import DualConeProjector

from mtlbench.errors import ConfigError
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
    #: For a weighting that takes independent gradient samples per step (the registry trait ``samples``): the
    #: samples (a, b) whose matrix ``G_a G_b^T`` the torchjd weighting gets, and the sample u the update ``G_u^T w``
    #: follows. None: one sample (losses [task_num]).
    SAMPLE_ROLES: ClassVar[tuple[int, int, int] | None] = None
    #: The dtype the torchjd weighting solves in (None: the gradients'); the weights come back in the gradients'.
    SOLVE_DTYPE: ClassVar[torch.dtype | None] = None

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

    def weigh(self, stat: torch.Tensor, like: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The torchjd weighting's weights for the statistic ``stat``, on ``like``'s device and dtype (stateful
        subclasses restore and mirror their state around this call)."""
        weighting = self.torchjd_weighting(**kwargs)
        with torch.no_grad():
            weights = weighting(stat if self.SOLVE_DTYPE is None else stat.to(self.SOLVE_DTYPE))
        return weights.to(device=like.device, dtype=like.dtype)

    def weights_for(self, grads: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Task weights for the [task_num, n] gradient matrix ``grads``, on its device."""
        with torch.no_grad():
            stat = gramian_of(grads) if self.GRAMIAN else grads
        return self.weigh(stat, grads, **kwargs)

    def weights_for_pair(self, grads_a: torch.Tensor, grads_b: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Task weights from two independent gradient samples [task_num, n]: the torchjd weighting gets
        ``G_a G_b^T`` (not symmetric in general), an unbiased estimate of the Gramian."""
        with torch.no_grad():
            stat = grads_a @ grads_b.t()
        return self.weigh(stat, grads_a, **kwargs)

    def reduce_sample_gradients(self, samples: int) -> None:
        """Called after the samples' backward passes, when every task-specific parameter holds the sum of its
        gradients over the samples. The default keeps the sum (LibMTL main's SDMGrad)."""

    def backward(self, losses: torch.Tensor | Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        if isinstance(losses, (list, tuple)):
            return self._backward_samples(losses, **kwargs)
        if losses.dim() != 1:
            # Rows of one stacked tensor share its graph: a backward from one row runs (with zeros) through every
            # sample's graph and frees them all.
            raise ConfigError(f"{type(self).__name__}: backward takes the task losses [{self.task_num}], or a list "
                              f"of them, one per gradient sample; got a tensor of shape {list(losses.shape)}")
        grads = self._get_grads(losses, mode="backward")
        if self.rep_grad:
            per_grads, grads = grads[0], grads[1]
            weights = self.weights_for(grads, **kwargs)
            self._backward_new_grads(weights, per_grads=per_grads)
        else:
            weights = self.weights_for(grads, **kwargs)
            self._backward_new_grads(weights, grads=grads)
        return weights.detach()

    def _backward_samples(self, losses: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """``losses``: one [task_num] loss vector per independent batch, each with its own graph. Each sample's
        per-task gradients of the shared parameters in turn (the task-specific parameters' accumulate over the
        samples), weights from ``G_a G_b^T``, update ``G_u^T w``."""
        name = type(self).__name__
        roles = self.SAMPLE_ROLES
        if roles is None:
            raise ConfigError(f"{name}: takes one batch per step (task losses [{self.task_num}]), got "
                              f"{len(losses)} samples")
        if len(losses) != max(roles) + 1:
            raise ConfigError(f"{name}: takes {max(roles) + 1} gradient samples per step, got {len(losses)}")
        if self.rep_grad:
            # LibMTL main refuses it too: the samples' representations differ, so their gradients cannot combine.
            raise ConfigError(f"{name}: gradient samples of several batches do not support representation "
                              f"gradients (rep_grad=True)")
        grads = [self._get_grads(sample, mode="backward") for sample in losses]
        self.reduce_sample_gradients(len(grads))
        a, b, u = roles
        weights = self.weights_for_pair(grads[a], grads[b], **kwargs)
        self._backward_new_grads(weights, grads=grads[u])
        return weights.detach()
