"""MoDo through torchjd: the weights are torchjd's over a sequence of steps, each step is the paper's projected
update of lambda, lambda converges to MGDA's min-norm weights on a fixed Gramian, options are checked, a model
steps, lambda survives a checkpoint, and a step on three batches weighs with G_1 G_2^T and steps along G_3."""

from __future__ import annotations

import io

import pytest
import torch
from method_probes import probe_losses, probe_model
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


# -- three batches a step (LibMTL main's trainer draws three for MoDo) ------------------------------------------

def sample_losses(model, samples: list[torch.Tensor]) -> list[torch.Tensor]:
    """One loss vector per batch, each with its own graph: sample k's shared gradients are exactly ``samples[k]``."""
    return [probe_losses(model, G) for G in samples]


@pytest.mark.parametrize("m", [2, 3])
def test_three_samples_weigh_with_g1_g2_and_step_along_g3(m):
    """lambda follows torchjd on G_1 G_2^T (the paper's double-sampled estimate), the shared gradient is G_3^T lambda,
    and the decoders' gradients are their mean over the three batches (LibMTL main's MoDo), over several steps."""
    opts = {"MoDo_gamma": 0.3, "MoDo_rho": 0.1}
    draws = sequence(m, steps=12)
    model, direct = probe_model(MoDo, draws[0]), MoDoWeighting(gamma=0.3, rho=0.1)
    for step in range(4):
        G1, G2, G3 = draws[3 * step:3 * step + 3]
        model.zero_grad(set_to_none=True)
        w = model.backward(sample_losses(model, [G1, G2, G3]), **opts)
        expected = direct(G1 @ G2.T)
        torch.testing.assert_close(w, expected)
        torch.testing.assert_close(model.encoder.theta.grad, G3.T @ expected)
        for t in model.task_name:   # each head's loss term has gradient 1 per batch: the mean is 1, the sum 3
            torch.testing.assert_close(model.decoders[t].weight.grad, torch.ones_like(model.decoders[t].weight))


def test_three_samples_differ_from_one_sample():
    """With independent batches the matrix is G_1 G_2^T, not a Gramian: the weights differ from one batch's."""
    G1, G2, G3 = sequence(2, steps=3)
    one = probe_model(MoDo, G1)
    three = probe_model(MoDo, G1)
    w_one = one.backward(probe_losses(one, G1), MoDo_gamma=1.0, MoDo_rho=0.0)
    w_three = three.backward(sample_losses(three, [G1, G2, G3]), MoDo_gamma=1.0, MoDo_rho=0.0)
    assert not torch.allclose(w_one, w_three)


def test_three_samples_refuse_representation_gradients_and_other_counts():
    G = sequence(2, steps=3)
    model = probe_model(MoDo, G[0])
    with pytest.raises(ConfigError, match="takes 3 gradient samples per step, got 2"):
        model.backward(sample_losses(model, G[:2]), **MODO_DEFAULTS)
    with pytest.raises(ConfigError, match=r"backward takes the task losses \[2\], or a list"):
        model.backward(torch.stack(sample_losses(model, G)), **MODO_DEFAULTS)
    model.rep_grad = True
    with pytest.raises(ConfigError, match=r"do not support representation gradients \(rep_grad=True\)"):
        model.backward(sample_losses(model, G), **MODO_DEFAULTS)


def test_registry_says_three_batches_and_the_cell_records_it():
    from mtlbench.methods.registry import WEIGHTINGS
    from mtlbench.models.mtl import build_mtl_model

    assert WEIGHTINGS.entry("MoDo").trait("samples") == 3 and MoDo.SAMPLE_ROLES == (0, 1, 2)
    built = build_mtl_model("HPS", "MoDo", "decoder1", num_classes=3, img_size=32, device=torch.device("cpu"))
    assert built.samples == 3 and built.hparams["samples_per_step"] == 3


def test_end_to_end_three_batch_step(hps_step):
    w, model = hps_step("MoDo", samples=3, MoDo_gamma=0.01)
    assert w.shape == (2,) and torch.isfinite(w).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    torch.testing.assert_close(model._modo_lambda, w)
