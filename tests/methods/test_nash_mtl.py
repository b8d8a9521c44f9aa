"""Nash-MTL (``mtlbench/methods/nash_mtl.py``) against independent references and in a network.

References: torchjd's ``NashMTL`` aggregator on random Jacobians, and an exact convex reformulation of the Nash
bargaining equation (scipy); the shared gradients come from :mod:`method_probes`' probe, whose task gradients are
exactly a chosen Jacobian.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_probes import CPU, cos, probe_model, probe_step, random_jacobian
from scipy.optimize import minimize
from torch import nn

from mtlbench.methods.nash_mtl import Nash_MTL


def nash_reference(gram: np.ndarray) -> np.ndarray:
    """G G^T alpha = 1/alpha is the stationarity condition of the strictly convex 0.5 a^T M a - sum log a."""
    res = minimize(lambda a: 0.5 * a @ gram @ a - np.log(a).sum(), 1 / np.sqrt(np.diag(gram)),
                   jac=lambda a: gram @ a - 1 / a, bounds=[(1e-12, None)] * len(gram), method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    return res.x


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize("task_num", [2, 3])
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_matches_torchjd(task_num, max_norm):
    pytest.importorskip("ecos")  # torchjd's NashMTL solves with ECOS
    from torchjd.aggregation import NashMTL

    for seed in range(3):
        grads = random_jacobian(task_num, 40, seed)
        model = probe_model(Nash_MTL, grads)
        ours, _ = probe_step(model, grads, max_norm=max_norm)
        ref = NashMTL(n_tasks=task_num, max_norm=max_norm)(grads)
        assert cos(ours, ref) > 0.999
        assert torch.allclose(ours.norm(), ref.norm(), rtol=1e-3)


@pytest.mark.parametrize("task_num", [2, 3])
def test_nash_fixed_point_and_exact_solution(task_num):
    for seed in range(3):
        grads = random_jacobian(task_num, 40, 10 + seed)
        grads[0] *= 1e-3  # badly scaled tasks, where the normalisation matters
        if task_num == 3:
            grads[2] = -0.8 * grads[1] + 0.3 * grads[2] / grads[2].norm() * grads[1].norm()  # conflicting
        model = probe_model(Nash_MTL, grads)
        direction, w = probe_step(model, grads, max_norm=0.0)
        gram = (grads @ grads.t()).numpy()
        assert np.max(np.abs(w * (gram @ w) - 1)) < 1e-3  # alpha_i (G G^T alpha)_i = 1
        np.testing.assert_allclose(w, nash_reference(gram), rtol=1e-3)
        assert torch.allclose(direction, torch.from_numpy(w) @ grads)
        assert abs(float(direction.norm()) - np.sqrt(task_num)) < 1e-3  # ||G^T alpha||^2 = task_num


@pytest.mark.parametrize("every", [1, 3])
def test_nash_task_specific_gradients_plain_option(every):
    """``task_specific_grads = "plain"``: decoders keep their unweighted task gradient (mtlbench's old convention),
    on solving steps and on steps that reuse alpha; the shared gradient is the same either way."""
    grads = random_jacobian(2, 20, 3)
    shared = {}
    for mode in ("plain", "weighted"):
        model = probe_model(Nash_MTL, grads)
        for _ in range(2):
            direction, w = probe_step(model, grads, max_norm=0.0, update_weights_every=every, task_specific_grads=mode)
        shared[mode] = direction
        for i, t in enumerate(model.task_name):
            want = 1.0 if mode == "plain" else w[i]
            assert float(model.decoders[t].weight.grad) == pytest.approx(want, rel=1e-6)
    assert torch.allclose(shared["plain"], shared["weighted"])
    with pytest.raises(ValueError, match="task_specific_grads"):
        probe_step(probe_model(Nash_MTL, grads), grads, task_specific_grads="both")


def test_nash_decoder_gradient_is_alpha_times_its_task_gradient_in_a_network():
    """HPS + Nash-MTL on a real ResNet-18 batch: each decoder's gradient equals alpha_i times the gradient of its own
    task loss alone, to float32 rounding."""
    from mtlbench.models.mtl import build_mtl_model

    torch.manual_seed(0)
    built = build_mtl_model("HPS", "Nash-MTL", "decoder1", num_classes=3, img_size=32, device=CPU)
    model = built.module.train()
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)

    def losses():
        torch.manual_seed(1)  # the same dropout masks in both passes
        out = model(x)
        return torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                            nn.functional.mse_loss(out["reg"].reshape(-1), targets)])

    plain = {}
    for i, task in enumerate(model.task_name):
        model.zero_grad(set_to_none=True)
        losses()[i].backward()
        plain[task] = [p.grad.clone() for p in model.decoders[task].parameters()]
    model.zero_grad(set_to_none=True)
    model.backward(losses(), **built.backward_kwargs)
    alpha = model._nash_alpha
    for i, task in enumerate(model.task_name):
        for p, g in zip(model.decoders[task].parameters(), plain[task]):
            torch.testing.assert_close(p.grad, alpha[i] * g, rtol=1e-5, atol=1e-7)


def test_nash_clipping_and_reused_weights():
    grads = random_jacobian(2, 20, 3)
    model = probe_model(Nash_MTL, grads)
    direction, w = probe_step(model, grads, max_norm=1.0)
    assert abs(float(direction.norm()) - 1.0) < 1e-6  # sqrt(2) clipped to 1
    assert torch.allclose(direction, torch.from_numpy(w) @ grads)  # returned weights include the clip factor
    alpha = model._nash_alpha.numpy()  # before clipping
    assert np.all(alpha > w)  # the clip factor < 1 is in w, not in alpha
    for i, t in enumerate(model.task_name):  # task-specific gradients: alpha_i times the task's own (LibMTL main)
        assert float(model.decoders[t].weight.grad) == pytest.approx(alpha[i], rel=1e-6)

    # update_weights_every=3: steps 2 and 3 reuse step 1's alpha on new gradients (one backward of sum alpha_i L_i)
    model = probe_model(Nash_MTL, grads)
    kw = {"update_weights_every": 3, "max_norm": 0.0}
    _, w1 = probe_step(model, grads, **kw)
    new = random_jacobian(2, 20, 4)
    d2, w2 = probe_step(model, new, **kw)
    np.testing.assert_allclose(w2, w1)
    assert torch.allclose(d2, torch.from_numpy(w1) @ new)
    for i, t in enumerate(model.task_name):
        assert float(model.decoders[t].weight.grad) == pytest.approx(w1[i], rel=1e-6)
    probe_step(model, new, **kw)
    _, w4 = probe_step(model, new, **kw)  # step 4 solves again, for the new gradients
    gram = (new @ new.t()).numpy()
    assert np.max(np.abs(w4 * (gram @ w4) - 1)) < 1e-3
