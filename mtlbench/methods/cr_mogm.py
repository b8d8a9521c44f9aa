"""CR-MOGM, through torchjd's ``CRMOGMWeighting`` (a moving average of another weighting's task weights).

Zhou, Zhang, Jiang, Hou, Yan & Li, "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and
Beyond", NeurIPS 2022.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from torchjd.aggregation import CRMOGMWeighting, DualProjWeighting, MGDAWeighting, UPGradWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchDualConeProjector, TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["CR_MOGM", "CRMOGMOptions", "CRMOGM_DEFAULTS"]


@dataclass(frozen=True)
class CRMOGMOptions:
    """CR-MOGM's options."""

    #: EMA coefficient on the previous weights, ``lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda_hat_k``
    #: (0: no smoothing, 1: frozen at the first step's weights); torchjd's default, fixed over training.
    CRMOGM_alpha: float = 0.9
    #: The weighting whose weights are smoothed: MGDA (the paper's main instance, torchjd's MGDA solver defaults),
    #: UPGrad or DualProj (with torchjd's 1e-4 norm/reg epsilons, the projection solved in torch).
    CRMOGM_base: str = field(default="MGDA", metadata={"choices": ("MGDA", "UPGrad", "DualProj")})


CRMOGM_DEFAULTS: dict[str, Any] = options_table(CRMOGMOptions)[0]


@WEIGHTINGS.register("CR-MOGM", options=CRMOGMOptions, library="torchjd", gradients=True,
                     conic="a moving average of the base weighting's (MGDA) simplex weights",
                     reference="Zhou et al., On the Convergence of Stochastic Multi-Objective Gradient Manipulation "
                               "and Beyond, NeurIPS 2022",
                     summary="exponential moving average of a gradient weighting's task weights (torchjd)")
class CR_MOGM(TorchJDWeighting):
    r"""CR-MOGM (Zhou et al., NeurIPS 2022): smooths the task weights of a gradient-manipulation method with an
    exponential moving average across steps, ``lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda_hat_k`` with
    ``lambda_0 = lambda_hat_1``, which makes the stochastic method convergent. torchjd's ``CRMOGMWeighting`` around
    the base weighting, on ``G G^T``.

    Args (keywords of ``backward``, defaults in :data:`CRMOGM_DEFAULTS`): ``CRMOGM_alpha`` (0.9, torchjd's default;
    the paper's Corollary 1 schedules alpha towards 1, here it is fixed), ``CRMOGM_base`` ("MGDA").
    Stateful: the average lives in the model's torchjd weighting, built on the first ``backward``, and is mirrored
    in the plain tensor attribute ``_crmogm_lambda`` so a checkpoint keeps it (a resumed model restores it into its
    fresh torchjd weighting). Supports ``rep_grad``.
    """

    DEFAULTS = CRMOGM_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        base = opts["CRMOGM_base"]
        if base == "MGDA":
            inner: Weighting = MGDAWeighting()
        elif base == "UPGrad":
            inner = UPGradWeighting(projector=TorchDualConeProjector())
        elif base == "DualProj":
            inner = DualProjWeighting(projector=TorchDualConeProjector())
        else:
            raise ValueError(f"CRMOGM_base must be one of 'MGDA', 'UPGrad', 'DualProj', got {base!r}")
        return CRMOGMWeighting(inner, alpha=float(opts["CRMOGM_alpha"]))

    def weights_for(self, grads: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weighting = self.torchjd_weighting(**kwargs)
        weighting._lambda = self.__dict__.get("_crmogm_lambda")  # None before the first step
        weights = super().weights_for(grads, **kwargs)
        self._crmogm_lambda = weighting._lambda.detach().clone()
        return weights
