"""FairGrad, through torchjd's ``FairGradWeighting``.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (arXiv:2402.15638).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchjd.aggregation import FairGradWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["FairGrad", "FairGradOptions", "FAIRGRAD_DEFAULTS"]


@dataclass(frozen=True)
class FairGradOptions:
    """FairGrad's options."""

    #: The alpha of alpha-fairness: 0 is equal weighting, 1 proportional fairness, large alpha nears max-min
    #: fairness. LibMTL main's default (torchjd's ``FairGradWeighting`` requires it, with no default).
    FairGrad_alpha: float = 1.0
    #: Most residual evaluations of scipy's ``least_squares``; None: scipy's default (100 * task_num).
    FairGrad_max_iters: int | None = None


FAIRGRAD_DEFAULTS: dict[str, Any] = options_table(FairGradOptions)[0]


@WEIGHTINGS.register("FairGrad", options=FairGradOptions, library="torchjd", gradients=True,
                     conic='w > 0 solves G G^T w = w^(-1/alpha)',
                     reference="Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024 "
                               "(arXiv:2402.15638)",
                     summary="alpha-fair task weights solving G G^T w = w^(-1/alpha) (torchjd)")
class FairGrad(TorchJDWeighting):
    r"""FairGrad, Ban & Ji, ICML 2024 (arXiv:2402.15638), Eq. 4 / Algorithm 1.

    The weights ``w > 0`` solve ``(G G^T w)_i = w_i^{-1/alpha}``: each task's rate of decrease along the update
    ``w^T G`` is an alpha-fair share. torchjd's ``FairGradWeighting`` solves it with scipy's bounded
    ``least_squares`` from ``w = 1/m`` (that solver runs on the host; torchjd moves the Gramian there and the weights
    back).

    Args (keywords of ``backward``, defaults in :data:`FAIRGRAD_DEFAULTS`): ``FairGrad_alpha`` (1.0, LibMTL main's
    default; torchjd has none), ``FairGrad_max_iters`` (None: scipy's default, as in LibMTL and torchjd).
    Stateless; supports ``rep_grad`` (LibMTL's FairGrad rejects it).
    """

    DEFAULTS = FAIRGRAD_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        max_iters = opts["FairGrad_max_iters"]
        return FairGradWeighting(alpha=float(opts["FairGrad_alpha"]),
                                 max_iters=None if max_iters is None else int(max_iters))
