"""MGDA from the Gramian: LibMTL 1.1.5's MGDA (each normalisation, its own solver) on the same gradients, the root of
the Gramian, the two-task min-norm point, and a model step."""

from __future__ import annotations

import pytest
import torch
from method_probes import assert_equals_stock, probe_losses, probe_model, probe_step, random_jacobian

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.mgda import MGDA, NORMALISATIONS, gramian_root


@pytest.mark.parametrize("gn", NORMALISATIONS)
@pytest.mark.parametrize("seed", range(4))
def test_equals_libmtl_mgda_for_two_tasks(gn, seed):
    """Two tasks (the grid's case): LibMTL's closed form, equal to float32 rounding (LibMTL's MGDA runs in float32
    only: its solver's vectors are float32)."""
    offset = torch.linspace(0.5, 2.0, 2)   # positive losses for the loss normalisations
    assert_equals_stock(MGDA, libmtl_weighting.MGDA, 2, seed, rtol=1e-5, offset=offset, dtype=torch.float32,
                        mgda_gn=gn)


@pytest.mark.parametrize("gn", NORMALISATIONS)
@pytest.mark.parametrize("m", [3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_same_min_norm_point_as_libmtl_for_more_tasks(gn, m, seed):
    """Three tasks or more: LibMTL's Frank-Wolfe loop stops once an iteration changes the weights by less than 1e-5
    in all, so the rounding of its Gramian (a float32 GEMM and its root here, the normalised vectors there) moves
    where it stops along a slowly converging path. The two agree on what the solver computes: the min-norm value
    ``|sum_i sol_i g_i / gn_i|^2`` to 1e-3 relative, and the update's direction to cosine 0.999."""
    gen = torch.Generator().manual_seed(seed)
    G = (torch.randn(m, 20, generator=gen) * torch.rand(m, 1, generator=gen) * 3).float()
    offset = torch.linspace(0.5, 2.0, m)
    ours, stock = probe_model(MGDA, G).float(), probe_model(libmtl_weighting.MGDA, G).float()
    g_ours, w_ours = probe_step(ours, G, offset, mgda_gn=gn)
    stock.zero_grad(set_to_none=True)
    w_stock = torch.as_tensor(stock.backward(probe_losses(stock, G, offset), mgda_gn=gn))
    g_stock = stock.encoder.theta.grad
    assert abs(float(g_ours.norm() ** 2 / g_stock.norm() ** 2) - 1.0) < 1e-3
    assert float(torch.nn.functional.cosine_similarity(g_ours, g_stock, dim=0)) > 0.999
    assert torch.isclose(torch.as_tensor(w_ours).sum(), torch.tensor(1.0)) and (torch.as_tensor(w_ours) >= 0).all()


@pytest.mark.parametrize("m", [2, 4])
def test_gramian_root(m):
    G = random_jacobian(m, 9, seed=m)
    gram = G @ G.T
    root = gramian_root(gram)
    torch.testing.assert_close(root @ root.T, gram)
    one = torch.ones(3, 1, dtype=torch.float64)    # rank one: a zero eigenvalue (rounding may make it negative)
    torch.testing.assert_close(gramian_root(one @ one.T) @ gramian_root(one @ one.T).T, one @ one.T)


def test_two_tasks_min_norm_point():
    """l2: unit gradients u1 = (1, 0), u2 = (0, 1): the min-norm point is (1/2, 1/2), the update u1/2 + u2/2."""
    G = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    grad, sol = probe_step(probe_model(MGDA, G), G, mgda_gn="l2")
    torch.testing.assert_close(torch.as_tensor(sol), torch.tensor([0.5, 0.5]))   # LibMTL's solver: float32
    torch.testing.assert_close(grad, torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_unknown_normalisation_is_refused():
    G = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="No support normalization type none"):
        probe_step(probe_model(MGDA, G), G, mgda_gn="none")


@pytest.mark.parametrize("name", ["MGDA-loss", "MGDA-loss+", "MGDA-l2"])
def test_end_to_end_step(hps_step, name):
    w, _ = hps_step(name)
    assert isinstance(w, torch.Tensor) and w.shape == (2,) and torch.isclose(w.sum(), torch.tensor(1.0))
