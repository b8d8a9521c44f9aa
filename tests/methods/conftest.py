"""Shared fixtures of the per-method tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtlbench.models.mtl import build_mtl_model


@pytest.fixture
def hps_step():
    """One training step of an HPS x ``weighting`` x decoder1 model on random data: (weights, model)."""

    def step(weighting: str, **weight_args):
        torch.manual_seed(0)
        built = build_mtl_model("HPS", weighting, "decoder1", num_classes=3, img_size=32,
                                device=torch.device("cpu"), weight_args=weight_args or None)
        model = built.module.train()
        x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)
        out = model(x)
        losses = torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                              nn.functional.mse_loss(out["reg"].reshape(-1), targets)])
        model.zero_grad(set_to_none=True)
        w = model.backward(losses, **{**built.backward_kwargs})
        grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        return w, model

    return step
