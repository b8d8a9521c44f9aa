"""DB-MTL (written here): hand-computed steps, the tracked task gradients are equalised to the largest norm, a loss's
scale does not matter, the EMA schedule, options are checked, a model steps, and the state survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from method_probes import probe_model, probe_step, random_jacobian

from mtlbench.errors import ConfigError
from mtlbench.methods.db_mtl import DB_MTL, DB_MTL_DEFAULTS
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["DB-MTL"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}
G = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)


def run(model, grads, losses, **opts):
    """One backward of the probe model with shared gradients ``grads`` and losses exactly ``losses``."""
    return probe_step(model, grads, torch.tensor(losses, dtype=torch.float64), **{**DB_MTL_DEFAULTS, **opts})


def test_defaults_are_libmtl_mains():
    assert DB_MTL_DEFAULTS == {"DB_beta": 0.9, "DB_beta_sigma": 0.0}


def test_two_steps_by_hand():
    """Step 1, losses (2, 0.5): log-loss gradients (1.5, 0), (0, 2); EMA from 0 with beta 0.9: (0.15, 0), (0, 0.2);
    alpha = 0.2 / (0.15, 0.2) = (4/3, 1); shared gradient (0.2, 0.2).
    Step 2, losses (1, 1): gradients (3, 0), (0, 1); EMA (0.435, 0), (0, 0.28); alpha = (1, 0.435/0.28);
    shared gradient (0.435, 0.435)."""
    model = probe_model(DB_MTL, G)
    grad, alpha = run(model, G, [2.0, 0.5])
    torch.testing.assert_close(grad, torch.tensor([0.2, 0.2], dtype=torch.float64), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(alpha), torch.tensor([4 / 3, 1.0], dtype=torch.float64), rtol=1e-6,
                               atol=0)
    grad, alpha = run(model, G, [1.0, 1.0])
    torch.testing.assert_close(grad, torch.tensor([0.435, 0.435], dtype=torch.float64), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.from_numpy(alpha), torch.tensor([1.0, 0.435 / 0.28], dtype=torch.float64),
                               rtol=1e-6, atol=0)
    assert model.db_step == 2


def test_decaying_ema_rate():
    """beta_k = beta / k**sigma: with beta 0.5, sigma 1 the first step keeps half the gradient, the second 3/4 of
    it plus a quarter of the first (the task's norm is the largest, so alpha = 1)."""
    g = torch.tensor([[2.0, 0.0], [0.0, 0.1]], dtype=torch.float64)
    model = probe_model(DB_MTL, g)
    opts = {"DB_beta": 0.5, "DB_beta_sigma": 1.0}
    run(model, g, [1.0, 1.0], **opts)
    torch.testing.assert_close(model.db_grad_buffer[0], torch.tensor([1.0, 0.0], dtype=torch.float64))
    run(model, 2 * g, [1.0, 1.0], **opts)
    torch.testing.assert_close(model.db_grad_buffer[0], torch.tensor([0.25 * 1.0 + 0.75 * 4.0, 0.0],
                                                                     dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tracked_gradient_magnitudes_are_equalised_to_the_largest(seed):
    g = random_jacobian(3, 7, seed)
    gen = torch.Generator().manual_seed(seed)
    model = probe_model(DB_MTL, g)
    for _ in range(3):
        offset = torch.rand(3, generator=gen, dtype=torch.float64) * 3 + 0.2
        grad, alpha = probe_step(model, g, offset, **DB_MTL_DEFAULTS)
        scaled = torch.from_numpy(alpha).unsqueeze(1) * model.db_grad_buffer
        norms = scaled.norm(dim=1)
        torch.testing.assert_close(norms, torch.full((3,), float(model.db_grad_buffer.norm(dim=1).max()),
                                                     dtype=torch.float64), rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, scaled.sum(0))
        assert (alpha >= 1 - 1e-6).all() and abs(alpha.min() - 1) < 1e-6


def test_loss_scale_does_not_matter():
    """Log-transformed losses: multiplying a task's loss (and its gradient) by 1000 leaves the direction unchanged."""
    g = random_jacobian(2, 5, 3)
    a, b = probe_model(DB_MTL, g), probe_model(DB_MTL, g)
    scale = torch.tensor([1000.0, 1.0], dtype=torch.float64)
    for offset in ([1.0, 2.0], [0.7, 1.5], [0.4, 1.1]):
        off = torch.tensor(offset, dtype=torch.float64)
        grad_a, _ = probe_step(a, g, off, **DB_MTL_DEFAULTS)
        grad_b, _ = probe_step(b, g * scale.unsqueeze(1), off * scale, **DB_MTL_DEFAULTS)
        torch.testing.assert_close(grad_a, grad_b)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.DB-MTL: unknown option 'beta'"):
        parse_spec({**ONE_CELL, "weight_args": {"DB-MTL": {"beta": 0.5}}})
    assert parse_spec({**ONE_CELL, "weight_args": {"DB-MTL": {"DB_beta": 0.5}}}).weight_args


def test_end_to_end_step(hps_step):
    w, model = hps_step("DB-MTL")
    assert w.shape == (2,) and torch.isfinite(w).all() and (w >= 1).all()
    assert model.db_grad_buffer.shape[0] == 2 and model.db_step == 1
    for p in model.decoders.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_state_survives_the_checkpoint_attribute_saver():
    g = random_jacobian(2, 4, 5)
    offsets = [torch.tensor([1.0 + 0.3 * t, 2.0 - 0.2 * t], dtype=torch.float64) for t in range(6)]
    whole = probe_model(DB_MTL, g)
    expected = [probe_step(whole, g, o, **DB_MTL_DEFAULTS)[0] for o in offsets]
    first = probe_model(DB_MTL, g)
    for o in offsets[:3]:
        probe_step(first, g, o, **DB_MTL_DEFAULTS)
    state = attribute_state(first)
    assert {"db_step", "db_grad_buffer"} <= set(state[""])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = probe_model(DB_MTL, g)
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for o, e in zip(offsets[3:], expected[3:]):
        torch.testing.assert_close(probe_step(resumed, g, o, **DB_MTL_DEFAULTS)[0], e)
