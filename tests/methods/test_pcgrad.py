"""PCGrad from the Gramian: LibMTL 1.1.5's PCGrad on the same gradients and shuffles, a hand-computed conflict,
no change without conflict, and a model step."""

from __future__ import annotations

import pytest
import torch
from method_probes import assert_equals_stock, probe_model, probe_step

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.pcgrad import PCGrad, pcgrad_weights


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_equals_libmtl_pcgrad(m, seed):
    assert_equals_stock(PCGrad, libmtl_weighting.PCGrad, m, seed)


def test_hand_computed_conflict():
    """g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1, so pc1 = g1 + g2/2 = (0.5, 0.5) and pc2 = g2 + g1 = (0, 1); the update
    is (0.5, 1.5) = 2 g1 + 1.5 g2."""
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    grad, w = probe_step(probe_model(PCGrad, G), G)
    torch.testing.assert_close(grad, torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert w.tolist() == [2.0, 1.5]


def test_no_conflict_is_the_plain_sum():
    G = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.3], [0.1, 0.1, 1.0]], dtype=torch.float64)
    w = pcgrad_weights(G @ G.T, [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64))


def test_end_to_end_step(hps_step):
    w, _ = hps_step("PCGrad")
    assert isinstance(w, torch.Tensor) and w.shape == (2,) and (w >= 1).all()
