"""MoCo (multi-objective gradient correction), written against LibMTL 1.1.5's ``AbsWeighting``.

Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in Multi-objective Learning: A Provably
Convergent Approach", ICLR 2023 (arXiv:2210.12624).
"""

from __future__ import annotations

from typing import Any

import torch

from dataclasses import dataclass, field

from mtlbench.libmtl_compat import AbsWeighting
from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.registry import options_table

__all__ = ["MoCo", "MOCO_DEFAULTS", "project_simplex"]

LAMBDA_UPDATES = ("projection", "softmax")


@dataclass(frozen=True)
class MoCoOptions:
    """MoCo's options (LibMTL main's names and defaults, the paper's projected update); see :class:`MoCo`."""

    MoCo_beta: float = 0.5
    MoCo_beta_sigma: float = 0.5
    MoCo_gamma: float = 0.1
    MoCo_gamma_sigma: float = 0.5
    MoCo_rho: float = 0.0
    MoCo_normalize: bool = True
    MoCo_lambda_update: str = field(default="projection", metadata={"choices": LAMBDA_UPDATES})


MOCO_DEFAULTS: dict[str, Any] = options_table(MoCoOptions)[0]


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a 1-D tensor onto the probability simplex, on its device (sort-based, no host
    round trip): ``argmin_{x >= 0, sum x = 1} ||x - v||``."""
    n = v.numel()
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, dim=0) - 1.0
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    # The condition holds for a prefix of the sorted entries (always for the first), so its count is the support.
    support = (u - css / k > 0).sum().clamp(min=1)
    theta = css.gather(0, (support - 1).reshape(1)) / support.to(v.dtype)
    return torch.clamp(v - theta, min=0.0)


def _softmax(v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(v, dim=0)


@WEIGHTINGS.register("MoCo", options=MoCoOptions, library="mtlbench", gradients=True,
                     conic=('Y^T lambda with lambda on the simplex; on the first step Y = beta_1 times the ' '(loss-scaled, unit) task gradients (later steps combine tracked gradients, not the ' 'current ones)'),
                     reference="Fernando et al., Mitigating Gradient Bias in Multi-objective Learning, ICLR 2023",
                     summary="tracked (momentum) gradients and projected weight updates (written here)")
class MoCo(AbsWeighting):
    r"""MoCo: tracked task gradients Y and simplex weights lambda updated by a projected gradient step.

    Fernando et al., *Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach*,
    ICLR 2023 (arXiv:2210.12624), Algorithm 1. At step k = 1, 2, ... with task gradients G (rows g_i):

    - ``beta_k = MoCo_beta / k**MoCo_beta_sigma``, ``gamma_k = MoCo_gamma / k**MoCo_gamma_sigma``;
    - ``y_i <- y_i - beta_k (y_i - g_i)``  (Y: [task_num, grad_dim], a running estimate of the true gradients that
      removes the bias of stochastic gradients in the MGDA sub-problem);
    - ``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + MoCo_rho I) lambda)``  (with the updated Y): the paper's
      projected gradient step, the default. LibMTL main takes ``softmax(...)`` of the same vector instead, which
      is not a projection (it never reaches the simplex's boundary and shifts every weight); it is available as
      ``MoCo_lambda_update = "softmax"``. Where LibMTL contradicts the method's paper, mtlbench follows the paper.
    - shared-parameter gradient ``Y^T lambda`` (with the updated Y and lambda).

    Initial state: Y = 0, lambda = 1/task_num (the paper's algorithm leaves Y_0 free). The state (k, Y, lambda) lives
    on the gradients' device and persists across steps (not in ``state_dict``). Task-specific parameters keep their
    plain task gradients (LibMTL's convention for gradient-based weightings).

    Args (keywords of ``backward``, defaults in :data:`MOCO_DEFAULTS`):
        MoCo_beta (0.5), MoCo_beta_sigma (0.5): tracking step size beta_k.
        MoCo_gamma (0.1), MoCo_gamma_sigma (0.5): weight step size gamma_k.
        MoCo_rho (0.0): l2 regularisation of lambda (rho I in the weight update).
        MoCo_normalize (True): before tracking, rescale each g_i to norm = loss_i (``g_i * loss_i / ||g_i||``), the
            gradient normalisation commonly used with MoCo in practice. It keeps the lambda update scale-free of the
            raw gradient magnitude (Y Y^T then scales with the losses); not part of Algorithm 1. LibMTL main does
            the same.
        MoCo_lambda_update ("projection"): ``projection`` (Algorithm 1) or ``softmax`` (LibMTL main).

    Returns lambda (a detached tensor of length task_num on the gradients' device: no host sync). Note the shared
    gradient is ``Y^T lambda``, not ``sum_i lambda_i g_i``.
    Representation gradients (``rep_grad=True``) are not supported: Y must have a fixed shape across batches.
    """

    def __init__(self) -> None:
        super().__init__()

    def init_param(self) -> None:
        self.moco_k = 0
        self.moco_y: torch.Tensor | None = None
        self.moco_lambda: torch.Tensor | None = None

    def moco_step(self, grads: torch.Tensor, losses: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """One MoCo update from the task gradients ``grads`` [task_num, n]; returns the direction ``Y^T lambda``.

        ``losses`` (detached values) are needed when ``MoCo_normalize`` is on.
        """
        opts = {**MOCO_DEFAULTS, **kwargs}
        if opts["MoCo_lambda_update"] not in LAMBDA_UPDATES:
            raise ValueError(f"MoCo_lambda_update must be one of {LAMBDA_UPDATES}, got {opts['MoCo_lambda_update']!r}")
        if not hasattr(self, "moco_k"):
            self.init_param()
        if opts["MoCo_normalize"]:
            if losses is None:
                raise ValueError("MoCo_normalize needs the task losses")
            norms = grads.norm(dim=1, keepdim=True).clamp(min=1e-12)
            grads = grads / norms * losses.detach().reshape(-1, 1).to(grads.dtype)
        if self.moco_y is None or self.moco_y.shape != grads.shape:
            self.moco_y = torch.zeros_like(grads)
            self.moco_lambda = torch.full((grads.shape[0],), 1.0 / grads.shape[0], dtype=grads.dtype,
                                          device=grads.device)
            self.moco_k = 0
        self.moco_k += 1
        k = float(self.moco_k)
        beta_k = opts["MoCo_beta"] / k ** opts["MoCo_beta_sigma"]
        gamma_k = opts["MoCo_gamma"] / k ** opts["MoCo_gamma_sigma"]
        # y <- y - beta_k (y - g), in place: one pass over the [task_num, n] tracker, no temporaries of its size.
        self.moco_y.lerp_(grads, beta_k)
        lam = self.moco_lambda
        # (Y Y^T + rho I) lambda through the m x m Gramian: one pass over Y instead of two.
        step = (self.moco_y @ self.moco_y.t()) @ lam + opts["MoCo_rho"] * lam
        update = project_simplex if opts["MoCo_lambda_update"] == "projection" else _softmax
        self.moco_lambda = update(lam - gamma_k * step)
        return self.moco_y.t() @ self.moco_lambda

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.rep_grad:
            raise ValueError("MoCo does not support representation gradients (rep_grad must be False)")
        grads = self._get_grads(losses, mode="backward")
        direction = self.moco_step(grads, losses.detach(), **kwargs)
        self._reset_grad(direction)
        return self.moco_lambda.detach().clone()  # a copy: the state must not alias what callers keep
