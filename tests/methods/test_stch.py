"""STCH (written here): the warm-up schedule and reference point, a hand-computed STCH step, the weights are the
gradient of the smooth Tchebycheff function, mu -> 0 gives the Tchebycheff weights, options are checked, a model
steps, and the state survives a checkpoint."""

from __future__ import annotations

import io
import math

import pytest
import torch
from method_probes import probe_model, probe_step

from mtlbench.errors import ConfigError
from mtlbench.methods.stch import STCH, STCH_DEFAULTS
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["STCH"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}
G = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0]], dtype=torch.float64)
D = torch.float64


def run(model, losses, epoch, grads=G, **opts):
    """One backward at ``epoch`` of the probe model whose losses are exactly ``losses``: (shared gradient, w)."""
    model.epoch = epoch
    return probe_step(model, grads, torch.tensor(losses, dtype=D), **{**STCH_DEFAULTS, **opts})


def test_defaults_are_libmtl_mains():
    assert STCH_DEFAULTS == {"STCH_mu": 1.0, "STCH_warmup_epoch": 4, "STCH_pref": []}


def test_warmup_reference_and_a_step_by_hand():
    """W = 1. Epoch 0 (warm-up): the sum of log-losses, weights 1 / l. Epoch 1 (estimate): the same, losses
    (2, 0.5) then (4, 1.5) accumulated: r = (3, 1). Epoch 2, losses (3, 2): u = (log 1, log 2), mu = 1:
    p = softmax(0, ln 2) = (1/3, 2/3), w = 2 p / l = (2/9, 2/3)."""
    model = probe_model(STCH, G)
    opts = {"STCH_warmup_epoch": 1}
    grad, w = run(model, [2.0, 0.5], 0, **opts)
    torch.testing.assert_close(torch.from_numpy(w), torch.tensor([0.5, 2.0], dtype=D))
    torch.testing.assert_close(grad, 0.5 * G[0] + 2.0 * G[1])
    assert model.stch_loss_sum is None
    run(model, [2.0, 0.5], 1, **opts)
    _, w = run(model, [4.0, 1.5], 1, **opts)
    torch.testing.assert_close(torch.from_numpy(w), torch.tensor([0.25, 1 / 1.5], dtype=D))
    assert model.stch_reference is None and model.stch_loss_count == 2
    grad, w = run(model, [3.0, 2.0], 2, **opts)
    torch.testing.assert_close(model.stch_reference, torch.tensor([3.0, 1.0], dtype=D))
    torch.testing.assert_close(torch.from_numpy(w), torch.tensor([2 / 9, 2 / 3], dtype=D))
    torch.testing.assert_close(grad, (2 / 9) * G[0] + (2 / 3) * G[1])
    run(model, [1.0, 1.0], 3, **opts)   # the reference stays fixed
    torch.testing.assert_close(model.stch_reference, torch.tensor([3.0, 1.0], dtype=D))


@pytest.mark.parametrize("mu", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("pref", [[], [2.0, 0.5, 1.0]])
def test_weights_are_the_gradient_of_the_smooth_tchebycheff_function(mu, pref):
    """The applied weights equal autograd's gradient of ``m mu log sum_i exp(lambda_i log(l_i / r_i) / mu)``."""
    g3 = torch.eye(3, dtype=D)
    model = probe_model(STCH, g3)
    opts = {"STCH_warmup_epoch": 0, "STCH_mu": mu, "STCH_pref": pref}
    run(model, [1.0, 2.0, 0.5], 0, grads=g3, **opts)
    losses = torch.tensor([0.8, 2.5, 0.3], dtype=D, requires_grad=True)
    _, w = run(model, losses.tolist(), 1, grads=g3, **opts)
    lam = torch.tensor(pref or [1.0, 1.0, 1.0], dtype=D)
    u = lam * torch.log(losses / torch.tensor([1.0, 2.0, 0.5], dtype=D))
    (auto,) = torch.autograd.grad(3 * mu * torch.logsumexp(u / mu, 0), losses)
    torch.testing.assert_close(torch.from_numpy(w), auto)


@pytest.mark.parametrize("pref, winner", [([], 1), ([3.0, 1.0, 1.0], 0)])
def test_small_mu_gives_the_tchebycheff_weights(pref, winner):
    """mu -> 0: all weight on argmax_i lambda_i (f_i - z_i): w -> m e_k / l_k; a large mu spreads it evenly
    (w -> m lambda_i / (m l_i) up to the softmax's uniform limit)."""
    model = probe_model(STCH, torch.eye(3, dtype=D))
    reference = [1.0, 1.0, 1.0]
    losses = [1.5, 1.8, 0.9]      # u = lambda (log 1.5, log 1.8, log 0.9)
    u = torch.tensor(pref or [1.0] * 3, dtype=D) * torch.log(torch.tensor(losses, dtype=D))
    assert int(u.argmax()) == winner
    run(model, reference, 0, grads=torch.eye(3, dtype=D), STCH_warmup_epoch=0, STCH_pref=pref)
    lam = torch.tensor(pref or [1.0] * 3, dtype=D)
    previous = 0.0
    for mu in (1.0, 0.1, 0.01, 1e-3):
        _, w = run(model, losses, 1, grads=torch.eye(3, dtype=D), STCH_warmup_epoch=0, STCH_mu=mu,
                     STCH_pref=pref)
        share = float(w[winner] * losses[winner] / (3 * lam[winner]))   # p_k, the winner's softmax share
        assert share >= previous - 1e-12
        previous = share
    tcheb = torch.zeros(3, dtype=D)
    tcheb[winner] = 3 * lam[winner] / losses[winner]
    torch.testing.assert_close(torch.from_numpy(w), tcheb, rtol=1e-6, atol=1e-12)
    _, w = run(model, losses, 1, grads=torch.eye(3, dtype=D), STCH_warmup_epoch=0, STCH_mu=1e6,
                 STCH_pref=pref)
    torch.testing.assert_close(torch.from_numpy(w), lam / torch.tensor(losses, dtype=D), rtol=1e-4, atol=0)


def test_bad_values_are_refused():
    model = probe_model(STCH, G)
    with pytest.raises(ValueError, match="STCH_mu must be positive"):
        run(model, [1.0, 1.0], 0, STCH_mu=0.0)
    run(model, [1.0, 1.0], 0, STCH_warmup_epoch=0)
    with pytest.raises(ValueError, match="STCH_pref has 3 entries for 2 tasks"):
        run(model, [1.0, 1.0], 1, STCH_warmup_epoch=0, STCH_pref=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="nonnegative"):
        run(model, [1.0, 1.0], 1, STCH_warmup_epoch=0, STCH_pref=[1.0, -1.0])


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.STCH: unknown option 'mu'"):
        parse_spec({**ONE_CELL, "weight_args": {"STCH": {"mu": 0.5}}})
    with pytest.raises(ConfigError, match="STCH_warmup_epoch must be an integer"):
        parse_spec({**ONE_CELL, "weight_args": {"STCH": {"STCH_warmup_epoch": 1.5}}})
    assert parse_spec({**ONE_CELL, "weight_args": {"STCH": {"STCH_pref": [1.0, 2.0]}}}).weight_args


def test_end_to_end_step(hps_step):
    w, model = hps_step("STCH")                          # epoch 0: warm-up
    assert w.shape == (2,) and torch.isfinite(w).all() and (w > 0).all()
    w, model = hps_step("STCH", STCH_warmup_epoch=0)     # epoch 0 = the estimate epoch
    assert model.stch_loss_count == 1
    # the STCH phase on the same model: the next epoch, a fresh forward
    model.epoch = 1
    out = model(torch.randn(4, 3, 32, 32))
    losses = torch.stack([torch.nn.functional.cross_entropy(out["cls"], torch.tensor([0, 1, 2, 0])),
                          torch.nn.functional.mse_loss(out["reg"].reshape(-1), torch.randn(4))])
    model.zero_grad(set_to_none=True)
    w = model.backward(losses, **{**STCH_DEFAULTS, "STCH_warmup_epoch": 0})
    assert model.stch_reference is not None and torch.isfinite(w).all() and (w > 0).all()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters() if p.grad is not None)


def test_state_survives_the_checkpoint_attribute_saver():
    """The accumulation over the estimate epoch is plain attributes: a run saved half-way through it and resumed
    fixes the same reference and the same weights."""
    opts = {"STCH_warmup_epoch": 1}
    steps = [([2.0, 0.5], 1), ([4.0, 1.5], 1), ([1.0, 3.0], 1), ([3.0, 2.0], 2), ([2.0, 1.0], 2)]
    whole = probe_model(STCH, G)
    expected = [run(whole, losses, epoch, **opts)[1] for losses, epoch in steps]
    first = probe_model(STCH, G)
    for losses, epoch in steps[:2]:
        run(first, losses, epoch, **opts)
    state = attribute_state(first)
    assert {"stch_loss_sum", "stch_loss_count", "stch_reference"} <= set(state[""])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = probe_model(STCH, G)
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for (losses, epoch), e in zip(steps[2:], expected[2:]):
        torch.testing.assert_close(torch.from_numpy(run(resumed, losses, epoch, **opts)[1]), torch.from_numpy(e))
    torch.testing.assert_close(resumed.stch_reference, whole.stch_reference)
    assert math.isclose(float(resumed.stch_reference[0]), (2.0 + 4.0 + 1.0) / 3)
