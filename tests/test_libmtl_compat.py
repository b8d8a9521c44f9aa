"""One test per LibMTL 1.1.5 quirk fixed in mtlbench.libmtl_compat, and the device-side gradient path checked
against LibMTL's stock path on the same gradients."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from mtlbench import libmtl_compat as compat
from mtlbench.libmtl_compat import AbsWeighting, compose, libmtl_architecture as A, libmtl_weighting as W
from mtlbench.methods.weightings import WEIGHTINGS, backward_kwargs
from mtlbench.methods.cagrad import CAGrad
from mtlbench.models.decoders import build_decoder
from mtlbench.models.encoder import EncoderFactory

DEV = torch.device("cpu")


def build(arch, weighting, rep_grad=False, mixin=True, old_zero_grad=False, **arch_kwargs):
    cls = compose(arch, weighting) if mixin else _stock_compose(arch, weighting, old_zero_grad)
    torch.manual_seed(0)
    decoders = nn.ModuleDict({"cls": build_decoder("decoder1", 3), "reg": build_decoder("decoder1", 1)})
    m = cls(task_name=["cls", "reg"], encoder_class=EncoderFactory(), decoders=decoders, rep_grad=rep_grad,
            multi_input=False, device=DEV, img_size=[3, 32, 32], **arch_kwargs)
    m.epoch, m.epochs, m.train_loss_buffer = 2, 3, np.ones((2, 3))
    return m


def _stock_compose(arch, weighting, old_zero_grad=False):
    class Stock(arch, weighting):  # exactly LibMTL's Trainer._prepare_model
        def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs):
            super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
            self.init_param()

    if old_zero_grad:
        # torch < 2.0 semantics, which LibMTL 1.1.5 was written for: zero_grad() zeroes, it does not free.
        Stock.zero_grad_share_params = lambda self: self.encoder.zero_grad(set_to_none=False)
    return Stock


def losses_of(m, seed=0):
    torch.manual_seed(seed)  # dropout in the decoders draws from the global generator
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g)
    out = m(x)
    y = torch.tensor([0, 1, 2, 0])
    return torch.stack([nn.functional.cross_entropy(out["cls"], y),
                        nn.functional.mse_loss(out["reg"].reshape(-1), torch.randn(4, generator=g))])


def test_quirk1_import_works_without_torchvision_models_utils():
    import sys
    assert "torchvision.models.utils" in sys.modules
    assert hasattr(sys.modules["torchvision.models.utils"], "load_state_dict_from_url")
    assert compat.LIBMTL_VERSION


def test_quirk2_task_gradients_stay_on_device_and_equal_stock():
    ours, stock = build(A.HPS, W.PCGrad), build(A.HPS, W.PCGrad, mixin=False)
    stock.load_state_dict(ours.state_dict())
    ours._compute_grad_dim(), stock._compute_grad_dim()
    g_ours = ours._compute_grad(losses_of(ours), "backward")
    # stock path needs existing .grad tensors (it writes param.grad.data later); here it only reads.
    g_stock = stock._compute_grad(losses_of(stock), "backward")
    assert g_ours.device == DEV and g_ours.shape == g_stock.shape
    torch.testing.assert_close(g_ours, g_stock, rtol=1e-5, atol=1e-7)


def test_quirk3_reset_grad_works_when_grads_are_none():
    m = build(A.HPS, W.EW)
    for p in m.parameters():
        p.grad = None
    m._compute_grad_dim()
    vec = torch.arange(m.grad_dim, dtype=torch.float32)
    m._reset_grad(vec)
    flat = torch.cat([p.grad.reshape(-1) for p in m.get_share_params()])
    torch.testing.assert_close(flat, vec)
    # contiguous parameters' gradients are views of the combined vector: no copy of it
    assert all(p.grad.untyped_storage().data_ptr() == vec.untyped_storage().data_ptr() for p in m.get_share_params())
    with pytest.raises(AttributeError):  # the stock method fails on grad=None
        stock = build(A.HPS, W.EW, mixin=False)
        for p in stock.parameters():
            p.grad = None
        stock._compute_grad_dim()
        AbsWeighting._reset_grad(stock, vec)


@pytest.mark.parametrize("name", [n for n in WEIGHTINGS.names() if n not in ("EW", "UW", "DWA", "GLS", "RLW")])
def test_quirk11_shared_gradients_keep_the_parameters_channels_last_layout(name):
    """Fused Adam on CUDA needs every gradient in its parameter's layout; the combined gradient a weighting writes
    must be channels-last where the parameter is (on a CPU the step would not complain, so the strides are checked)."""
    torch.manual_seed(0)
    from mtlbench.models.mtl import build_mtl_model
    from mtlbench.train.learners import MTLLearner

    built = build_mtl_model("HPS", name, "decoder1", num_classes=3, img_size=32, device=DEV)
    built.module.to(memory_format=torch.channels_last)
    learner = MTLLearner(built.module, built.backward_kwargs, epochs=2)
    learner.start_epoch(2, 2)   # past GradNorm's EW epoch
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    learner.train_step(x, torch.tensor([0, 1, 2, 0]), torch.randn(4))
    conv = [(n, p) for n, p in built.module.encoder.named_parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for _, p in conv)
    bad = [n for n, p in built.module.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert not bad, bad[:5]


def test_quirk4_autograd_mode_handles_unused_parameters():
    m = build(A.HPS, W.EW)
    m.encoder.extra = nn.Linear(2, 2)  # a shared parameter no loss uses
    m._compute_grad_dim()
    g = m._compute_grad(losses_of(m), "autograd")
    assert g.shape == (2, m.grad_dim) and torch.isfinite(g).all()


def test_quirk5_composition_matches_libmtl_trainer_mro():
    cls = compose(A.MTAN, W.IMTL)
    mro = cls.__mro__
    assert mro[1] is compat.DeviceGradients and A.MTAN in mro and W.IMTL in mro
    m = build(A.MTAN, W.IMTL)
    assert hasattr(m, "loss_scale")  # init_param ran


def test_quirk6_rlw_and_gradnorm_get_their_defaults():
    kwargs, rep_grad = backward_kwargs("RLW")
    assert kwargs == {"dist": "Normal"} and not rep_grad
    m = build(A.HPS, W.RLW)
    w = m.backward(losses_of(m), **kwargs)
    assert np.isclose(np.sum(w), 1.0)
    m = build(A.HPS, W.GradNorm)
    w = m.backward(losses_of(m), **backward_kwargs("GradNorm")[0])
    assert m.loss_scale.grad is not None and np.all(np.isfinite(w))


def test_quirk7_mtan_builds_from_the_resnet_trunk():
    m = build(A.MTAN, W.EW)
    assert len(m.encoder.encoder_att) == 4


def test_quirk8_mtan_attention_keeps_its_gradients_under_gradient_weightings():
    m = build(A.MTAN, W.PCGrad)
    m.backward(losses_of(m))
    att = list(m.encoder.encoder_att.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in att)
    stock = build(A.MTAN, W.PCGrad, mixin=False)
    stock._compute_grad_dim()
    stock._compute_grad(losses_of(stock), "backward")
    # the stock zero_grad_share_params wiped the task-specific attention gradients
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in stock.encoder.encoder_att.parameters())


def test_quirk9_cross_stitch_graddrop_reaches_every_branch():
    m = build(A.Cross_stitch, W.GradDrop, rep_grad=True)
    m.backward(losses_of(m), leak=0.0)
    assert all(p.grad is not None for p in m.parameters())
    stock = build(A.Cross_stitch, W.GradDrop, rep_grad=True, mixin=False)
    stock.backward(losses_of(stock), leak=0.0)
    assert any(p.grad is None for p in stock.encoder.parameters())


def test_quirk10_cagrad_two_tasks_and_equal_to_stock_for_three():
    m = build(A.HPS, CAGrad)
    w = m.backward(losses_of(m), calpha=0.5, rescale=1)
    assert len(w) == 2 and np.isclose(w.sum(), 1.0)

    class Three:  # the stock objective only works for three tasks: compare on a 3-task Gram matrix
        task_num, rep_grad, device = 3, False, DEV
    grads = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    results = []
    for cls in (CAGrad, W.CAGrad):
        obj = Three()
        obj._compute_grad_dim = lambda: None
        obj._compute_grad = lambda losses, mode: grads
        captured = {}
        obj._reset_grad = lambda g: captured.setdefault("g", g)
        cls.backward(obj, None, calpha=0.5, rescale=1)
        results.append(captured["g"])
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["EW", "GradNorm", "MGDA-loss", "MGDA-loss+", "MGDA-l2", "UW", "DWA", "GLS",
                                  "PCGrad", "GradVac", "IMTL", "RLW"])
def test_weighting_output_unchanged_by_device_side_rewrite(name):
    """Same model, same batch, same RNG: the stock LibMTL path and ours give the same weights and gradients."""
    entry = WEIGHTINGS.entry(name)
    kwargs, rep_grad = backward_kwargs(name)
    ours, stock = build(A.HPS, entry.obj), build(A.HPS, entry.obj, mixin=False, old_zero_grad=True)
    stock.load_state_dict(ours.state_dict())
    # the stock path writes param.grad.data, so it needs gradients to exist (old zero_grad semantics)
    for p in stock.parameters():
        p.grad = torch.zeros_like(p)
    grads = []
    for m in (ours, stock):
        random.seed(0), torch.manual_seed(0)
        w = m.backward(losses_of(m), **kwargs)
        grads.append((np.asarray(w, dtype=np.float64),
                      torch.cat([p.grad.reshape(-1) for p in m.get_share_params()])))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
