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


@WEIGHTINGS.register("MoDo", options=MoDoOptions, library="torchjd", gradients=True, samples=3,
                     conic='projected-gradient weights on the simplex',
                     reference="Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning: "
                               "Optimization, Generalization and Conflict-Avoidance, NeurIPS 2023 / JMLR 2024 "
                               "(arXiv:2305.20057)",
                     summary="task weights by one projected SGD step per iteration on the MGDA objective, from "
                             "three batches a step (torchjd)")
class MoDo(TorchJDWeighting):
    r"""MoDo (multi-objective gradient with double sampling), Chen et al., NeurIPS 2023 / JMLR 2024 (arXiv:2305.20057).

    Each step draws three independent batches (as LibMTL main's trainer does for MoDo) and their per-task gradient
    matrices ``G_1, G_2, G_3``. The task weights follow one projected step on ``1/2 ||G^T lambda||^2 + rho/2
    ||lambda||^2`` with the double-sampled, unbiased estimate of its gradient: ``lambda <- Proj_simplex(lambda -
    gamma (G_1 G_2^T lambda + rho lambda))`` from ``lambda = 1/m``; the shared update is ``G_3^T lambda``.
    torchjd's ``MoDoWeighting`` on ``G_1 G_2^T``. As in LibMTL main, the decoders' gradients (summed over the three
    batches) are divided by 3; other task-specific parameters (MMoE's gates, MTAN's attention) keep the sum, as
    there. Called with losses [task_num] (one batch), the three samples are one and the matrix is ``G G^T``.

    Args (keywords of ``backward``, defaults in :data:`MODO_DEFAULTS`): ``MoDo_gamma`` (1e-3), ``MoDo_rho`` (0.1),
    LibMTL main's. Stateful: lambda lives in the model's torchjd weighting and is mirrored in the plain tensor
    attribute ``_modo_lambda``, so a checkpoint keeps it (a resumed model restores it into its fresh torchjd
    weighting). Three samples refuse ``rep_grad``, as LibMTL's MoDo does.
    """

    DEFAULTS = MODO_DEFAULTS
    SAMPLE_ROLES = (0, 1, 2)

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        return MoDoWeighting(gamma=float(opts["MoDo_gamma"]), rho=float(opts["MoDo_rho"]))

    def weigh(self, stat: torch.Tensor, like: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weighting = self.torchjd_weighting(**kwargs)
        lam = self.__dict__.get("_modo_lambda")
        if lam is not None:  # a checkpoint's lambda, or this model's own from the previous step
            weighting._lambda = lam
            weighting._state_key = (lam.shape[0], lam.dtype, lam.device)
        weights = super().weigh(stat, like, **kwargs)
        self._modo_lambda = weighting._lambda.detach().clone()
        return weights

    def reduce_sample_gradients(self, samples: int) -> None:
        # The shared update uses one sample; the decoders' gradients are averaged over all (LibMTL main's MoDo).
        for p in self.decoders.parameters():
            if p.grad is not None:
                p.grad.div_(samples)
