"""SDMGrad through torchjd: the weights are torchjd's over a sequence of steps, they are (w + lambda/m)/(1 + lambda)
with w on the simplex, lambda = 0 tends to MGDA's min-norm weights and a large lambda to the average, options are
checked, a model steps, w survives a checkpoint, and a step on three batches solves on the xi pair, steps along
zeta and stays on the simplex where float32 would not."""

from __future__ import annotations

import io

import pytest
import torch
from method_probes import probe_losses, probe_model
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


# -- three batches a step (LibMTL main's trainer draws three for SDMGrad) ---------------------------------------

@pytest.mark.parametrize("m", [2, 3])
def test_three_samples_weigh_with_xi_pair_and_step_along_zeta(m):
    """LibMTL main's order: the first batch (zeta) gives the update, the second and third (xi, xi') the matrix
    torchjd solves on; w carries across steps; the decoders keep the sum of their three batches' gradients."""
    opts = {"SDMGrad_niter": 5}
    draws = sequence(m, steps=12)
    model = probe_model(SDMGrad, draws[0])
    direct = SDMGradWeighting(lr=5.0, momentum=0.5, n_iter=5, lambda_=0.3)
    for step in range(4):
        zeta, xi, xi2 = draws[3 * step:3 * step + 3]
        model.zero_grad(set_to_none=True)
        w = model.backward([probe_losses(model, G) for G in (zeta, xi, xi2)], **opts)
        expected = direct(xi @ xi2.T)
        torch.testing.assert_close(w, expected)
        torch.testing.assert_close(model.encoder.theta.grad, zeta.T @ expected)
        for t in model.task_name:   # each head's loss term has gradient 1 per batch: summed over three, 3
            torch.testing.assert_close(model.decoders[t].weight.grad, torch.full_like(model.decoders[t].weight, 3.0))


def test_a_negative_diagonal_stays_on_the_simplex():
    """Two batches whose gradients disagree for every task give A = G_xi G_xi'^T a negative diagonal; the
    normalisation then divides by 1e-8. Solved in float64 (LibMTL projects in float64), w stays on the simplex
    and equals the float64 solution; torchjd on the float32 matrix loses every digit and returns w = 0."""
    xi = torch.tensor([[1.0, 0.5, 0.0], [0.2, -1.0, 0.4]])
    xi2 = -xi + 0.01
    ours = SDMGrad()
    weights = ours.weights_for_pair(xi, xi2)
    assert weights.dtype == torch.float32
    w = ours._sdmgrad_w
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    reference = SDMGradWeighting(lr=5.0, momentum=0.5, n_iter=20, lambda_=0.3)
    torch.testing.assert_close(weights, reference((xi @ xi2.T).double()).float())
    float32 = SDMGradWeighting(lr=5.0, momentum=0.5, n_iter=20, lambda_=0.3)
    float32(xi @ xi2.T)
    assert float(float32._w.sum()) < 0.5   # why the solve is in float64


def test_registry_says_three_batches():
    from mtlbench.methods.registry import WEIGHTINGS

    assert WEIGHTINGS.entry("SDMGrad").trait("samples") == 3 and SDMGrad.SAMPLE_ROLES == (1, 2, 0)


def test_end_to_end_three_batch_step(hps_step):
    w, model = hps_step("SDMGrad", samples=3)
    assert w.shape == (2,) and torch.isfinite(w).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    w_simplex = model._sdmgrad_w
    assert (w_simplex >= 0).all() and torch.isclose(w_simplex.sum(), torch.tensor(1.0, dtype=w_simplex.dtype))
