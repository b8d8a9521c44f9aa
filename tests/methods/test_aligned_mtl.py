"""Aligned-MTL (``mtlbench/methods/aligned_mtl.py``) against torchjd's ``AlignedMTL`` and the paper's defining
properties (aligned task gradients orthogonal with equal norms and equal projections), and with representation
gradients."""

from __future__ import annotations

import pytest
import torch
from method_probes import (
    CPU,
    TinyEncoder,
    cos,
    probe_model,
    probe_step,
    random_jacobian,
    task_losses,
    toy_problem,
)
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_architecture
from mtlbench.methods.aligned_mtl import Aligned_MTL, aligned_weights


@pytest.mark.parametrize("task_num", [2, 3])
def test_aligned_matches_torchjd(task_num):
    from torchjd.aggregation import AlignedMTL

    for seed in range(3):
        grads = random_jacobian(task_num, 30, 20 + seed)
        model = probe_model(Aligned_MTL, grads)
        ours, w = probe_step(model, grads)
        # torchjd's default preference vector is the mean (1/m): ours sums the aligned gradients (w = 1).
        ref = AlignedMTL(pref_vector=torch.ones(task_num, dtype=torch.float64))(grads)
        assert cos(ours, ref) > 0.999999
        assert torch.allclose(ours.norm(), ref.norm(), rtol=1e-6)
        assert torch.allclose(ours, torch.from_numpy(w) @ grads)


def test_aligned_rank_deficient_matches_torchjd():
    from torchjd.aggregation import AlignedMTL

    grads = random_jacobian(3, 30, 5)
    grads[2] = 0.5 * grads[0] - 2.0 * grads[1]  # rank 2
    ours = aligned_weights(grads) @ grads
    ref = AlignedMTL(pref_vector=torch.ones(3, dtype=torch.float64))(grads)
    assert torch.isfinite(ours).all()
    assert cos(ours, ref) > 0.999999


@pytest.mark.parametrize("task_num", [2, 3])
def test_aligned_equal_norms_and_projections(task_num):
    grads = random_jacobian(task_num, 30, 30 + task_num)
    eye = torch.eye(task_num, dtype=torch.float64)
    balance = torch.stack([aligned_weights(grads, task_weights=eye[j]) for j in range(task_num)], dim=1)  # B
    assert torch.allclose(balance, balance.t(), atol=1e-10)
    aligned = balance @ grads  # rows: aligned task gradients
    gram = aligned @ aligned.t()
    lam_min = torch.linalg.eigvalsh(grads @ grads.t()).min()
    assert torch.allclose(gram, lam_min * eye, rtol=1e-8, atol=1e-8 * float(lam_min))  # orthogonal, equal norms
    direction = aligned.sum(0)
    assert torch.allclose(aligned @ direction, lam_min.expand(task_num), rtol=1e-8)  # equal projections
    assert torch.allclose(aligned_weights(grads) @ grads, direction)


def test_aligned_zero_gradients_are_finite():
    w = aligned_weights(torch.zeros(2, 10))
    assert torch.equal(w, torch.zeros(2))


def test_aligned_rep_grad_variant():
    model = compose(libmtl_architecture.HPS, Aligned_MTL)(task_name=["cls", "reg"], encoder_class=TinyEncoder,
                                                          decoders=nn.ModuleDict({"cls": nn.Linear(8, 3),
                                                                                  "reg": nn.Linear(8, 1)}),
                                                          rep_grad=True, multi_input=False, device=CPU)
    x, y_cls, y_reg = toy_problem(8)
    w = model.backward(task_losses(model, x, y_cls, y_reg))
    assert w.shape == (2,) and torch.isfinite(w).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
