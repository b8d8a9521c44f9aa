"""FAMO (written here): hand-computed steps of both logit updates, a task whose log-loss drops less gains weight,
the weights are convex and the shared gradient is their combination, options are checked, a model steps, and the
state survives a checkpoint."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from method_probes import probe_model, probe_step

from mtlbench.errors import ConfigError
from mtlbench.methods.famo import (
    FAMO,
    FAMO_DEFAULTS,
    famo_logit_gradient,
    famo_loss_weights,
)
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["FAMO"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}
G = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0]], dtype=torch.float64)


def run(model, losses, **opts):
    """One backward of the probe model whose losses are exactly ``losses``: (shared gradient, weights)."""
    return probe_step(model, G, torch.tensor(losses, dtype=torch.float64), **{**FAMO_DEFAULTS, **opts})


def test_defaults_are_libmtl_mains():
    assert FAMO_DEFAULTS == {"FAMO_w_lr": 0.025, "FAMO_w_gamma": 1e-3, "FAMO_w_optim": "adam"}


def test_first_step_by_hand():
    """xi = 0: z = (1/2, 1/2), c = 1 / (0.5/1 + 0.5/2) = 4/3, w = c z / l = (2/3, 1/3); the shared gradient is
    w_1 g_1 + w_2 g_2."""
    model = probe_model(FAMO, G)
    grad, w = run(model, [1.0, 2.0])
    torch.testing.assert_close(torch.from_numpy(w), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(grad, (2 / 3) * G[0] + (1 / 3) * G[1])
    assert torch.equal(model.famo_logits, torch.zeros(2))   # the first step only weights


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_second_step_by_hand_sgd(gamma):
    """Algorithm 1's plain step from xi = 0: delta = (log 1 - log 0.5, log 2 - log 1.8) = (ln 2, ln(10/9));
    J^T delta = z (delta - z.delta) = ((d1 - d2)/4, -(d1 - d2)/4); gamma xi = 0; xi = -beta J^T delta."""
    model = probe_model(FAMO, G)
    run(model, [1.0, 2.0], FAMO_w_optim="sgd", FAMO_w_gamma=gamma)
    _, w = run(model, [0.5, 1.8], FAMO_w_optim="sgd", FAMO_w_gamma=gamma)
    d = (math.log(2.0) - math.log(10 / 9)) / 4
    xi = torch.tensor([-0.025 * d, 0.025 * d])
    torch.testing.assert_close(model.famo_logits, xi, rtol=1e-6, atol=1e-7)
    z = torch.softmax(xi.double(), 0)
    expected = (z / torch.tensor([0.5, 1.8], dtype=torch.float64)) / (z / torch.tensor([0.5, 1.8])).sum()
    torch.testing.assert_close(torch.from_numpy(w), expected, rtol=1e-6, atol=1e-7)
    # a third step: the decay gamma xi now acts
    run(model, [0.5, 1.8], FAMO_w_optim="sgd", FAMO_w_gamma=gamma)
    torch.testing.assert_close(model.famo_logits, xi - 0.025 * gamma * xi, rtol=1e-6, atol=1e-8)


def test_second_step_by_hand_adam():
    """Adam's first step: m^ = g, v^ = g^2, so xi = -beta g / (|g| + 1e-8) = -beta sign(g) (gamma xi = 0 at xi = 0)."""
    model = probe_model(FAMO, G)
    run(model, [1.0, 2.0])
    run(model, [0.5, 1.8])
    torch.testing.assert_close(model.famo_logits, torch.tensor([-0.025, 0.025]), rtol=0, atol=1e-6)
    assert model.famo_adam_t == 1


def test_logit_gradient_is_the_softmax_vjp():
    xi = torch.tensor([0.3, -1.0, 0.5], requires_grad=True)
    delta = torch.tensor([0.2, -0.1, 0.7])
    (auto,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
    torch.testing.assert_close(famo_logit_gradient(xi.detach(), delta), auto)


@pytest.mark.parametrize("optim, lr", [("adam", 0.1), ("sgd", 5.0)])
def test_task_whose_loss_drops_less_gains_weight(optim, lr):
    """Loss 1 falls 10% a step, loss 2 1%: z_2 (the logit softmax) rises every step, and task 2's loss weight
    ends above what equal logits would give it."""
    model = probe_model(FAMO, G)
    z2 = []
    for t in range(20):
        run(model, [0.9 ** t, 0.99 ** t], FAMO_w_optim=optim, FAMO_w_lr=lr)
        z2.append(float(torch.softmax(model.famo_logits, 0)[1]))
    assert all(b > a for a, b in itertools.pairwise(z2[1:])), z2
    assert z2[-1] > 0.6
    losses = torch.tensor([0.9 ** 19, 0.99 ** 19], dtype=torch.float64)
    equal = famo_loss_weights(torch.zeros(2), losses)
    _, w = run(model, losses.tolist(), FAMO_w_optim=optim, FAMO_w_lr=0.0)
    assert w[1] > float(equal[1])


def test_weights_are_convex_and_the_gradient_is_their_combination():
    gen = torch.Generator().manual_seed(0)
    g3 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    model = probe_model(FAMO, g3)
    for _ in range(4):
        offset = torch.rand(3, generator=gen, dtype=torch.float64) * 5 + 0.1
        grad, w = probe_step(model, g3, offset, **FAMO_DEFAULTS)
        assert (w > 0).all() and abs(w.sum() - 1) < 1e-6
        torch.testing.assert_close(grad, torch.from_numpy(w) @ g3)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.FAMO: unknown option 'gamma'"):
        parse_spec({**ONE_CELL, "weight_args": {"FAMO": {"gamma": 0.01}}})
    with pytest.raises(ConfigError, match="FAMO_w_optim must be one of"):
        parse_spec({**ONE_CELL, "weight_args": {"FAMO": {"FAMO_w_optim": "rmsprop"}}})
    assert parse_spec({**ONE_CELL, "weight_args": {"FAMO": {"FAMO_w_gamma": 0.0}}}).weight_args


def test_end_to_end_step(hps_step):
    w, model = hps_step("FAMO")
    assert w.shape == (2,) and torch.isfinite(w).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    assert model.famo_prev_log_losses.shape == (2,)


def test_state_survives_the_checkpoint_attribute_saver():
    """Logits, previous log-losses and Adam's moments are plain attributes: saved by ``attribute_state``, through
    torch.save, into a fresh model, the sequence goes on as if uninterrupted."""
    seq = [[2.0 * 0.8 ** t, 1.0 * 0.97 ** t] for t in range(6)]
    whole = probe_model(FAMO, G)
    expected = [run(whole, losses)[1] for losses in seq]
    first = probe_model(FAMO, G)
    for losses in seq[:3]:
        run(first, losses)
    state = attribute_state(first)
    assert {"famo_logits", "famo_prev_log_losses", "famo_adam_m", "famo_adam_v", "famo_adam_t"} <= set(state[""])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = probe_model(FAMO, G)
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for losses, e in zip(seq[3:], expected[3:]):
        torch.testing.assert_close(torch.from_numpy(run(resumed, losses)[1]), torch.from_numpy(e))
    torch.testing.assert_close(resumed.famo_logits, whole.famo_logits)
