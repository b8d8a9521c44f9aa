"""DualProj through torchjd: the adapter's weights are torchjd's, the update conflicts with no task, a model steps."""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import DualProjWeighting

from mtlbench.methods.torchjd_adapter import TorchDualConeProjector
from mtlbench.methods.dualproj import DUALPROJ_DEFAULTS, DualProj

CPU = torch.device("cpu")


def matrices():
    gen = torch.Generator().manual_seed(0)
    out = [torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]),           # conflicting pair
           torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]]),          # three tasks, two nearly opposite
           torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])]             # identical rows (rank 1)
    out += [torch.randn(m, 50, generator=gen) for m in (2, 3, 5)]
    return out


def adapter_weights(grads: torch.Tensor, **kwargs) -> torch.Tensor:
    w = DualProj()
    return w.weights_for(grads, **kwargs)


@pytest.mark.parametrize("i", range(6))
def test_adapter_equals_torchjd(i):
    G = matrices()[i]
    direct = DualProjWeighting(projector=TorchDualConeProjector(norm_eps=DUALPROJ_DEFAULTS["DualProj_norm_eps"],
                                                              reg_eps=DUALPROJ_DEFAULTS["DualProj_reg_eps"]))(G @ G.T)
    torch.testing.assert_close(adapter_weights(G), direct)


def test_non_conflicting_gradients_keep_the_mean():
    G = torch.tensor([[1.0, 0.5, 0.0], [0.2, 1.0, 0.3], [0.0, 0.4, 1.0]])  # pairwise non-negative inner products
    torch.testing.assert_close(adapter_weights(G, DualProj_reg_eps=0.0), torch.full((3,), 1 / 3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("i", range(6))
def test_update_conflicts_with_no_task(i):
    G = matrices()[i].double()
    w = adapter_weights(G, DualProj_reg_eps=0.0)
    d = w @ G
    assert torch.all(w >= -1e-9)
    assert torch.all(G @ d >= -1e-8 * G.norm() ** 2), G @ d


def test_weighting_built_once_with_first_options():
    m = DualProj()
    m.weights_for(torch.randn(2, 5), DualProj_reg_eps=1e-3)
    first = m.torchjd_weighting()
    m.weights_for(torch.randn(2, 5))
    assert m.torchjd_weighting() is first and first.projector.reg_eps == 1e-3


def test_end_to_end_step(hps_step):
    w, model = hps_step("DualProj")
    assert w.shape == (2,) and torch.isfinite(w).all()