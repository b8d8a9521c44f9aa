"""The two method registries, filled by the method files themselves, and the rule that says when a cell applies.

A weighting registers with ``@WEIGHTINGS.register(name, options=<dataclass>, reference=..., summary=...,
library=..., gradients=..., rep_grad=...)`` in its own file; an architecture with ``@ARCHITECTURES.register(name,
options=..., shared=...)``. Every module of :mod:`mtlbench.methods` is imported by the package, so adding a
method is adding its file. Traits (keyword arguments beyond the entry's fields):

- weighting ``gradients`` (bool): it combines per-task gradients of the shared parameters (or of the shared
  representation), so it needs parameters that two or more tasks use; loss-level methods (EW, UW, DWA...) do not.
- weighting ``rep_grad`` (bool): it works on gradients of the shared representation (LibMTL's GradDrop).
- weighting ``samples`` (int, default 1): independent batches it needs per step (MoDo and SDMGrad: 3, as LibMTL
  main's trainer draws for them); its ``backward`` then takes a list of that many [task_num] loss vectors, one
  per batch.
- weighting ``conic`` (str or False): why the shared gradient it produces is a conic combination ``sum_i w_i g_i``
  (``w_i >= 0``) of the task gradients, or False where it promises none; ``tests/methods/test_contract.py`` checks
  the promise on every weighting that makes it.
- architecture ``shared`` (bool, default True): some parameters are used by two or more tasks.
- architecture ``branch_point`` (int): a TreeMTL tree model that branches after that many of the ResNet trunk's 5
  stages (Tree-b0 ... Tree-b4, and HPS as 5); its runs record their layout and backbone cost.
"""

from __future__ import annotations

from mtlbench.registry import Entry, Registry

#: The FastCAR paper's grid (sec. 4.1), in its figures' order: what ``"paper"`` selects in a sweep spec.
PAPER_ARCHITECTURES = ("HPS", "Cross_stitch", "MMoE", "MTAN", "CGC", "LTB")
PAPER_WEIGHTINGS = ("EW", "GradNorm", "MGDA-loss", "MGDA-loss+", "MGDA-l2", "UW", "DWA", "GLS", "GradDrop", "PCGrad",
                    "GradVac", "IMTL", "CAGrad", "Nash-MTL", "RLW", "MoCo", "Aligned-MTL")

ARCHITECTURES: Registry = Registry("architecture", groups={"paper": PAPER_ARCHITECTURES})
WEIGHTINGS: Registry = Registry("weighting", groups={"paper": PAPER_WEIGHTINGS})


def not_applicable(architecture: Entry, weighting: Entry) -> str | None:
    """Why ``weighting`` cannot train ``architecture`` (a cell recorded as not applicable), or None when it can."""
    if weighting.trait("gradients", False) and not architecture.trait("shared", True):
        return (f"{architecture.name} shares no parameters between tasks, and {weighting.name} combines per-task "
                f"gradients of shared parameters")
    return None
