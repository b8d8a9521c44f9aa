"""SDMGrad (stochastic direction-oriented multi-objective gradient descent), through torchjd's
``SDMGradWeighting``.

Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms",
NeurIPS 2023 (arXiv:2305.18409).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchjd.aggregation import SDMGradWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["SDMGRAD_DEFAULTS", "SDMGrad", "SDMGradOptions"]


@dataclass(frozen=True)
class SDMGradOptions:
    """SDMGrad's options (LibMTL main's names and defaults; the inner solver's step size and momentum are fixed
    in LibMTL main and exposed here with its values)."""

    #: lambda: how strongly the update is pulled towards the average gradient (the preference direction);
    #: 0 is a stochastic MGDA, large values near the average gradient. LibMTL main's spelling and default (0.3).
    SDMGrad_lamda: float = 0.3
    #: Inner projected-SGD iterations on the task weights per step (LibMTL main: 20, as torchjd).
    SDMGrad_niter: int = 20
    #: Step size of the inner SGD (LibMTL main hard-codes 5; torchjd's default is 10).
    SDMGrad_lr: float = 5.0
    #: Momentum of the inner SGD, its velocity restarted every step (LibMTL main hard-codes 0.5, as torchjd).
    SDMGrad_momentum: float = 0.5


SDMGRAD_DEFAULTS: dict[str, Any] = options_table(SDMGradOptions)[0]


@WEIGHTINGS.register("SDMGrad", options=SDMGradOptions, library="torchjd", gradients=True, samples=3,
                     conic='(w + lambda / m) / (1 + lambda) with w on the simplex and lambda >= 0',
                     reference="Xiao, Ban & Ji, Direction-oriented Multi-objective Learning: Simple and Provable "
                               "Stochastic Algorithms, NeurIPS 2023 (arXiv:2305.18409)",
                     summary="MGDA-like weights regularised towards the average gradient, by inner projected SGD, "
                             "from three batches a step (torchjd)")
class SDMGrad(TorchJDWeighting):
    r"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023, arXiv:2305.18409, Algorithm 1).

    Each step draws three independent batches ``zeta, xi, xi'`` (as LibMTL main's trainer does for SDMGrad) and
    their per-task gradient matrices. The weights ``w`` on the simplex minimise ``1/2 w^T A w + lambda w^T A w~``
    with ``A = G_xi G_xi'^T`` (``w~ = 1/m``) by ``SDMGrad_niter`` steps of projected SGD with momentum,
    warm-started from the previous step's ``w``, on A divided by the squared mean of the square roots of its
    non-negative diagonal (as the official code, LibMTL and torchjd do). The update is ``G_zeta^T (w + lambda w~) /
    (1 + lambda)``: the returned weights are ``(w + lambda / m) / (1 + lambda)``. torchjd's ``SDMGradWeighting`` on
    ``G_xi G_xi'^T``. As in LibMTL main, task-specific parameters keep the sum of their three batches' gradients
    (MoDo divides the decoders' by 3). Called with losses [task_num] (one batch), the samples are one and the matrix
    is ``G G^T``. The inner solver uses momentum (official code, LibMTL, torchjd), which Algorithm 1 does not.

    Args (keywords of ``backward``, defaults in :data:`SDMGRAD_DEFAULTS`): ``SDMGrad_lamda`` (0.3),
    ``SDMGrad_niter`` (20), ``SDMGrad_lr`` (5.0), ``SDMGrad_momentum`` (0.5), all LibMTL main's. Stateful: ``w``
    lives in the model's torchjd weighting and is mirrored in the plain tensor attribute ``_sdmgrad_w``, so a
    checkpoint keeps it (a resumed model restores it into its fresh torchjd weighting). Three samples refuse
    ``rep_grad``, as LibMTL's SDMGrad does.
    """

    DEFAULTS = SDMGRAD_DEFAULTS
    # LibMTL main's order: the first batch (zeta) gives the update, the second and third (xi, xi') the matrix.
    SAMPLE_ROLES = (1, 2, 0)
    # LibMTL projects w onto the simplex in float64. When A's diagonal is all negative (two batches' gradients of
    # each task disagree), the normalisation divides by 1e-8 and w's iterates reach ~1e9: in float32 their
    # projection loses every digit and returns w = 0, off the simplex.
    SOLVE_DTYPE = torch.float64

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        return SDMGradWeighting(lr=float(opts["SDMGrad_lr"]), momentum=float(opts["SDMGrad_momentum"]),
                                n_iter=int(opts["SDMGrad_niter"]), lambda_=float(opts["SDMGrad_lamda"]))

    def weigh(self, stat: torch.Tensor, like: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weighting = self.torchjd_weighting(**kwargs)
        w = self.__dict__.get("_sdmgrad_w")
        if w is not None:  # a checkpoint's w, or this model's own from the previous step
            w = w.to(self.SOLVE_DTYPE)   # a checkpoint written before the float64 solve holds float32
            weighting._w = w
            weighting._state_key = (w.shape[0], w.dtype, w.device)
        weights = super().weigh(stat, like, **kwargs)
        self._sdmgrad_w = weighting._w.detach().clone()
        return weights
