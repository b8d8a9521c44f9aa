"""DualProj, through torchjd's ``DualProjWeighting``.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232); the projection is
Equation 11 of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchjd.aggregation import DualProjWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchDualConeProjector, TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["DualProj", "DualProjOptions", "DUALPROJ_DEFAULTS"]


@dataclass(frozen=True)
class DualProjOptions:
    """DualProj's options (torchjd's defaults; LibMTL has no DualProj)."""

    #: The Gramian is divided by its trace (the squared Frobenius norm of G); below this it is taken as zero.
    DualProj_norm_eps: float = 1e-4
    #: ``reg_eps * I`` is added to the normalised Gramian so the projection's quadratic program is strictly convex.
    DualProj_reg_eps: float = 1e-4


DUALPROJ_DEFAULTS: dict[str, Any] = options_table(DualProjOptions)[0]


@WEIGHTINGS.register("DualProj", options=DualProjOptions, library="torchjd", gradients=True,
                     conic='the mean projected onto the dual cone: weights 1/m plus nonnegative dual variables (torchjd)',
                     reference="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 "
                               "(arXiv:2406.16232); Lopez-Paz & Ranzato, GEM, NeurIPS 2017 (Eq. 11)",
                     summary="projects the mean task gradient onto the dual cone of the task gradients (torchjd)")
class DualProj(TorchJDWeighting):
    r"""DualProj: the mean gradient ``1/m 1^T G`` projected onto the dual cone ``{x : G x >= 0}`` of the task
    gradients (GEM's Eq. 11, as an aggregator in Quinton & Rey, arXiv:2406.16232), so the update conflicts with no
    task. Weights from torchjd's ``DualProjWeighting`` on ``G G^T``, the quadratic program solved in torch on the
    gradients' device (:class:`~mtlbench.methods.torchjd_adapter.TorchDualConeProjector`).

    Args (keywords of ``backward``, defaults in :data:`DUALPROJ_DEFAULTS`): ``DualProj_norm_eps`` (1e-4),
    ``DualProj_reg_eps`` (1e-4), torchjd's. Stateless; supports ``rep_grad``.
    """

    DEFAULTS = DUALPROJ_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        projector = TorchDualConeProjector(norm_eps=float(opts["DualProj_norm_eps"]),
                                           reg_eps=float(opts["DualProj_reg_eps"]))
        return DualProjWeighting(projector=projector)
