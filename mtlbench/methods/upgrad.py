"""UPGrad, through torchjd's ``UPGradWeighting``.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024 (arXiv:2406.16232).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchjd.aggregation import UPGradWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchDualConeProjector, TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["UPGrad", "UPGradOptions", "UPGRAD_DEFAULTS"]


@dataclass(frozen=True)
class UPGradOptions:
    """UPGrad's options (LibMTL main's names and defaults, equal to torchjd's)."""

    #: The Gramian is divided by its trace (the squared Frobenius norm of G); below this it is taken as zero.
    UPGrad_norm_eps: float = 1e-4
    #: ``reg_eps * I`` is added to the normalised Gramian so the projection's quadratic program is strictly convex.
    UPGrad_reg_eps: float = 1e-4


UPGRAD_DEFAULTS: dict[str, Any] = options_table(UPGradOptions)[0]


@WEIGHTINGS.register("UPGrad", options=UPGradOptions, library="torchjd", gradients=True,
                     conic='the average of each task gradient projected onto the dual cone: nonnegative weights (torchjd)',
                     reference="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 "
                               "(arXiv:2406.16232)",
                     summary="projects each task gradient onto the dual cone of all of them and averages (torchjd)")
class UPGrad(TorchJDWeighting):
    r"""UPGrad (Unconflicting Projection of Gradients), Quinton & Rey, arXiv:2406.16232.

    Each task gradient ``g_i`` is projected onto the dual cone ``{x : G x >= 0}`` of the rows of G and the
    projections are averaged, so the update ``w^T G`` conflicts with no task (``G G^T w >= 0``). The weights come
    from torchjd's ``UPGradWeighting`` on the Gramian ``G G^T``, with the dual-cone quadratic program solved in torch
    on the gradients' device (:class:`~mtlbench.methods.torchjd_adapter.TorchDualConeProjector`) instead of
    torchjd's quadprog default; same problem, same preprocessing.

    Args (keywords of ``backward``, defaults in :data:`UPGRAD_DEFAULTS`): ``UPGrad_norm_eps`` (1e-4),
    ``UPGrad_reg_eps`` (1e-4), as in LibMTL main and torchjd. Stateless; supports ``rep_grad``.
    """

    DEFAULTS = UPGRAD_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        projector = TorchDualConeProjector(norm_eps=float(opts["UPGrad_norm_eps"]),
                                           reg_eps=float(opts["UPGrad_reg_eps"]))
        return UPGradWeighting(projector=projector)
