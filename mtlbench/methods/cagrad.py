"""CAGrad for any number of tasks (LibMTL 1.1.5's fixes the task count at three: quirk 10 of
:mod:`mtlbench.libmtl_compat`).

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.registry import WEIGHTINGS

__all__ = ["CAGrad", "CAGradOptions"]


@dataclass(frozen=True)
class CAGradOptions:
    calpha: float = 0.5     # c: radius of the ball around the average gradient (LibMTL's default)
    rescale: int = field(default=1, metadata={"choices": (0, 1, 2)})   # divide by 1, 1 + c^2 or 1 + c


@WEIGHTINGS.register("CAGrad", options=CAGradOptions, library="LibMTL 1.1.5 (any task count: mtlbench)",
                     gradients=True,
                     conic='(g_0 + c g_w / |g_w|) / (1 + c^2) with g_0 the mean and g_w a simplex combination',
                     reference="Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021",
                     summary="maximises the worst local improvement near the average gradient")
class CAGrad(libmtl_weighting.CAGrad):
    """LibMTL's CAGrad (Liu et al., NeurIPS 2021) for any number of tasks (quirk 10); hyper-parameters ``calpha``
    and ``rescale`` as in LibMTL."""

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> Any:
        import numpy as np
        from scipy.optimize import minimize

        calpha, rescale = kwargs["calpha"], kwargs["rescale"]
        if self.rep_grad:
            raise ValueError("No support method CAGrad with representation gradients (rep_grad=True)")
        self._compute_grad_dim()
        grads = self._compute_grad(losses, mode="backward")
        gg = torch.matmul(grads, grads.t()).double().cpu()  # only [tasks x tasks] leaves the device
        g0_norm = (gg.mean() + 1e-8).sqrt()
        x_start = np.ones(self.task_num) / self.task_num
        a, b = gg.numpy(), x_start.copy()
        c = float(calpha * g0_norm + 1e-8)

        def objfn(x: np.ndarray) -> float:
            return float(x @ a @ b + c * np.sqrt(x @ a @ x + 1e-8))

        res = minimize(objfn, x_start, bounds=[(0, 1)] * self.task_num,
                       constraints=({"type": "eq", "fun": lambda x: 1 - sum(x)},))
        scale = {0: 1.0, 1: 1 + calpha ** 2, 2: 1 + calpha}
        if rescale not in scale:
            raise ValueError(f"No support rescale type {rescale}")
        # g = mean(G) + c g_w / |g_w| with g_w = w^T G, as coefficients of the task gradients: |g_w| from the
        # Gramian, and one w'^T G instead of LibMTL's [task_num, n] temporaries.
        ww = torch.as_tensor(res.x, dtype=torch.float64)
        gw_norm = float((ww @ gg @ ww).clamp(min=0.0).sqrt())
        coef = (1.0 / self.task_num + c / (gw_norm + 1e-8) * ww) / scale[rescale]
        self._reset_grad(coef.to(device=grads.device, dtype=grads.dtype) @ grads)
        return res.x
