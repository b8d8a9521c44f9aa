"""LibMTL 1.1.5's own weightings, registered with typed options (LibMTL's customary defaults). The methods written
here (Nash-MTL, MoCo, Aligned-MTL, CAGrad for any task count, GradNorm with its norms taken once, PCGrad, GradVac,
IMTL and MGDA computed from the Gramian, and the landscape's) register in their own files.

An entry's options are the keyword arguments its ``backward`` reads; specs are checked against them and runs record
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlbench.libmtl_compat import libmtl_weighting as W
from mtlbench.methods.registry import WEIGHTINGS

LIBMTL = "LibMTL 1.1.5"


@dataclass(frozen=True)
class NoOptions:
    """The method takes no options."""


@dataclass(frozen=True)
class DWAOptions:
    T: float = 2.0          # softmax temperature over the loss-change ratios


@dataclass(frozen=True)
class GradDropOptions:
    leak: float = 0.0       # fraction of the dropped gradient kept


RLW_DISTRIBUTIONS = ("Uniform", "Normal", "Dirichlet", "Bernoulli", "constrained_Bernoulli")


@dataclass(frozen=True)
class RLWOptions:
    dist: str = field(default="Normal", metadata={"choices": RLW_DISTRIBUTIONS})   # the weights' distribution


WEIGHTINGS.add("EW", W.EW, options=NoOptions, library=LIBMTL, gradients=False,
               conic='sum of the losses: w = 1',
               reference="equal weighting (uniform sum of task losses)", summary="sum of losses")
WEIGHTINGS.add("UW", W.UW, options=NoOptions, library=LIBMTL, gradients=False,
               conic='loss weights 1 / (2 exp(s_i)) > 0 (the log term does not touch the shared parameters)',
               reference="Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018",
               summary="learned homoscedastic uncertainty weights")
WEIGHTINGS.add("DWA", W.DWA, options=DWAOptions, library=LIBMTL, gradients=False,
               conic='loss weights task_num * softmax(loss ratios / T) > 0',
               reference="Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019",
               summary="weights from the rate of change of each loss")
WEIGHTINGS.add("GLS", W.GLS, options=NoOptions, library=LIBMTL, gradients=False,
               conic='gradient of (prod L_i)^(1/m): weights (prod L)^(1/m) / (m L_i) > 0 for positive losses',
               reference="Chennupati et al., MultiNet++, CVPR Workshops 2019", summary="geometric mean of the losses")
WEIGHTINGS.add("GradDrop", W.GradDrop, options=GradDropOptions, library=LIBMTL, gradients=True,
               conic=False, rep_grad=True,
               reference="Chen et al., Just Pick a Sign: Gradient Sign Dropout, NeurIPS 2020",
               summary="drops gradient signs by their consistency (on representation gradients)")
WEIGHTINGS.add("RLW", W.RLW, options=RLWOptions, library=LIBMTL, gradients=False,
               conic="loss weights softmax of a random draw (default dist 'Normal') > 0",
               reference="Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022 (arXiv:2111.10603)",
               summary="random loss weights, softmax of a standard normal draw")


def backward_kwargs(name: str, overrides: dict | None = None) -> tuple[dict[str, Any], bool]:
    """(keyword arguments for ``model.backward``, whether the weighting needs representation gradients)."""
    entry = WEIGHTINGS.entry(name)
    return {**entry.defaults, **(overrides or {})}, bool(entry.trait("rep_grad", False))
