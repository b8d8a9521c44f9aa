"""ExcessMTL, through torchjd's ``ExcessMTLWeighting``.

He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess Risks", ICML 2024
(arXiv:2402.02009).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchjd.aggregation import ExcessMTLWeighting, Weighting

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.methods.torchjd_adapter import TorchJDWeighting
from mtlbench.registry import options_table

__all__ = ["EXCESSMTL_DEFAULTS", "ExcessMTL", "ExcessMTLOptions"]


@dataclass(frozen=True)
class ExcessMTLOptions:
    """ExcessMTL's options."""

    #: Step size eta_alpha of the exponentiated-gradient update of the task weights (paper Eq. 9). LibMTL main's
    #: name and default (``--robust_step_size``, 1e-2; torchjd's default is 1.0).
    robust_step_size: float = 1e-2
    #: Steps whose excess risks only build the baseline (their mean) while the weights stay uniform. 1 is LibMTL
    #: main's (and the official code's) behaviour: the first step's excess risks are the baseline and the weights
    #: move from the second step on. 0 is torchjd's default (the first step already moves the weights, by the raw
    #: excess risks); the paper (App. C.1) collects statistics for 3 epochs. Not an option of LibMTL.
    ExcessMTL_warmup_steps: int = 1


EXCESSMTL_DEFAULTS: dict[str, Any] = options_table(ExcessMTLOptions)[0]


@WEIGHTINGS.register("ExcessMTL", options=ExcessMTLOptions, library="torchjd", gradients=True,
                     conic='exponentiated-gradient weights on the simplex',
                     reference="He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024 "
                               "(arXiv:2402.02009)",
                     summary="exponentiated-gradient task weights driven by estimated excess risks (torchjd)")
class ExcessMTL(TorchJDWeighting):
    r"""ExcessMTL (He et al., ICML 2024, arXiv:2402.02009).

    Each step estimates every task's excess risk by a second-order Taylor expansion with an AdaGrad-style diagonal
    Hessian, ``E_i = g_i^T diag(sqrt(sum_t g_{i,t}^2) + eps)^{-1} g_i`` (Eqs. 6-7), divides it by the task's
    baseline (scale processing, Sec. 3.2) and updates the weights by exponentiated gradient,
    ``alpha_i <- alpha_i exp(eta E_i) / sum_j alpha_j exp(eta E_j)`` (Eq. 9). The weights come from torchjd's
    ``ExcessMTLWeighting`` on the gradient matrix G itself.

    As in LibMTL main, the update is the gradient of the weighted loss ``sum_i alpha_i L_i`` through the whole model
    (the task-specific parts get ``alpha_i``-scaled gradients too), not the generic adapter's "shared parameters
    only" rewrite. It is assembled from the per-task backward passes the weights need (LibMTL runs a third pass).
    With ``rep_grad`` the weights come from the batch-summed representation gradients (as in LibMTL) and are
    applied there, the decoders keeping their unweighted task gradients.

    Divergence from LibMTL main, following the paper: the weights lie on the probability simplex (start at
    ``1/m``, sum to 1, Eq. 9 and torchjd), where LibMTL starts them at 1 and renormalises them to sum to the task
    count; the multiplicative update is the same, so the weights are LibMTL's divided by m (the shared
    parameters' step is m times smaller than LibMTL's at equal learning rate). The baseline division adds 1e-7
    (torchjd), LibMTL's does not.

    Args (keywords of ``backward``, defaults in :data:`EXCESSMTL_DEFAULTS`): ``robust_step_size`` (1e-2, LibMTL
    main), ``ExcessMTL_warmup_steps`` (1, LibMTL main's behaviour). Stateful: the accumulated squared gradients
    (task_num x number of shared parameters), the baseline, the weights and the step count live in the model's
    torchjd weighting and are mirrored in the plain dict attribute ``_excessmtl_state`` (tensors shared, not
    copied), so a checkpoint keeps them and a resumed model restores them into its fresh torchjd weighting.
    """

    GRAMIAN = False
    DEFAULTS = EXCESSMTL_DEFAULTS

    @classmethod
    def make_weighting(cls, opts: dict[str, Any]) -> Weighting:
        return ExcessMTLWeighting(robust_step_size=float(opts["robust_step_size"]),
                                  n_warmup_steps=int(opts["ExcessMTL_warmup_steps"]))

    def weights_for(self, grads: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        weighting = self.torchjd_weighting(**kwargs)
        state = self.__dict__.get("_excessmtl_state")
        if state is not None:  # a checkpoint's state, or this model's own from the previous step
            sq = state["sq_grad_sum"]
            weighting._sq_grad_sum = sq
            weighting._weights = state["weights"]
            weighting._initial_w = state["initial_w"]
            weighting._warmup_w_sum = state["warmup_w_sum"]
            weighting._n_steps = int(state["n_steps"])
            weighting._state_key = (sq.shape[0], sq.shape[1], sq.dtype, sq.device)
        weights = super().weights_for(grads, **kwargs)
        self._excessmtl_state = {"sq_grad_sum": weighting._sq_grad_sum, "weights": weighting._weights,
                                 "initial_w": weighting._initial_w, "warmup_w_sum": weighting._warmup_w_sum,
                                 "n_steps": int(weighting._n_steps)}
        return weights

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.rep_grad:
            return super().backward(losses, **kwargs)
        # The gradient of sum_i alpha_i L_i in the backward passes the weights need, one per task, instead of a
        # third pass through the whole model: each task's pass yields its row of G (the shared parameters) and
        # its gradients of every other parameter, kept apart until the weights are known.
        shared = {id(p) for p in self.get_share_params()}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in shared]
        before = [p.grad for p in others]   # the task-specific gradients add to these, as a plain backward does
        per_task: list[list[torch.Tensor | None]] = []

        def keep_task_gradients(tn: int) -> None:
            per_task.append([p.grad for p in others])
            for p in others:
                p.grad = None

        for p in others:   # each pass starts from none; the caller's come back below
            p.grad = None
        self._compute_grad_dim()
        grads = self._compute_grad(losses, mode="backward", after_task=keep_task_gradients)
        weights = self.weights_for(grads, **kwargs)
        self._backward_new_grads(weights, grads=grads)
        for j, p in enumerate(others):
            total = before[j]
            for tn in range(self.task_num):
                g = per_task[tn][j]
                if g is not None:
                    g = g.mul_(weights[tn].to(g.dtype))
                    total = g if total is None else total.add_(g)
            p.grad = total
        return weights.detach()
