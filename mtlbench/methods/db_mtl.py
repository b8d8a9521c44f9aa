"""DB-MTL (Dual-Balancing Multi-Task Learning), written against LibMTL 1.1.5's ``AbsWeighting``.

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, "Dual-Balancing for Multi-Task Learning", 2023 (arXiv:2308.12029).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["DB_MTL", "DB_MTL_DEFAULTS", "db_mtl_scales"]

_LOG_EPS = 1e-8    # log(l_i + eps): LibMTL main's guard against a zero loss
_NORM_EPS = 1e-8   # alpha_i = max_j ||g_j|| / (||g_i|| + eps): a zero tracked gradient gets a finite scale


@dataclass(frozen=True)
class DBMTLOptions:
    """DB-MTL's options (LibMTL main's names and defaults); see :class:`DB_MTL`."""

    DB_beta: float = 0.9          # beta: EMA rate of the tracked log-loss gradients
    DB_beta_sigma: float = 0.0    # sigma: beta_k = beta / k**sigma


DB_MTL_DEFAULTS: dict[str, Any] = options_table(DBMTLOptions)[0]


def db_mtl_scales(tracked: torch.Tensor) -> torch.Tensor:
    """``alpha_i = max_j ||g^_j|| / ||g^_i||`` for the tracked gradients ``tracked`` [task_num, n]: each
    ``alpha_i g^_i`` has the largest tracked norm (gradient-magnitude balancing)."""
    norms = tracked.norm(dim=1)
    return norms.max() / (norms + _NORM_EPS)


@WEIGHTINGS.register("DB-MTL", options=DBMTLOptions, library="mtlbench", gradients=True,
                     conic=("sum_i alpha_i g^_i with alpha_i = max_j |g^_j| / |g^_i| > 0; on the first step "
                            "g^_i = (1 - beta_1) g_i / L_i (later steps combine the tracked EMA gradients, not "
                            "the current ones)"),
                     reference="Lin et al., Dual-Balancing for Multi-Task Learning, 2023 (arXiv:2308.12029)",
                     summary="log-loss scale balancing + gradient norms equalised to the largest (written here)")
class DB_MTL(AbsWeighting):
    r"""DB-MTL: loss-scale balancing by log-transformed losses, gradient-magnitude balancing to the largest norm.

    Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok, *Dual-Balancing for Multi-Task Learning*, 2023
    (arXiv:2308.12029), Algorithm 1. At
    step k = 1, 2, ... with task losses ``l_i``:

    - loss-scale balancing: task i's gradient of the shared parameters is taken of ``log(l_i + eps)``, i.e.
      ``g_i = grad l_i / (l_i + eps)`` (invariant to rescaling a loss);
    - ``beta_k = DB_beta / k**DB_beta_sigma``; the tracked gradients ``g^_i <- beta_k g^_i + (1 - beta_k) g_i``
      (an EMA, started at ``g^_i = 0``);
    - gradient-magnitude balancing: ``alpha_i = max_j ||g^_j|| / ||g^_i||`` and the shared gradient
      ``sum_i alpha_i g^_i``: every task contributes a gradient of the same, largest, norm.

    Task-specific parameters get the gradient of ``log(l_i + eps)`` of their own task (the log transform applies to
    every parameter; the magnitude balancing only to the shared ones), as in LibMTL main. This follows LibMTL main
    throughout (names, defaults, the zero start of the EMA, ``eps = 1e-8``); no divergence from the paper is known.

    Args (keywords of ``backward``, defaults in :data:`DB_MTL_DEFAULTS`):
        DB_beta (0.9): beta, the EMA rate (1 keeps the zero start forever: no shared gradient).
        DB_beta_sigma (0.0): sigma, the decay of the EMA rate over steps.

    State (plain attributes, saved by ``attribute_state``): ``db_step`` (k) and ``db_grad_buffer`` (the tracked
    gradients, [task_num, grad_dim], on the gradients' device).

    Returns alpha (a detached tensor of length task_num on the gradients' device; no host sync): the scales applied
    to the tracked log-loss gradients, not weights of the current raw gradients. Representation gradients
    (``rep_grad=True``) are not supported: the tracked gradients need a fixed shape across batches.
    """

    def __init__(self) -> None:
        super().__init__()

    def init_param(self) -> None:
        self.db_step = 0
        self.db_grad_buffer: torch.Tensor | None = None

    def db_step_direction(self, grads: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One DB-MTL update from the log-loss gradients ``grads`` [task_num, n]: (shared direction, alpha)."""
        opts = {**DB_MTL_DEFAULTS, **kwargs}
        if not hasattr(self, "db_step"):
            self.init_param()
        if self.db_grad_buffer is None or self.db_grad_buffer.shape != grads.shape:
            self.db_grad_buffer = torch.zeros_like(grads)
            self.db_step = 0
        self.db_step += 1
        beta_k = float(opts["DB_beta"]) / float(self.db_step) ** float(opts["DB_beta_sigma"])
        buffer = self.db_grad_buffer.to(grads)
        self.db_grad_buffer = beta_k * buffer + (1.0 - beta_k) * grads
        alpha = db_mtl_scales(self.db_grad_buffer)
        return alpha @ self.db_grad_buffer, alpha

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.rep_grad:
            raise ValueError("DB-MTL does not support representation gradients (rep_grad must be False)")
        self._compute_grad_dim()
        grads = self._compute_grad(torch.log(losses + _LOG_EPS), mode="backward")  # [task_num, grad_dim]
        direction, alpha = self.db_step_direction(grads, **kwargs)
        self._reset_grad(direction)
        return alpha.detach().clone()
