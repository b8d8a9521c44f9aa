"""MoDo (multi-objective gradient with double sampling), through torchjd's ``MoDoWeighting``.

Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance", NeurIPS 2023 / JMLR 2024 (arXiv:2305.20057).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchjd.aggregation import MoDoWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["MODO_DEFAULTS", "MoDo", "MoDoOptions"]


@dataclass(frozen=True)
class MoDoOptions:
    """MoDo's options (LibMTL main's names and defaults)."""

    #: Step size gamma of the projected-gradient update of the task weights lambda (LibMTL main: 1e-3;
    #: torchjd's default is 0.1).
    MoDo_gamma: float = 1e-3
    #: Coefficient rho of the l2 regulariser ``rho/2 ||lambda||^2`` in lambda's update (LibMTL main and torchjd: 0.1).
    MoDo_rho: float = 0.1


MODO_DEFAULTS: dict[str, Any] = options_table(MoDoOptions)[0]


@WEIGHTINGS.register("MoDo", options=MoDoOptions, library="torchjd", gradients=True,
                     conic='projected-gradient weights on the simplex',
                     reference="Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: "
                               "Optimization, Generalization and Conflict-Avoidance, NeurIPS 2023 / JMLR 2024 "
                               "(arXiv:2305.20057)",
                     summary="task weights by one projected SGD step per iteration on the MGDA objective (torchjd)")
class MoDo(TorchJDWeighting):
    r"""MoDo (multi-objective gradient with double sampling), Chen et al., NeurIPS 2023 / JMLR 2024 (arXiv:2305.20057).

    The task weights follow one projected step per iteration on ``1/2 ||G^T lambda||^2 + rho/2 ||lambda||^2``:
    ``lambda <- Proj_simplex(lambda - gamma (G_1 G_2^T lambda + rho lambda))`` from ``lambda = 1/m``, and the update is
    ``G_3^T lambda``. torchjd's ``MoDoWeighting`` on ``G G^T``.

    Divergence from the paper and LibMTL main (whose trainer draws three batches for MoDo): mtlbench's trainer draws
    one batch per step, so the three independent gradient samples ``G_1, G_2, G_3`` are the same G (the matrix is
    the Gramian ``G G^T``, and the decoders' gradients need no division by 3). That makes lambda's stochastic
    gradient biased, which the paper's double sampling avoids; a three-batch step would need a trainer change.

    Args (keywords of ``backward``, defaults in :data:`MODO_DEFAULTS`): ``MoDo_gamma`` (1e-3), ``MoDo_rho`` (0.1),
    LibMTL main's. Stateful: lambda lives in the model's torchjd weighting and is mirrored in the plain tensor
    attribute ``_modo_lambda``, so a checkpoint keeps it (a resumed model restores it into its fresh torchjd
    weighting). Supports ``rep_grad`` (LibMTL's MoDo rejects it).
    """

    DEFAULTS = MODO_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        return MoDoWeighting(gamma=float(opts["MoDo_gamma"]), rho=float(opts["MoDo_rho"]))

    def weights_for(self, grads: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weighting = self.torchjd_weighting(**kwargs)
        lam = self.__dict__.get("_modo_lambda")
        if lam is not None:  # a checkpoint's lambda, or this model's own from the previous step
            weighting._lambda = lam
            weighting._state_key = (lam.shape[0], lam.dtype, lam.device)
        weights = super().weights_for(grads, **kwargs)
        self._modo_lambda = weighting._lambda.detach().clone()
        return weights
