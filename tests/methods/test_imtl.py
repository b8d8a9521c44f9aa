"""IMTL from the Gramian: LibMTL 1.1.5's IMTL on the same gradients (loss scales included), the two-task closed form,
the defining property (equal projections of the aggregate on every unit task gradient), and a model step."""

from __future__ import annotations

import pytest
import torch
from method_probes import assert_equals_stock, random_jacobian

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.imtl import IMTL, imtl_weights


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_equals_libmtl_imtl(m, seed):
    assert_equals_stock(IMTL, libmtl_weighting.IMTL, m, seed)


def test_two_tasks_closed_form():
    G = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    n1, n2 = G.norm(dim=1)
    torch.testing.assert_close(imtl_weights(G @ G.T), torch.stack([n2, n1]) / (n1 + n2))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_equal_projections_on_the_unit_gradients(m):
    G = random_jacobian(m, 12, seed=m)
    alpha = imtl_weights(G @ G.T)
    g = alpha @ G
    projections = G @ g / G.norm(dim=1)
    torch.testing.assert_close(projections, projections[0].expand(m))
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_end_to_end_step(hps_step):
    w, model = hps_step("IMTL")
    assert isinstance(w, torch.Tensor) and w.shape == (2,) and model.loss_scale.grad is not None
