"""MGDA with LibMTL 1.1.5's gradient normalisations (loss, loss+, l2), its normalised gradients taken from the
Gramian of the task gradients.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

import torch

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS

__all__ = ["MGDA", "gramian_root"]

NORMALISATIONS = ("loss", "loss+", "l2")


def gramian_root(gram: torch.Tensor) -> torch.Tensor:
    """A square matrix R with ``R R^T = gram`` (symmetric PSD; from its eigendecomposition, negative rounding
    eigenvalues clipped): whatever reads only ``R R^T`` of R sees the Gramian."""
    values, vectors = torch.linalg.eigh(gram)
    return vectors * values.clamp(min=0.0).sqrt()


class MGDA(libmtl_weighting.MGDA):
    """MGDA (Sener & Koltun, NeurIPS 2018) as LibMTL 1.1.5 runs it: each task gradient divided by its normaliser
    (``l2``: its norm; ``loss``: its loss; ``loss+``: both), the min-norm point ``sol`` of the normalised gradients
    by LibMTL's own Frank-Wolfe solver (the closed form for two tasks), the update ``sum_i sol_i g_i / gn_i``.
    LibMTL builds the normalised [task_num, n] matrix; the solver reads only its Gramian, so here it gets a square
    root of ``diag(1/gn) G G^T diag(1/gn)`` (m x m) and the update is one ``(sol / gn)^T G``. Returns ``sol`` (as
    LibMTL) as a device tensor; with ``rep_grad`` LibMTL's own code runs."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> Any:
        if self.rep_grad:
            return super().backward(losses, **kwargs)
        mgda_gn = kwargs["mgda_gn"]
        grads = self._get_grads(losses, mode="backward")
        gram = (grads @ grads.t()).double()
        norms = gram.diagonal().sqrt()
        loss_data = losses.detach().double()
        gn = {"l2": norms, "loss": loss_data, "loss+": loss_data * norms}.get(mgda_gn)
        if gn is None:
            raise ValueError(f"No support normalization type {mgda_gn} for MGDA")
        normalised = gram / (gn[:, None] * gn[None, :])
        sol = self._find_min_norm_element(gramian_root(normalised).to(grads.dtype))
        self._reset_grad((sol.double() / gn).to(grads.dtype) @ grads)
        return sol


def _mgda_options(gn: str) -> type:
    # the normalisation is what tells the three MGDA entries apart: each accepts only its own
    return make_dataclass(f"MGDAOptions_{gn.replace('+', 'plus')}",
                          [("mgda_gn", str, field(default=gn, metadata={"choices": (gn,)}))], frozen=True)


for _gn in NORMALISATIONS:
    WEIGHTINGS.add(f"MGDA-{_gn}", MGDA, options=_mgda_options(_gn),
                   library="mtlbench (LibMTL 1.1.5's MGDA and solver, from the Gramian)", gradients=True,
                   conic=f"min-norm point on the simplex of the task gradients, each divided by its positive "
                         f"'{_gn}' normaliser",
                   reference="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018",
                   summary=f"min-norm point of the task gradients, gradient normalisation '{_gn}'")
