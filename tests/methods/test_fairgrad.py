"""FairGrad through torchjd: the adapter's weights are torchjd's, they solve the alpha-fair fixed point, a model
steps."""

from __future__ import annotations

import pytest
import torch
from torchjd.aggregation import FairGradWeighting

from mtlbench.methods.fairgrad import FAIRGRAD_DEFAULTS, FairGrad

CPU = torch.device("cpu")


def matrices():
    gen = torch.Generator().manual_seed(0)
    out = [torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]),
           torch.tensor([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.0], [0.0, 0.2, 2.0]])]
    out += [torch.randn(m, 30, generator=gen, dtype=torch.float64) for m in (2, 3)]
    return out


def test_default_alpha_is_libmtl_mains():
    assert FAIRGRAD_DEFAULTS == {"FairGrad_alpha": 1.0, "FairGrad_max_iters": None}


@pytest.mark.parametrize("i", range(4))
def test_adapter_equals_torchjd(i):
    G = matrices()[i]
    direct = FairGradWeighting(alpha=1.0)(G @ G.T)
    torch.testing.assert_close(FairGrad().weights_for(G), direct)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("i", [0, 2, 3])
def test_fixed_point(i, alpha):
    G = matrices()[i].double()
    w = FairGrad().weights_for(G, FairGrad_alpha=alpha)
    assert torch.all(w > 0)
    lhs, rhs = (G @ G.T) @ w, w.pow(-1.0 / alpha)
    torch.testing.assert_close(lhs, rhs, rtol=1e-3, atol=1e-6)


def test_alpha_zero_is_equal_weighting():
    G = matrices()[1]
    torch.testing.assert_close(FairGrad().weights_for(G, FairGrad_alpha=0.0), torch.full((3,), 1 / 3))


def test_end_to_end_step(hps_step):
    w, model = hps_step("FairGrad")
    assert w.shape == (2,) and torch.isfinite(w).all()