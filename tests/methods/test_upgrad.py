"""UPGrad through torchjd: the adapter's weights are torchjd's, the update conflicts with no task, a model steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchjd.aggregation import UPGradWeighting

from mtlbench.methods.torchjd_adapter import TorchDualConeProjector
from mtlbench.methods.upgrad import UPGRAD_DEFAULTS, UPGrad

CPU = torch.device("cpu")


def matrices():
    gen = torch.Generator().manual_seed(0)
    out = [torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]),           # conflicting pair
           torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]]),          # three tasks, two nearly opposite
           torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])]             # identical rows (rank 1)
    out += [torch.randn(m, 50, generator=gen) for m in (2, 3, 5)]
    return out


def adapter_weights(grads: torch.Tensor, **kwargs) -> torch.Tensor:
    w = UPGrad()
    return w.weights_for(grads, **kwargs)


@pytest.mark.parametrize("i", range(6))
def test_adapter_equals_torchjd(i):
    G = matrices()[i]
    direct = UPGradWeighting(projector=TorchDualConeProjector(norm_eps=UPGRAD_DEFAULTS["UPGrad_norm_eps"],
                                                              reg_eps=UPGRAD_DEFAULTS["UPGrad_reg_eps"]))(G @ G.T)
    torch.testing.assert_close(adapter_weights(G), direct)


def test_matches_torchjd_documented_example():
    G = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # torchjd.aggregation's docstring: tensor([1.1109, 0.7894])
    torch.testing.assert_close(adapter_weights(G), torch.tensor([1.1109, 0.7894]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("i", range(6))
def test_update_conflicts_with_no_task(i):
    G = matrices()[i].double()
    w = adapter_weights(G, UPGrad_reg_eps=0.0)
    d = w @ G
    assert torch.all(w >= -1e-9)
    assert torch.all(G @ d >= -1e-8 * G.norm() ** 2), G @ d


def test_weighting_built_once_with_first_options():
    m = UPGrad()
    m.weights_for(torch.randn(2, 5), UPGrad_reg_eps=1e-3)
    first = m.torchjd_weighting()
    m.weights_for(torch.randn(2, 5))
    assert m.torchjd_weighting() is first and first.projector.reg_eps == 1e-3


def test_end_to_end_step(hps_step):
    w, model = hps_step("UPGrad")
    assert w.shape == (2,) and torch.isfinite(w).all()


def test_rep_grad_step():
    """With rep_grad the weights come from the representation gradients; the encoder still gets finite grads."""
    from mtlbench.libmtl_compat import compose
    from mtlbench.methods.architectures import ARCHITECTURES
    from mtlbench.models.decoders import build_decoder
    from mtlbench.models.encoder import EncoderFactory

    torch.manual_seed(0)
    cls = compose(ARCHITECTURES.entry("HPS").obj, UPGrad)
    decoders = nn.ModuleDict({"cls": build_decoder("decoder1", 3), "reg": build_decoder("decoder1", 1)})
    model = cls(task_name=["cls", "reg"], encoder_class=EncoderFactory(), decoders=decoders, rep_grad=True,
                multi_input=False, device=CPU, img_size=[3, 32, 32]).train()
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)
    out = model(x)
    losses = torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                          nn.functional.mse_loss(out["reg"].reshape(-1), targets)])
    model.zero_grad(set_to_none=True)
    w = model.backward(losses, **UPGRAD_DEFAULTS)
    assert w.shape == (2,) and torch.isfinite(w).all()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
