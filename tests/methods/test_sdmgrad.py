"""SDMGrad through torchjd: the weights are torchjd's over a sequence of steps, they are (w + lambda/m)/(1 + lambda)
with w on the simplex, lambda = 0 tends to MGDA's min-norm weights and a large lambda to the average, options are
checked, a model steps, and w survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from torchjd.aggregation import SDMGradWeighting

from mtlbench.errors import ConfigError
from mtlbench.methods.sdmgrad import SDMGRAD_DEFAULTS, SDMGrad
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["SDMGrad"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}


def sequence(m: int, steps: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + m)
    return [torch.randn(m, 30, generator=gen, dtype=torch.float64) * (1.0 + i) for i in range(steps)]


def test_defaults_are_libmtl_mains():
    assert SDMGRAD_DEFAULTS == {"SDMGrad_lamda": 0.3, "SDMGrad_niter": 20, "SDMGrad_lr": 5.0,
                                "SDMGrad_momentum": 0.5}


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("opts", [{}, {"SDMGrad_lamda": 0.0, "SDMGrad_niter": 5},
                                  {"SDMGrad_lamda": 2.0, "SDMGrad_lr": 10.0, "SDMGrad_momentum": 0.0}])
def test_adapter_equals_torchjd_over_steps(m, opts):
    o = {**SDMGRAD_DEFAULTS, **opts}
    direct = SDMGradWeighting(lr=o["SDMGrad_lr"], momentum=o["SDMGrad_momentum"], n_iter=o["SDMGrad_niter"],
                              lambda_=o["SDMGrad_lamda"])
    ours = SDMGrad()
    for G in sequence(m):
        torch.testing.assert_close(ours.weights_for(G, **opts), direct(G @ G.T))


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("lamda", [0.0, 0.3, 1.0])
def test_weights_mix_w_with_the_average(m, lamda):
    """The update G^T (w + lambda w~)/(1 + lambda), w~ = 1/m: the weights sum to 1, each at least
    lambda/(m(1+lambda))."""
    ours = SDMGrad()
    for G in sequence(m):
        weights = ours.weights_for(G, SDMGrad_lamda=lamda)
        w = ours._sdmgrad_w
        assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
        torch.testing.assert_close(weights, (w + lamda / m) / (1 + lamda))
        assert (weights >= lamda / (m * (1 + lamda)) - 1e-12).all()


def test_lambda_zero_tends_to_mgda_min_norm_weights():
    """With lambda = 0 the inner problem is MGDA's, argmin_{simplex} ||G^T w|| (closed form for 2 tasks)."""
    G = torch.tensor([[1.0, 0.2, 0.0], [-0.4, 1.5, 0.3]], dtype=torch.float64)
    g1, g2 = G
    a = float(((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0.0, 1.0))
    w = SDMGrad().weights_for(G, SDMGrad_lamda=0.0, SDMGrad_niter=3000, SDMGrad_lr=0.1, SDMGrad_momentum=0.0)
    torch.testing.assert_close(w, torch.tensor([a, 1.0 - a], dtype=torch.float64), atol=1e-6, rtol=0)


def test_large_lambda_tends_to_the_average():
    G = sequence(3)[0]
    w = SDMGrad().weights_for(G, SDMGrad_lamda=1e6)
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_gradient_scale_does_not_matter():
    """The Gramian is divided by the squared mean gradient norm, so scaling G leaves the weights unchanged (up to
    the 1e-8 guard of that division)."""
    a, b = SDMGrad(), SDMGrad()
    for G in sequence(3):
        torch.testing.assert_close(a.weights_for(G), b.weights_for(G * 1000.0), rtol=1e-5, atol=1e-5)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.SDMGrad: unknown option 'SDMGrad_lambda'"):
        parse_spec({**ONE_CELL, "weight_args": {"SDMGrad": {"SDMGrad_lambda": 0.5}}})


def test_end_to_end_step(hps_step):
    w, model = hps_step("SDMGrad")
    assert w.shape == (2,) and torch.isfinite(w).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    assert model._sdmgrad_w.shape == (2,)


def test_state_survives_the_checkpoint_attribute_saver():
    """w is a plain tensor attribute: saved by ``attribute_state``, through torch.save, into a fresh model, the
    sequence goes on as if uninterrupted."""
    seq = sequence(3, steps=6)
    whole = SDMGrad()
    expected = [whole.weights_for(G, SDMGrad_niter=3) for G in seq]
    first = SDMGrad()
    for G in seq[:2]:
        first.weights_for(G, SDMGrad_niter=3)
    buffer = io.BytesIO()
    torch.save(attribute_state(first), buffer)
    buffer.seek(0)
    resumed = SDMGrad()
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for G, e in zip(seq[2:], expected[2:]):
        torch.testing.assert_close(resumed.weights_for(G, SDMGrad_niter=3), e)
