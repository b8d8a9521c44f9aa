"""MoDo through torchjd: the weights are torchjd's over a sequence of steps, each step is the paper's projected
update of lambda, lambda converges to MGDA's min-norm weights on a fixed Gramian, options are checked, a model
steps, and lambda survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from torchjd.aggregation import MoDoWeighting

from mtlbench.errors import ConfigError
from mtlbench.methods.modo import MODO_DEFAULTS, MoDo
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["MoDo"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}


def sequence(m: int, steps: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + m)
    return [torch.randn(m, 30, generator=gen, dtype=torch.float64) / 4 for _ in range(steps)]


def simplex_projection(y: torch.Tensor) -> torch.Tensor:
    """Euclidean projection onto the probability simplex (sort, find the threshold)."""
    u, _ = torch.sort(y, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    k = torch.arange(1, len(y) + 1, dtype=y.dtype)
    r = int(torch.nonzero(u - css / k > 0).max())
    return (y - css[r] / (r + 1)).clamp(min=0.0)


def test_defaults_are_libmtl_mains():
    assert MODO_DEFAULTS == {"MoDo_gamma": 1e-3, "MoDo_rho": 0.1}


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("gamma,rho", [(1e-3, 0.1), (0.2, 0.0), (1.0, 0.5)])
def test_adapter_equals_torchjd_over_steps(m, gamma, rho):
    direct, ours = MoDoWeighting(gamma=gamma, rho=rho), MoDo()
    for G in sequence(m):
        torch.testing.assert_close(ours.weights_for(G, MoDo_gamma=gamma, MoDo_rho=rho), direct(G @ G.T))


@pytest.mark.parametrize("m", [2, 3])
def test_each_step_is_the_projected_update(m):
    """The paper's update: lambda_{t+1} = Proj(lambda_t - gamma (G G^T lambda_t + rho lambda_t)), lambda_0 = 1/m."""
    gamma, rho, ours = 0.5, 0.1, MoDo()
    lam = torch.full((m,), 1.0 / m, dtype=torch.float64)
    for G in sequence(m, steps=6):
        lam = simplex_projection(lam - gamma * (G @ G.T @ lam + rho * lam))
        w = ours.weights_for(G, MoDo_gamma=gamma, MoDo_rho=rho)
        torch.testing.assert_close(w, lam)
        assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
        torch.testing.assert_close(ours._modo_lambda, lam)


def test_converges_to_mgda_min_norm_weights():
    """On a fixed Gramian with rho = 0, lambda tends to argmin_{simplex} ||G^T lambda|| (closed form for 2 tasks)."""
    G = torch.tensor([[1.0, 0.2, 0.0], [-0.4, 1.5, 0.3]], dtype=torch.float64)
    g1, g2 = G
    a = float(((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0.0, 1.0))
    ours = MoDo()
    for _ in range(2000):
        w = ours.weights_for(G, MoDo_gamma=0.1, MoDo_rho=0.0)
    torch.testing.assert_close(w, torch.tensor([a, 1.0 - a], dtype=torch.float64), atol=1e-6, rtol=0)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.MoDo: unknown option 'gamma'; allowed: MoDo_gamma, MoDo_rho"):
        parse_spec({**ONE_CELL, "weight_args": {"MoDo": {"gamma": 0.1}}})


def test_end_to_end_step(hps_step):
    w, model = hps_step("MoDo", MoDo_gamma=0.01)
    assert w.shape == (2,) and torch.isfinite(w).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(model._modo_lambda, w)


def test_state_survives_the_checkpoint_attribute_saver():
    """lambda is a plain tensor attribute: saved by ``attribute_state``, through torch.save, into a fresh model, the
    sequence goes on as if uninterrupted."""
    seq, opts = sequence(3, steps=6), {"MoDo_gamma": 0.5, "MoDo_rho": 0.1}
    whole = MoDo()
    expected = [whole.weights_for(G, **opts) for G in seq]
    first = MoDo()
    for G in seq[:2]:
        first.weights_for(G, **opts)
    buffer = io.BytesIO()
    torch.save(attribute_state(first), buffer)
    buffer.seek(0)
    resumed = MoDo()
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for G, e in zip(seq[2:], expected[2:]):
        torch.testing.assert_close(resumed.weights_for(G, **opts), e)
