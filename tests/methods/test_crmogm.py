"""CR-MOGM through torchjd: the adapter's weights are torchjd's, its state is kept across steps, a model steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchjd.aggregation import CRMOGMWeighting, MGDAWeighting, UPGradWeighting

from mtlbench.methods.cr_mogm import CR_MOGM
from mtlbench.methods.torchjd_adapter import TorchDualConeProjector
from mtlbench.models.mtl import build_mtl_model

CPU = torch.device("cpu")


def sequence():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(3, 20, generator=gen, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("base", ["MGDA", "UPGrad"])
def test_adapter_equals_torchjd_over_steps(base):
    inner = MGDAWeighting() if base == "MGDA" else UPGradWeighting(projector=TorchDualConeProjector())
    direct = CRMOGMWeighting(inner, alpha=0.5)
    m = CR_MOGM()
    for G in sequence():
        torch.testing.assert_close(m.weights_for(G, CRMOGM_alpha=0.5, CRMOGM_base=base), direct(G @ G.T))


def test_moving_average():
    m, raw = CR_MOGM(), MGDAWeighting()
    seq = sequence()
    lam = m.weights_for(seq[0])
    torch.testing.assert_close(lam, raw(seq[0] @ seq[0].T))  # lambda_1 = lambda_hat_1
    for G in seq[1:]:
        lam = 0.9 * lam + 0.1 * raw(G @ G.T)
        torch.testing.assert_close(m.weights_for(G), lam)


def test_end_to_end_step():
    torch.manual_seed(0)
    built = build_mtl_model("HPS", "CR-MOGM", "decoder1", num_classes=3, img_size=32, device=CPU)
    model = built.module.train()
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)
    for _ in range(2):
        out = model(x)
        losses = torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                              nn.functional.mse_loss(out["reg"].reshape(-1), targets)])
        model.zero_grad(set_to_none=True)
        w = model.backward(losses, **built.backward_kwargs)
        assert w.shape == (2,) and torch.isfinite(w).all()
        grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_state_survives_a_fresh_model():
    """The average is a plain attribute (what checkpoints save): copied into a fresh model, the sequence goes on."""
    seq = sequence()
    whole = CR_MOGM()
    expected = [whole.weights_for(G) for G in seq]
    first = CR_MOGM()
    for G in seq[:2]:
        first.weights_for(G)
    resumed = CR_MOGM()
    resumed._crmogm_lambda = first._crmogm_lambda.clone()
    for G, e in zip(seq[2:], expected[2:]):
        torch.testing.assert_close(resumed.weights_for(G), e)
