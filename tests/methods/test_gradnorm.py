"""GradNorm with its norms taken once: LibMTL 1.1.5's GradNorm on the same gradients and loss history, over optimiser
steps that move the learned loss scales (their gradients compared too), its equal-weighting first epoch, the
restoring force's direction, and a model step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_probes import probe_losses, probe_model, random_jacobian

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.gradnorm import GradNorm

ALPHA = 1.5


def _pair(m: int, G: torch.Tensor, epoch: int = 1):
    # LibMTL makes the loss scales float32: both models go to the probe's dtype, as the grid's float32 model is one
    ours, stock = probe_model(GradNorm, G).to(G.dtype), probe_model(libmtl_weighting.GradNorm, G).to(G.dtype)
    stock.load_state_dict(ours.state_dict())
    history = np.linspace(3.0, 1.0, m)[:, None] * np.ones((1, 3))   # first-epoch mean losses, all different
    for model in (ours, stock):
        model.epoch, model.epochs, model.train_loss_buffer = epoch, 3, history.copy()
    return ours, stock


def _step(model, G, offset):
    for p in model.parameters():
        p.grad = None
    w = model.backward(probe_losses(model, G, offset), alpha=ALPHA)
    w = w.cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w, dtype=np.float64)
    scale_grad = model.loss_scale.grad
    return w, model.encoder.theta.grad.clone(), None if scale_grad is None else scale_grad.clone()


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_equals_libmtl_gradnorm_over_steps(m, seed):
    """Six Adam steps on both models: the weights, the shared gradient and the loss scales' gradient agree each
    step, so the learned scales follow the same path."""
    seq = [random_jacobian(m, 20, seed + 100 * k) for k in range(6)]
    offset = torch.linspace(1.0, 2.0, m, dtype=torch.float64) * 5   # positive losses with different ratios
    ours, stock = _pair(m, seq[0])
    opts = [torch.optim.Adam(model.parameters(), lr=0.05) for model in (ours, stock)]
    moved = False
    for G in seq:
        (w_a, g_a, s_a), (w_b, g_b, s_b) = _step(ours, G, offset), _step(stock, G, offset)
        np.testing.assert_allclose(w_a, w_b, rtol=1e-7)
        torch.testing.assert_close(g_a, g_b, rtol=1e-7, atol=1e-9 * float(g_b.abs().max()))
        torch.testing.assert_close(s_a, s_b, rtol=1e-6, atol=1e-9)
        for opt in opts:
            opt.step()
        moved = moved or not np.allclose(w_a, 1.0)
    assert moved   # the loss scales learned something: the comparison covered the weighting step itself
    torch.testing.assert_close(ours.loss_scale, stock.loss_scale, rtol=1e-6, atol=1e-9)


def test_float32_equals_libmtl():
    G = random_jacobian(2, 50, 7).float()
    ours, stock = _pair(2, G)
    offset = torch.tensor([3.0, 1.0])
    (w_a, g_a, s_a), (w_b, g_b, s_b) = _step(ours, G, offset), _step(stock, G, offset)
    np.testing.assert_allclose(w_a, w_b, rtol=1e-6)
    torch.testing.assert_close(g_a, g_b)
    torch.testing.assert_close(s_a, s_b, rtol=1e-5, atol=1e-7)


def test_first_epoch_is_equal_weighting():
    G = random_jacobian(3, 20, 1)
    ours, stock = _pair(3, G, epoch=0)
    (w, g, s), (w_b, g_b, s_b) = _step(ours, G, None), _step(stock, G, None)
    assert w.tolist() == w_b.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(g, G.sum(0))
    torch.testing.assert_close(g, g_b, rtol=0, atol=0)
    assert s is None and s_b is None


def test_restoring_force_direction():
    """Equal gradient norms and scales: the task that trained least (largest loss ratio) has its scale's gradient
    negative, so gradient descent raises its weight; the other's is positive."""
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    ours, _ = _pair(2, G)
    ours.train_loss_buffer = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    _, _, s = _step(ours, G, torch.tensor([4.0, 1.0], dtype=torch.float64))   # task 0's loss kept its value
    assert s[0] < 0 < s[1]


def test_end_to_end_step():
    from mtlbench.models.mtl import build_mtl_model

    torch.manual_seed(0)
    built = build_mtl_model("HPS", "GradNorm", "decoder1", num_classes=3, img_size=32, device=torch.device("cpu"))
    model = built.module.train()
    model.epoch, model.epochs, model.train_loss_buffer = 1, 2, np.array([[1.2, 0.0], [3.0, 0.0]])
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)
    out = model(x)
    losses = torch.stack([torch.nn.functional.cross_entropy(out["cls"], labels),
                          torch.nn.functional.mse_loss(out["reg"].reshape(-1), targets)])
    w = model.backward(losses, **built.backward_kwargs)
    assert isinstance(w, torch.Tensor) and w.shape == (2,)
    torch.testing.assert_close(w.sum(), torch.tensor(2.0))   # task_num * softmax
    assert model.loss_scale.grad is not None and torch.isfinite(model.loss_scale.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters() if p.grad is not None)


def test_follows_a_changed_loss_history():
    """The first-epoch losses are copied to the device once and again whenever the loop's buffer changes (a resumed
    run, another task history): every step still equals LibMTL's, which reads the buffer each step."""
    G = random_jacobian(3, 20, 5)
    ours, stock = _pair(3, G)
    offset = torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64)
    for first in ([3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 5.0, 2.0]):
        for model in (ours, stock):
            model.train_loss_buffer[:, 0] = first
        (w_a, g_a, s_a), (w_b, g_b, s_b) = _step(ours, G, offset), _step(stock, G, offset)
        np.testing.assert_allclose(w_a, w_b, rtol=1e-7)
        torch.testing.assert_close(s_a, s_b, rtol=1e-6, atol=1e-9)
    assert ours._gradnorm_first[0] == (1.0, 5.0, 2.0)
