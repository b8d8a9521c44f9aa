"""DSelect-k (``mtlbench/methods/dselect_k.py``): registration and options, the smooth-step, the gate's selection at
saturation, convex mixtures of the experts, the gate regulariser, and steps with every weighting."""

from __future__ import annotations

import pytest
import torch
from method_probes import arch_batch, step_moves
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.libmtl_compat import compose, libmtl_weighting
from mtlbench.methods.dselect_k import (
    DSELECT_K_DEFAULTS,
    ENTROPY_REG,
    LOG_EPS,
    DSelect_k,
    DSelectKGate,
    DSelectKOptions,
    smooth_step,
)
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk
from mtlbench.models.mtl import build_mtl_model
from mtlbench.registry import check_options

CPU = torch.device("cpu")
TASKS = ["cls", "reg"]


def identity_model(weighting: type = libmtl_weighting.EW, **opts):
    """DSelect-k whose decoders are the identity: each task's output is its gate's mixture of the experts."""
    torch.manual_seed(0)
    return compose(DSelect_k, weighting)(task_name=TASKS, encoder_class=EncoderFactory(False),
                                         decoders=nn.ModuleDict({t: nn.Identity() for t in TASKS}), rep_grad=False,
                                         multi_input=False, device=CPU, img_size=[3, 32, 32], **opts)


def test_registered_with_typed_options():
    entry = ARCHITECTURES.entry("DSelect-k")
    assert entry.obj is DSelect_k and entry.options is DSelectKOptions and entry.library == "mtlbench"
    assert entry.defaults == DSELECT_K_DEFAULTS == {"num_experts": [3], "num_nonzeros": 2, "kgamma": 1.0}
    assert "DSelect-k" in entry.reference
    assert check_options(entry, {"num_experts": [4], "num_nonzeros": 3, "kgamma": 2}, "x.DSelect-k")
    with pytest.raises(ConfigError, match=r"x\.DSelect-k: unknown option 'gamma'; allowed: kgamma, num_experts, "):
        check_options(entry, {"gamma": 1.0}, "x.DSelect-k")
    with pytest.raises(ConfigError, match=r"x\.DSelect-k\.num_nonzeros must be an integer"):
        check_options(entry, {"num_nonzeros": 1.5}, "x.DSelect-k")
    for bad, match in (({"num_experts": [1]}, "num_experts"), ({"num_nonzeros": 0}, "num_nonzeros"),
                       ({"kgamma": 0.0}, "kgamma")):
        with pytest.raises(ValueError, match=match):
            identity_model(**bad)


@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_smooth_step_values_and_derivative(gamma):
    t = torch.tensor([-3 * gamma, -gamma / 2, -gamma / 4, 0.0, gamma / 4, gamma / 2, 3 * gamma], dtype=torch.float64,
                     requires_grad=True)
    s = smooth_step(t, gamma)
    # inside: -2 t^3 / g^3 + 3 t / (2 g) + 1/2, so S(g/4) = -1/32 + 3/8 + 1/2 = 27/32
    expected = torch.tensor([0.0, 0.0, 5 / 32, 0.5, 27 / 32, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(s.detach(), expected, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(s.sum(), t)
    # S'(t) = -6 t^2 / g^3 + 3 / (2 g): 3/(2g) at 0, 9/(8g) at +-g/4, 0 at +-g/2 (C^1) and outside
    expected = torch.tensor([0.0, 0.0, 9 / (8 * gamma), 3 / (2 * gamma), 9 / (8 * gamma), 0.0, 0.0],
                            dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


def saturated_gate(num_experts: int, chosen: list[int], gamma: float = 1.0, in_features: int = 5) -> DSelectKGate:
    """A gate whose every bit logit sits at +-gamma (beyond +-gamma/2, the smooth-step's saturation), selector j
    spelling expert ``chosen[j]``'s binary code; selector weights from random biases."""
    torch.manual_seed(2)
    gate = DSelectKGate(in_features, num_experts, len(chosen), gamma)
    bits = gate.num_bits
    with torch.no_grad():
        gate.z_logits.weight.zero_()
        gate.z_logits.bias.copy_(torch.tensor([gamma if (c >> (bits - 1 - b)) & 1 else -gamma
                                               for c in chosen for b in range(bits)]))
        gate.w_logits.weight.zero_()
        gate.w_logits.bias.normal_()
    return gate


@pytest.mark.parametrize("num_experts,chosen", [(4, [1, 2]), (8, [0, 5, 7]), (3, [2, 0])], ids=str)
def test_saturated_gate_selects_exactly_k_experts(num_experts, chosen):
    gate = saturated_gate(num_experts, chosen)
    x = torch.randn(6, 5)
    weights, selectors = gate(x)
    assert weights.shape == (6, num_experts) and selectors.shape == (6, len(chosen), num_experts)
    # every selector one-hot on its expert; the expert weights non-zero on exactly the k chosen, summing to 1
    torch.testing.assert_close(selectors, nn.functional.one_hot(torch.tensor(chosen), num_experts).float()
                               .expand(6, -1, -1), rtol=0, atol=0)
    nonzero = (weights > 0).sum(1)
    assert (nonzero == len(chosen)).all() and set((weights[0] > 0).nonzero().flatten().tolist()) == set(chosen)
    torch.testing.assert_close(weights.sum(1), torch.ones(6))
    pi = torch.softmax(gate.w_logits.bias.detach(), 0)
    torch.testing.assert_close(weights[:, chosen], pi.expand(6, -1))
    # a random saturated gate (any code) still has one-hot selectors, so at most k experts (power of 2: sum 1)
    with torch.no_grad():
        gate.z_logits.bias.copy_(torch.randn_like(gate.z_logits.bias).sign() * 3)
    weights, selectors = gate(x)
    assert set(selectors.unique().tolist()) <= {0.0, 1.0} and ((weights > 0).sum(1) <= len(chosen)).all()


def test_gamma_is_the_smooth_steps_width():
    # LibMTL main ignores kgamma in the forward (gamma 1 always); here the width follows it, as in the paper
    wide = DSelectKGate(5, 4, 2, gamma=4.0)
    narrow = DSelectKGate(5, 4, 2, gamma=1.0)
    narrow.load_state_dict(wide.state_dict())
    with torch.no_grad():
        wide.z_logits.weight.zero_()
        wide.z_logits.bias.fill_(1.0)   # saturated for gamma 1 (1 >= 1/2), inside the cubic for gamma 4
        narrow.load_state_dict(wide.state_dict())
    x = torch.randn(2, 5)
    s = smooth_step(torch.tensor(1.0), 4.0)
    assert 0.5 < float(s) < 1.0
    b = float(s)
    torch.testing.assert_close(wide(x)[1][0, 0], torch.tensor([(1 - b) ** 2, (1 - b) * b, b * (1 - b), b * b]))
    torch.testing.assert_close(narrow(x)[1][0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_outputs_are_convex_combinations_of_the_experts():
    model = identity_model(num_experts=[4]).eval()
    x, _, _ = arch_batch()
    with torch.no_grad():
        out = model(x)
        experts = torch.stack([e(x) for e in model.experts_shared])   # [m, B, C, H, W]
        for t in TASKS:
            weights, _ = model.gates[t](x)
            assert (weights >= 0).all() and (weights > 0).sum(1).min() >= 2   # a mixture, not one expert
            torch.testing.assert_close(weights.sum(1), torch.ones(4))
            torch.testing.assert_close(out[t], torch.einsum("bm,mbchw->bchw", weights, experts))
            lo, hi = experts.min(0).values, experts.max(0).values
            assert (out[t] >= lo - 1e-5).all() and (out[t] <= hi + 1e-5).all()
    # three experts (not a power of 2): weights non-negative, their sum at most 1 (the unused code takes the rest)
    model = identity_model().eval()
    weights, _ = model.gates["cls"](x)
    assert (weights >= 0).all() and (weights.sum(1) <= 1 + 1e-6).all() and (weights.sum(1) > 0).all()


@pytest.mark.parametrize("num_experts", [3, 4])
def test_regularizer_value(num_experts):
    gate = DSelectKGate(5, num_experts, 2, 1.0)
    _, selectors = gate(torch.randn(3, 5))
    entropy = -(selectors * torch.log(selectors + LOG_EPS)).sum()
    expected = ENTROPY_REG * entropy + ((1 / selectors.sum(-1)).sum() if num_experts == 3 else 0.0)
    torch.testing.assert_close(gate.regularizer(selectors), expected)


def test_training_forward_backpropagates_every_gates_regularizer():
    model = identity_model().train()
    x, _, _ = arch_batch()
    model.zero_grad(set_to_none=True)
    model(x)
    reg = model.gate_regularizer
    assert reg is not None and not reg.requires_grad and float(reg) > 0
    for t in TASKS:   # every task's gate (LibMTL main: only the last task's), selector logits only
        assert model.gates[t].z_logits.weight.grad is not None and model.gates[t].z_logits.weight.grad.abs().sum() > 0
        assert model.gates[t].w_logits.weight.grad is None
    assert all(p.grad is None for p in model.experts_shared.parameters())
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        model(x)   # no graph: nothing to back-propagate
    model.eval()
    model(x)
    assert model.gate_regularizer is None and all(p.grad is None for p in model.parameters())
    # a learner that adds the penalty itself
    model.train().regularizer_in_forward = False
    model(x)
    assert model.gate_regularizer.requires_grad and all(p.grad is None for p in model.parameters())


def step(weighting: str, decoder: str = "decoder1", channels_last: bool = False):
    """One SGD step of a ``build_mtl_model`` DSelect-k cell; returns the model."""
    torch.manual_seed(0)
    built = build_mtl_model("DSelect-k", weighting, decoder, num_classes=3, img_size=32, device=CPU)
    model = built.module.train()
    x, labels, targets = arch_batch()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    watched = [model.experts_shared[0].conv1.weight, model.experts_shared[2].layer4[1].conv2.weight,
               model.gates["reg"].z_logits.weight, model.gates["cls"].w_logits.weight, model.decoders["cls"][-1].weight]
    step_moves(model, built.backward_kwargs, x, labels, targets, watched, weighting)
    return model


@pytest.mark.parametrize("weighting", ["EW", "PCGrad"])
def test_a_step_moves_shared_parameters_and_gates(weighting):
    step(weighting, decoder="decoder2")


def test_channels_last_step():
    model = step("PCGrad", channels_last=True)
    assert all(p.grad.stride() == p.stride() for p in model.get_share_params())


def test_parameter_count_and_shared_parameters():
    model = identity_model()
    resnet = sum(p.numel() for p in ResNet18Trunk().parameters())
    n_in, m, k = 3 * 32 * 32, 3, 2
    gate = (n_in + 1) * (k * 2) + (n_in + 1) * k   # ceil(log2 3) = 2 bits per selector, k selector weights
    assert sum(p.numel() for p in model.parameters()) == m * resnet + len(TASKS) * gate
    assert {id(p) for p in model.get_share_params()} == {id(p) for p in model.experts_shared.parameters()}


# Decoder 1 here (Decoder-2 above, with EW and PCGrad); the smoke sweep (tests/test_grid.py) steps every cell.
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_every_weighting_takes_a_step(weighting):
    assert not_applicable(ARCHITECTURES.entry("DSelect-k"), WEIGHTINGS.entry(weighting)) is None
    step(weighting)
