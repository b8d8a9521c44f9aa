"""LTB (``mtlbench/methods/ltb.py``): its size, per-task outputs and gradients, the deterministic evaluation tree,
temperature schedules, warm-up, hard samples, evaluation-tree options, and training with LibMTL's EW / PCGrad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_probes import TinyResNet, build, task_losses

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.ltb import LTB, LTB_DEFAULTS
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk


def ltb_model(weighting: type = libmtl_weighting.EW, resnet18: bool = False, **kwargs):
    torch.manual_seed(0)
    if resnet18:
        return build(LTB, weighting, EncoderFactory(pretrained=False), ResNet18Trunk.feature_dim, pool=True,
                     **kwargs)
    return build(LTB, weighting, TinyResNet, TinyResNet.feature_dim, pool=True, **kwargs)


def test_ltb_defaults_and_size():
    # LibMTL main's training by default (hard samples, its temperature, its warm-up); the argmax tree at evaluation
    assert LTB_DEFAULTS["gumbel_hard"] is True and LTB_DEFAULTS["tau_schedule"] == "libmtl"
    assert LTB_DEFAULTS["warmup_fraction"] == 0.01 and LTB_DEFAULTS["eval_tree"] == "argmax"
    model = ltb_model(resnet18=True)
    resnet = sum(p.numel() for p in ResNet18Trunk().parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert encoder == 2 * resnet + 4 * 2 * 2  # task_num ResNet-18 trunks + the branching logits
    assert sum(p.numel() for p in model.get_share_params()) == encoder


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_ltb_per_task_outputs_and_gradients(hard):
    model = ltb_model(gumbel_hard=hard)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    reps = model.encoder(x)
    assert isinstance(reps, list) and len(reps) == 2 and all(r.shape == (4, 16, 4, 4) for r in reps)
    out = model(x)
    assert set(out) == {"cls", "reg"} and out["cls"].shape == (4, 3)
    losses = task_losses(model, x, torch.tensor([0, 1, 2, 0]), torch.randn(4, 1))
    model.backward(losses)
    for name, p in model.encoder.named_parameters():
        # A hard sample leaves branches that no child chose out of this forward; each task's last stage is its own.
        if not hard or name.startswith("stages.4.") or name == "alpha":
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    grad = model.encoder.alpha.grad.abs()
    # Soft: every branching logit is learned. Hard (straight-through): the logits of every child that the sample
    # uses downstream, at least those of the last stage, which feeds the tasks.
    assert (grad.min() if not hard else grad[-1].min()) > 0


def test_ltb_eval_is_a_deterministic_tree():
    model = ltb_model()
    with torch.no_grad():
        model.encoder.alpha.copy_(torch.tensor([[[0.0, 1.0], [0.0, 1.0]],   # stage 1: both children read branch 1
                                                [[1.0, 0.0], [0.0, 1.0]],
                                                [[1.0, 0.0], [1.0, 0.0]],   # stage 3: both read branch 0
                                                [[0.0, 1.0], [1.0, 0.0]]]))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model.encoder(x), model.encoder(x)
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        assert model.encoder.tree() == [[1, 1], [0, 1], [0, 0], [1, 0]]
        stages = model.encoder.stages
        h = stages[0][1](x)  # path of task 0: stem 1 -> layer1 of child 0 -> ... following the argmax parents
        h1 = [stages[1][0](h), stages[1][1](h)]
        h2 = [stages[2][0](h1[0]), stages[2][1](h1[1])]
        h3 = [stages[3][0](h2[0]), stages[3][1](h2[0])]
        expected = [stages[4][0](h3[1]), stages[4][1](h3[0])]
        for got, exp in zip(first, expected):
            assert torch.allclose(got, exp, atol=1e-5)
        assert not torch.allclose(first[0], first[1])  # different tasks read different leaves


def test_ltb_temperature_schedules():
    model = ltb_model()
    assert model.current_tau() == 5.0  # model.epochs unset: tau_init
    model.epochs = 100
    for epoch in (0, 3, 99):  # LibMTL main: tau(e) = (E / 20) / sqrt(e + 1), 5 -> 0.5 over 100 epochs
        model.epoch = epoch
        assert model.current_tau() == pytest.approx((100 / 20) / np.sqrt(epoch + 1), rel=1e-12)
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert model.encoder.tau == pytest.approx(0.5)

    model = ltb_model(tau_schedule="exponential", tau_init=5.0, tau_min=0.1)  # mtlbench 0.1's
    model.epochs = 10
    taus = []
    for epoch in range(10):
        model.epoch = epoch
        taus.append(model.current_tau())
    assert taus[0] == pytest.approx(5.0) and taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(taus, taus[1:]))
    with pytest.raises(ValueError):
        ltb_model(tau_init=0.1, tau_min=1.0)
    with pytest.raises(ValueError, match="tau_schedule"):
        ltb_model(tau_schedule="linear")


def _plain_sum_forward(model, x: torch.Tensor) -> list[torch.Tensor]:
    stages = model.encoder.stages
    outs = [branch(x) for branch in stages[0]]
    for s in range(1, len(stages)):
        total = sum(outs)
        outs = [branch(total) for branch in stages[s]]
    return outs


def test_ltb_warmup_reads_the_plain_sum_of_the_previous_stage():
    model = ltb_model()
    model.train()
    model.epochs, model.epoch = 300, 2  # 2 < 300 / 100: warm-up
    assert model.in_warmup()
    x = torch.randn(4, 3, 32, 32)
    model.encoder.warmup = True
    torch.manual_seed(5)
    got = model.encoder(x)
    torch.manual_seed(5)
    expected = _plain_sum_forward(model, x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    model.epoch = 3  # 3 >= 300 / 100: the search has begun
    assert not model.in_warmup()
    assert not ltb_model(warmup_fraction=0.0).in_warmup()


def test_ltb_training_samples_are_one_hot_with_gradients_to_the_logits():
    model = ltb_model()
    model.train()
    model.epochs, model.epoch = 10, 5
    model.encoder.warmup = False
    weights = model.encoder.branch_weights()
    assert set(weights.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(weights.detach().sum(-1), torch.ones(4, 2))
    (weights * torch.randn_like(weights)).sum().backward()
    assert model.encoder.alpha.grad is not None and model.encoder.alpha.grad.abs().min() > 0
    soft = ltb_model(gumbel_hard=False).encoder.train().branch_weights().detach()
    assert ((soft > 0) & (soft < 1)).all()  # mtlbench 0.1's soft mixture stays reachable


def test_ltb_eval_tree_options_and_recorded_tree():
    model = ltb_model()
    with torch.no_grad():
        model.encoder.alpha.copy_(torch.randn(4, 2, 2))
    model.eval()
    assert torch.equal(model.encoder.branch_weights(), model.encoder.branch_weights())  # argmax: deterministic
    state = model.architecture_state()
    assert state["tree"] == model.encoder.alpha.argmax(-1).tolist()
    assert state["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    sampled = ltb_model(eval_tree="sample")
    sampled.eval()
    draws = {tuple(sampled.encoder.branch_weights().argmax(-1).flatten().tolist()) for _ in range(20)}
    assert len(draws) > 1  # LibMTL's: a fresh hard tree at every evaluation forward
    with pytest.raises(ValueError, match="eval_tree"):
        ltb_model(eval_tree="mean")


@pytest.mark.parametrize("weighting", [libmtl_weighting.EW, libmtl_weighting.PCGrad], ids=lambda w: w.__name__)
def test_ltb_trains_with_libmtl_weightings(weighting):
    model = ltb_model(weighting, resnet18=True)
    model.train()
    model.epochs, model.epoch = 3, 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y_cls, y_reg = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]), torch.randn(4, 1)
    before = model.encoder.alpha.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    w = model.backward(task_losses(model, x, y_cls, y_reg))
    assert len(w) == 2 and np.isfinite(w).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    assert not torch.equal(before, model.encoder.alpha)
