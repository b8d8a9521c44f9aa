"""MoCo (``mtlbench/methods/moco.py``) against hand-computed recursions (numpy) of Fernando et al.'s Algorithm 1,
its simplex projection against bisection, its two lambda updates, and its refusal of representation gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_probes import (
    CPU,
    TinyEncoder,
    probe_model,
    probe_step,
    task_losses,
    toy_problem,
)
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_architecture
from mtlbench.methods.moco import MoCo, project_simplex


def test_project_simplex_against_bisection():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7):
        for _ in range(20):
            v = torch.randn(n, generator=gen, dtype=torch.float64) * 3
            lo, hi = float(v.min()) - 1, float(v.max())
            for _ in range(200):  # theta with sum(max(v - theta, 0)) = 1
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if torch.clamp(v - mid, min=0).sum() > 1 else (lo, mid)
            assert torch.allclose(project_simplex(v), torch.clamp(v - lo, min=0), atol=1e-9)


def moco_reference(grad_seq, loss_seq, normalize, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
                   update="projection"):
    """Fernando et al. (2023), Algorithm 1, by hand: Y_0 = 0, lambda_0 = 1/2 (2 tasks); ``update="softmax"`` is
    LibMTL main's lambda step instead of the projection."""
    y, lam, out = np.zeros_like(grad_seq[0]), np.array([0.5, 0.5]), []
    for k, (g, loss) in enumerate(zip(grad_seq, loss_seq), start=1):
        if normalize:
            g = g / np.linalg.norm(g, axis=1, keepdims=True) * loss[:, None]
        beta_k, gamma_k = beta / k ** beta_sigma, gamma / k ** gamma_sigma
        y = y - beta_k * (y - g)
        u = lam - gamma_k * (y @ y.T + rho * np.eye(2)) @ lam
        if update == "softmax":
            lam = np.exp(u) / np.exp(u).sum()
        else:  # projection of a 2-vector onto the simplex: closed form
            t = np.clip((u[0] - u[1] + 1) / 2, 0, 1)
            lam = np.array([t, 1 - t])
        out.append((y.copy(), lam.copy(), y.T @ lam))
    return out


@pytest.mark.parametrize("normalize,update", [(False, "projection"), (True, "projection"), (True, "softmax")])
def test_moco_matches_hand_computation(normalize, update):
    rng = np.random.default_rng(1)
    grad_seq = [rng.normal(size=(2, 6)) * np.array([[3.0], [0.5]]) for _ in range(3)]
    offsets = [np.array([2.0, 0.7]), np.array([1.5, 0.9]), np.array([1.2, 0.4])]
    kw = {"MoCo_beta": 0.5, "MoCo_beta_sigma": 0.5, "MoCo_gamma": 0.1, "MoCo_gamma_sigma": 0.5, "MoCo_rho": 0.1,
          "MoCo_normalize": normalize, "MoCo_lambda_update": update}
    model = probe_model(MoCo, torch.from_numpy(grad_seq[0]))
    expected = moco_reference(grad_seq, offsets, normalize, rho=0.1, update=update)  # theta = 0, zero heads: losses = offsets
    for step, (g, off) in enumerate(zip(grad_seq, offsets)):
        direction, lam = probe_step(model, torch.from_numpy(g), torch.from_numpy(off), **kw)
        y_exp, lam_exp, d_exp = expected[step]
        np.testing.assert_allclose(model.moco_y.numpy(), y_exp, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lam, lam_exp, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(direction.numpy(), d_exp, rtol=1e-10, atol=1e-12)
        for t in model.task_name:
            assert float(model.decoders[t].weight.grad) == pytest.approx(1.0)
    assert model.moco_k == 3
    assert not np.allclose(expected[-1][1], [0.5, 0.5])  # lambda actually moved


def test_moco_lambda_updates_differ_and_unknown_one_is_refused():
    """The paper's projection reaches the simplex's boundary; LibMTL main's softmax never does."""
    grads = torch.tensor([[10.0, 0.0], [0.0, 0.1]], dtype=torch.float64)
    lams = {}
    for update in ("projection", "softmax"):
        model = probe_model(MoCo, grads)
        for _ in range(5):
            _, lams[update] = probe_step(model, grads, torch.tensor([1.0, 1.0], dtype=torch.float64),
                                         MoCo_normalize=False, MoCo_gamma=1.0, MoCo_lambda_update=update)
    assert lams["projection"].min() == 0.0 and lams["softmax"].min() > 0.0
    with pytest.raises(ValueError, match="MoCo_lambda_update"):
        probe_step(probe_model(MoCo, grads), grads, torch.tensor([1.0, 1.0], dtype=torch.float64),
                   MoCo_lambda_update="sigmoid")


def test_moco_rejects_rep_grad():
    model = compose(libmtl_architecture.HPS, MoCo)(task_name=["cls", "reg"], encoder_class=TinyEncoder,
                                                   decoders=nn.ModuleDict({"cls": nn.Linear(8, 3),
                                                                           "reg": nn.Linear(8, 1)}),
                                                   rep_grad=True, multi_input=False, device=CPU)
    x, y_cls, y_reg = toy_problem(4)
    with pytest.raises(ValueError, match="representation"):
        model.backward(task_losses(model, x, y_cls, y_reg))
