"""Registry of loss weightings (17 grid entries: MGDA counts three times, one per gradient normalisation) with
their papers and the one table of default hyper-parameters (LibMTL's customary defaults)."""

from __future__ import annotations

from mtlbench.libmtl_compat import CAGrad, libmtl_weighting
from mtlbench.methods.aligned_mtl import ALIGNED_MTL_DEFAULTS, Aligned_MTL
from mtlbench.methods.moco import LAMBDA_UPDATES, MOCO_DEFAULTS, MoCo
from mtlbench.methods.nash_mtl import NASH_MTL_DEFAULTS, TASK_SPECIFIC_GRADS, Nash_MTL
from mtlbench.registry import Registry

WEIGHTINGS: Registry = Registry("weighting")
W = libmtl_weighting

# defaults: keyword arguments passed to ``backward``; the key ``rep_grad`` (not passed) says whether the weighting
# works on representation gradients (LibMTL's GradDrop requires it; all others use shared-parameter gradients).
# Every option a method reads must be here: specs are checked against these keys and types, and runs record them.
# The methods written here keep their table in their own file.
WEIGHTINGS.add("EW", W.EW, reference="equal weighting (uniform sum of task losses)", summary="sum of losses")
WEIGHTINGS.add("GradNorm", W.GradNorm, defaults={"alpha": 1.5},
               reference="Chen et al., GradNorm, ICML 2018", summary="balances gradient norms by training rates")
for gn in ("loss", "loss+", "l2"):
    # the normalisation is what tells the three apart: each entry accepts only its own
    WEIGHTINGS.add(f"MGDA-{gn}", W.MGDA, defaults={"mgda_gn": gn}, choices={"mgda_gn": (gn,)},
                   reference="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018",
                   summary=f"min-norm point of the task gradients, gradient normalisation '{gn}'")
WEIGHTINGS.add("UW", W.UW, reference="Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018",
               summary="learned homoscedastic uncertainty weights")
WEIGHTINGS.add("DWA", W.DWA, defaults={"T": 2.0},
               reference="Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019",
               summary="weights from the rate of change of each loss")
WEIGHTINGS.add("GLS", W.GLS, reference="Chennupati et al., MultiNet++, CVPR Workshops 2019",
               summary="geometric mean of the losses")
WEIGHTINGS.add("GradDrop", W.GradDrop, defaults={"leak": 0.0, "rep_grad": True},
               reference="Chen et al., Just Pick a Sign: Gradient Sign Dropout, NeurIPS 2020",
               summary="drops gradient signs by their consistency (on representation gradients)")
WEIGHTINGS.add("PCGrad", W.PCGrad, reference="Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020",
               summary="projects away conflicting gradient components")
WEIGHTINGS.add("GradVac", W.GradVac, defaults={"beta": 0.5},
               reference="Wang et al., Gradient Vaccine, ICLR 2021", summary="aligns gradient similarity to an EMA target")
WEIGHTINGS.add("IMTL", W.IMTL, reference="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
               summary="equal projections of the aggregate on each task gradient + learned loss scales")
WEIGHTINGS.add("CAGrad", CAGrad, defaults={"calpha": 0.5, "rescale": 1},
               reference="Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021",
               summary="maximises the worst local improvement near the average gradient")
WEIGHTINGS.add("Nash-MTL", Nash_MTL, defaults=NASH_MTL_DEFAULTS, choices={"task_specific_grads": TASK_SPECIFIC_GRADS},
               reference="Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022",
               summary="Nash bargaining solution of the task gradients (written here)")
WEIGHTINGS.add("RLW", W.RLW, defaults={"dist": "Normal"},
               choices={"dist": ("Uniform", "Normal", "Dirichlet", "Bernoulli", "constrained_Bernoulli")},
               reference="Lin et al., Reasonable Effectiveness of Random Weighting, TMLR 2022 (arXiv:2111.10603)",
               summary="random loss weights, softmax of a standard normal draw")
WEIGHTINGS.add("MoCo", MoCo, defaults=MOCO_DEFAULTS, choices={"MoCo_lambda_update": LAMBDA_UPDATES},
               reference="Fernando et al., Mitigating Gradient Bias in Multi-objective Learning, ICLR 2023",
               summary="tracked (momentum) gradients and projected weight updates (written here)")
WEIGHTINGS.add("Aligned-MTL", Aligned_MTL, defaults=ALIGNED_MTL_DEFAULTS,
               reference="Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023",
               summary="aligns task gradients' principal components (written here)")


def backward_kwargs(name: str, overrides: dict | None = None) -> tuple[dict, bool]:
    """(keyword arguments for ``model.backward``, whether the weighting needs representation gradients)."""
    params = {**WEIGHTINGS.entry(name).defaults, **(overrides or {})}
    rep_grad = bool(params.pop("rep_grad", False))
    return params, rep_grad
