"""Nash-MTL, written against LibMTL 1.1.5's ``AbsWeighting``.

Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022 (arXiv:2202.01017).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dataclasses import dataclass, field

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["Nash_MTL", "NASH_MTL_DEFAULTS", "nash_ccp_solve"]

TASK_SPECIFIC_GRADS = ("weighted", "plain")


@dataclass(frozen=True)
class NashMTLOptions:
    """Nash-MTL's options (LibMTL main's defaults); see :class:`Nash_MTL`."""

    update_weights_every: int = 1
    optim_niter: int = 20
    max_norm: float = 1.0
    task_specific_grads: str = field(default="weighted", metadata={"choices": TASK_SPECIFIC_GRADS})


NASH_MTL_DEFAULTS: dict[str, Any] = options_table(NashMTLOptions)[0]

# Stop the sequence of convex problems once every task satisfies alpha_i (M alpha)_i = 1 to this relative accuracy
# (scale-free form of G G^T alpha = 1/alpha), or once the iterate stops moving.
_FIXED_POINT_TOL = 1e-4
_STALL_TOL = 1e-7


class _CCPProblem:
    """One convex approximation of the bargaining problem, built once and re-solved with new parameters.

    For a (normalised) Gram matrix M, beta(alpha) = M alpha and phi_i(alpha) = log alpha_i + log beta_i(alpha)
    (concave). The paper solves  min_alpha sum_i beta_i(alpha) + phi(alpha)  s.t.  phi_i(alpha) >= 0, alpha > 0,
    replacing the concave phi = sum_i phi_i by its first-order expansion at the previous iterate alpha_t (a
    concave-convex procedure), so each problem is:  minimise q^T alpha  s.t.  log alpha_i + log (M alpha)_i >= 0,
    with q = M 1 + grad phi(alpha_t) (the objective's constant terms dropped).
    """

    def __init__(self, task_num: int) -> None:
        import cvxpy as cp

        self.cp = cp
        self.alpha = cp.Variable(task_num, nonneg=True)
        self.gram = cp.Parameter((task_num, task_num))
        self.q = cp.Parameter(task_num)
        beta = self.gram @ self.alpha
        constraints = [cp.log(self.alpha[i]) + cp.log(beta[i]) >= 0 for i in range(task_num)]
        self.problem = cp.Problem(cp.Minimize(self.q @ self.alpha), constraints)

    def solve(self, gram: np.ndarray, alpha_t: np.ndarray) -> np.ndarray | None:
        beta_t = gram @ alpha_t
        grad_phi = 1.0 / alpha_t
        # Linearise log beta_i only where it is defined (beta_t > 0, true at every feasible iterate); at an
        # infeasible warm start that term would make the linear objective unbounded below.
        if np.all(beta_t > 0):
            grad_phi = grad_phi + gram.T @ (1.0 / beta_t)
        self.gram.value = gram
        self.q.value = gram.sum(axis=0) + grad_phi
        try:
            self.problem.solve(solver=self.cp.CLARABEL)
        except (self.cp.error.SolverError, ValueError, ArithmeticError):
            return None
        value = self.alpha.value
        if self.problem.status not in ("optimal", "optimal_inaccurate") or value is None:
            return None
        if not np.all(np.isfinite(value)) or np.any(value <= 0):
            return None
        return np.asarray(value, dtype=np.float64)


def nash_ccp_solve(gram: np.ndarray, alpha0: np.ndarray, niter: int,
                   problem: _CCPProblem | None = None) -> tuple[np.ndarray, bool]:
    """Approximately solve ``gram @ alpha = 1 / alpha`` (alpha > 0) by at most ``niter`` convex approximations
    started at ``alpha0``; returns (alpha, whether the fixed point was reached). A failed solve keeps the last
    iterate."""
    problem = problem or _CCPProblem(gram.shape[0])
    alpha = np.asarray(alpha0, dtype=np.float64)
    for _ in range(niter):
        if _fixed_point_residual(gram, alpha) < _FIXED_POINT_TOL:
            return alpha, True
        new = problem.solve(gram, alpha)
        if new is None:
            break
        moved = np.linalg.norm(new - alpha)
        alpha = new
        if moved < _STALL_TOL:
            break
    return alpha, _fixed_point_residual(gram, alpha) < _FIXED_POINT_TOL


def _fixed_point_residual(gram: np.ndarray, alpha: np.ndarray) -> float:
    return float(np.max(np.abs(alpha * (gram @ alpha) - 1.0)))


@WEIGHTINGS.register("Nash-MTL", options=NashMTLOptions, library="mtlbench", gradients=True,
                     conic='alpha > 0 solves G G^T alpha = 1 / alpha; clipping scales it by a positive factor',
                     reference="Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022",
                     summary="Nash bargaining solution of the task gradients (written here)")
class Nash_MTL(AbsWeighting):
    r"""Nash-MTL: the task weights alpha of the Nash bargaining solution, ``G G^T alpha = 1 / alpha``, alpha > 0.

    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, *Multi-Task Learning as a Bargaining Game*,
    ICML 2022 (arXiv:2202.01017).

    G is the [task_num, grad_dim] matrix of the task gradients of the shared parameters. The equation is solved by
    the paper's sequence of convex approximations (cvxpy, Clarabel): see :class:`_CCPProblem`. The shared gradient
    is ``sum_i alpha_i g_i``. Task-specific parameters (decoders, per-task modules) get ``alpha_i`` times their task
    gradient by default: LibMTL main (and the paper's code) back-propagate ``sum_i alpha_i L_i``, so the paper's
    runs trained the decoders so; ``task_specific_grads = "plain"`` keeps them unweighted (mtlbench before 0.2).

    Numerical scale: the solver works on ``M~ = G G^T / s`` with ``s = ||G G^T||_F`` so its unknowns are O(1)
    whatever the gradients' magnitude. Its solution ``a`` satisfies ``M~ a = 1 / a``; the returned/applied weights
    are rescaled back, ``alpha = a / sqrt(s)``, which solves the unnormalised equation exactly. Hence the
    normalisation changes nothing but conditioning, and, as the paper's equation implies,
    ``||sum_i alpha_i g_i||^2 = alpha^T G G^T alpha = task_num`` before clipping. The warm start kept across steps
    is ``a`` (normalised scale), so it stays meaningful while gradient norms drift.

    Args (keywords of ``backward``, defaults in :data:`NASH_MTL_DEFAULTS`):
        update_weights_every (int, 1): solve for alpha every this many steps; in between reuse the last alpha
            (then the shared gradient is computed with one extra backward instead of one per task).
        optim_niter (int, 20): maximum number of convex approximations per solve (stops earlier once
            ``max_i |alpha_i (G G^T alpha)_i - 1| < 1e-4``).
        max_norm (float, 1.0): if > 0, the L2 norm of the combined shared-parameter gradient
            ``sum_i alpha_i g_i`` (all shared parameters together) is clipped to ``max_norm``; task-specific
            gradients are not clipped. The returned weights include the clipping factor.
        task_specific_grads (str, "weighted"): ``weighted`` (LibMTL main: ``alpha_i`` times task i's gradient, alpha
            before clipping) or ``plain`` (each task's own gradient, unweighted).

    State across steps: the step counter, the last normalised solution (warm start) and the last alpha. When G G^T
    is singular (e.g. a zero or two collinear task gradients) no exact solution exists: the last valid iterate
    is used.

    Returns the weights applied to the task gradients (a detached tensor of length task_num on the gradients'
    device; steps that reuse alpha need no host sync).
    """

    def __init__(self) -> None:
        super().__init__()

    def init_param(self) -> None:
        self._nash_step = 0
        self._nash_a: np.ndarray | None = None  # warm start, normalised scale
        self._nash_alpha: torch.Tensor | None = None  # last weights, true scale
        self._nash_problem: _CCPProblem | None = None
        self.nash_converged = False

    def _nash_weights(self, grads: torch.Tensor, niter: int) -> torch.Tensor:
        """alpha for the gradient matrix ``grads`` [task_num, n] (on its device); updates the warm start."""
        if getattr(self, "_nash_problem", None) is None:
            self._nash_problem = _CCPProblem(self.task_num)
        gram = (grads @ grads.t()).double()
        scale = torch.linalg.matrix_norm(gram)  # Frobenius
        # cvxpy needs the (task_num x task_num) problem on the host: one small transfer per solve.
        gram_np, scale_f = gram.cpu().numpy(), float(scale.cpu())
        a0 = self._nash_a if getattr(self, "_nash_a", None) is not None else np.ones(self.task_num)
        if not np.isfinite(scale_f) or scale_f <= 0:
            a, self.nash_converged = a0, False
        else:
            a, self.nash_converged = nash_ccp_solve(gram_np / scale_f, a0, niter, self._nash_problem)
            self._nash_a = a
        alpha = a / np.sqrt(scale_f) if scale_f > 0 else a
        return torch.as_tensor(alpha, dtype=grads.dtype, device=grads.device)

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        opts = {**NASH_MTL_DEFAULTS, **kwargs}
        every, niter, max_norm = int(opts["update_weights_every"]), int(opts["optim_niter"]), float(opts["max_norm"])
        if opts["task_specific_grads"] not in TASK_SPECIFIC_GRADS:
            raise ValueError(f"Nash-MTL task_specific_grads must be one of {TASK_SPECIFIC_GRADS}, "
                             f"got {opts['task_specific_grads']!r}")
        weighted = opts["task_specific_grads"] == "weighted"
        if not hasattr(self, "_nash_step"):
            self.init_param()
        update = self._nash_alpha is None or self._nash_step % every == 0
        self._nash_step += 1

        if update or self.rep_grad:
            # Weighted task-specific gradients need alpha first: per-task gradients of the shared parameters only
            # ("autograd" leaves every other .grad alone), then one backward of sum_i alpha_i L_i through the
            # task-specific parameters alone, which does not reach back into a shared trunk that precedes them.
            mode = "autograd" if weighted and not self.rep_grad else "backward"
            grads = self._get_grads(losses, mode=mode)
            per_grads = None
            if self.rep_grad:
                per_grads, grads = grads[0], grads[1]
            if update:
                self._nash_alpha = self._nash_weights(grads, niter)
            alpha = self._nash_alpha
            if self.rep_grad:
                self._backward_new_grads(alpha, per_grads=per_grads)
            else:
                self._backward_new_grads(alpha, grads=grads)
                if weighted:
                    self._weighted_task_specific_backward(alpha, losses)
        elif weighted:
            # Reuse alpha: one backward of sum_i alpha_i L_i gives every parameter its gradient at once.
            alpha = self._nash_alpha
            (alpha * losses).sum().backward()
        else:
            # Reuse alpha: the shared gradient sum_i alpha_i g_i comes from one backward of the weighted loss, the
            # task-specific gradients (unweighted, as on update steps) from a backward of the plain sum.
            alpha = self._nash_alpha
            self._compute_grad_dim()
            params = list(self.get_share_params())
            shared = torch.autograd.grad((alpha * losses).sum(), params, retain_graph=True, allow_unused=True)
            losses.sum().backward()
            self._reset_grad(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                        for g, p in zip(shared, params)]))

        weights = alpha
        if max_norm > 0:
            total = torch.nn.utils.clip_grad_norm_(list(self.get_share_params()), max_norm)
            weights = alpha * torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return weights.detach().clone()  # a copy: without clipping, weights is the state alpha itself

    def _weighted_task_specific_backward(self, alpha: torch.Tensor, losses: torch.Tensor) -> None:
        shared = {id(p) for p in self.get_share_params()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in shared]
        grads = torch.autograd.grad((alpha.to(losses.dtype) * losses).sum(), params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
