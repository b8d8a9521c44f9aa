"""PLE (``mtlbench/methods/ple.py``): registration and options, one extraction layer = LibMTL's CGC, the paper's
layer-to-layer wiring, sizes, shared parameters, channels-last, and steps with every weighting."""

from __future__ import annotations

import pytest
import torch
from method_probes import arch_batch, arch_losses, step_moves, two_heads
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.libmtl_compat import compose, libmtl_architecture, libmtl_weighting
from mtlbench.methods.ple import PLE, PLE_DEFAULTS, PLEOptions
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk
from mtlbench.models.mtl import build_mtl_model
from mtlbench.registry import check_options
from mtlbench.treemtl.costs import resnet_stages

CPU = torch.device("cpu")
TASKS = ["cls", "reg"]
RESNET = sum(p.numel() for p in ResNet18Trunk().parameters())
# Per-example input size of each ResNet-18 stage at 32 px: the image, then 64x8x8 after the stem and after layer1,
# 128x4x4 after layer2, 256x2x2 after layer3.
STAGE_INPUTS = [3 * 32 * 32, 64 * 8 * 8, 64 * 8 * 8, 128 * 4 * 4, 256 * 2 * 2]


def ple_model(weighting: type = libmtl_weighting.EW, rep_grad: bool = False, seed: int = 0, heads=None, **opts):
    torch.manual_seed(seed)
    return compose(PLE, weighting)(task_name=TASKS, encoder_class=EncoderFactory(False),
                                   decoders=heads if heads is not None else two_heads(), rep_grad=rep_grad,
                                   multi_input=False, device=CPU, img_size=[3, 32, 32], **opts)


def test_registered_with_typed_options():
    entry = ARCHITECTURES.entry("PLE")
    assert entry.obj is PLE and entry.options is PLEOptions and entry.library == "mtlbench"
    assert entry.defaults == PLE_DEFAULTS == {"num_experts": [1, 1, 1], "extraction_layers": [1, 1, 1, 1, 1],
                                              "shared_gate": True}
    assert "Progressive Layered Extraction" in entry.reference and entry.trait("shared", True)
    assert check_options(entry, {"num_experts": [2, 1, 1], "extraction_layers": [2, 3]}, "x.PLE")
    with pytest.raises(ConfigError, match=r"x\.PLE: unknown option 'num_levels'; allowed: extraction_layers, "):
        check_options(entry, {"num_levels": 2}, "x.PLE")
    with pytest.raises(ConfigError, match=r"unknown option 'img_size'"):   # filled from the protocol, never given
        check_options(entry, {"img_size": [3, 8, 8]}, "x.PLE")
    with pytest.raises(ConfigError, match=r"x\.PLE\.num_experts must be a list of integers"):
        check_options(entry, {"num_experts": 3}, "x.PLE")


@pytest.mark.parametrize("opts,match", [({"num_experts": [1, 1]}, "num_experts"),
                                        ({"num_experts": [0, 1, 0]}, "at least one expert"),
                                        ({"extraction_layers": [2, 2]}, "summing to 5"),
                                        ({"extraction_layers": [0, 5]}, "extraction_layers")])
def test_bad_options_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        ple_model(**opts)


@pytest.mark.parametrize("num_experts", [[1, 1, 1], [2, 1, 2]], ids=str)
def test_one_extraction_layer_is_libmtl_cgc(num_experts):
    ple = ple_model(num_experts=num_experts, extraction_layers=[5])
    torch.manual_seed(7)
    cgc = compose(libmtl_architecture.CGC, libmtl_weighting.EW)(
        task_name=TASKS, encoder_class=EncoderFactory(False), decoders=two_heads(), rep_grad=False,
        multi_input=False, device=CPU, img_size=[3, 32, 32], num_experts=num_experts)
    (layer,) = ple.encoder.layers
    assert layer.shared_gate is None   # the last (only) layer has no shared gate
    for mine, theirs in zip(layer.shared, cgc.experts_shared, strict=True):
        mine.load_state_dict(nn.Sequential(*resnet_stages(theirs)).state_dict())
    for t in TASKS:
        for mine, theirs in zip(layer.specific[t], cgc.experts_specific[t], strict=True):
            mine.load_state_dict(nn.Sequential(*resnet_stages(theirs)).state_dict())
        layer.task_gates[t].load_state_dict(cgc.gate_specific[t][0].state_dict())   # [shared..., own...] both
    ple.decoders.load_state_dict(cgc.decoders.state_dict())
    assert sum(p.numel() for p in ple.parameters()) == sum(p.numel() for p in cgc.parameters())
    assert sum(p.numel() for p in ple.get_share_params()) == sum(p.numel() for p in cgc.get_share_params())
    x, _, _ = arch_batch()
    for train in (False, True):
        ple.train(train), cgc.train(train)
        torch.manual_seed(3)   # the same dropout masks
        a = ple(x)
        torch.manual_seed(3)
        b = cgc(x)
        for t in TASKS:
            torch.testing.assert_close(a[t], b[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_experts", [[1, 1, 1], [2, 1, 2]], ids=str)
def test_without_shared_gate_is_libmtls_ple(num_experts):
    # LibMTL 1.1.5's PLE (its single-input forward is LibMTL main's): five layers, no shared gate, every task
    # running the shared experts on its own path.
    ple = ple_model(num_experts=num_experts, shared_gate=False)
    torch.manual_seed(7)
    theirs = compose(libmtl_architecture.PLE, libmtl_weighting.EW)(
        task_name=TASKS, encoder_class=EncoderFactory(False), decoders=two_heads(), rep_grad=False,
        multi_input=False, device=CPU, img_size=[3, 32, 32], num_experts=num_experts)
    enc = theirs.encoder
    for i, layer in enumerate(ple.encoder.layers):
        assert layer.shared_gate is None
        for mine, block in zip(layer.shared, enc.shared_layer[str(i)], strict=True):
            mine[0].load_state_dict(block.state_dict())
        for t in TASKS:
            for mine, block in zip(layer.specific[t], enc.specific_layer[str(i)][t], strict=True):
                mine[0].load_state_dict(block.state_dict())
            layer.task_gates[t].load_state_dict(enc.gate_specific[t][i][0].state_dict())
    ple.decoders.load_state_dict(theirs.decoders.state_dict())
    assert sum(p.numel() for p in ple.parameters()) == sum(p.numel() for p in theirs.parameters())
    assert [p.shape for p in ple.get_share_params()] == [p.shape for p in theirs.get_share_params()]
    x, _, _ = arch_batch()
    for train in (False, True):
        ple.train(train), theirs.train(train)
        torch.manual_seed(3)
        a = ple(x)
        torch.manual_seed(3)
        b = theirs(x)
        for t in TASKS:
            torch.testing.assert_close(a[t], b[t], rtol=1e-5, atol=1e-6)


def _reference_encoder(model, x):
    """The paper's PLE written out: shared experts on the shared path, task experts on their task's path, task gates
    over [shared, own], a shared gate over [shared, all tasks' experts] below the last layer."""
    shared, reps = x, {t: x for t in TASKS}
    layers = model.encoder.layers
    for i, layer in enumerate(layers):
        s_out = [e(shared) for e in layer.shared]
        t_out = {t: [e(reps[t]) for e in layer.specific[t]] for t in TASKS}
        new = {}
        for t in TASKS:
            w = torch.softmax(layer.task_gates[t](reps[t].reshape(len(x), -1)), dim=1)
            new[t] = sum(w[:, j].reshape(-1, 1, 1, 1) * o for j, o in enumerate(s_out + t_out[t]))
        if i < len(layers) - 1:
            w = torch.softmax(layer.shared_gate(shared.reshape(len(x), -1)), dim=1)
            shared = sum(w[:, j].reshape(-1, 1, 1, 1) * o
                         for j, o in enumerate(s_out + t_out["cls"] + t_out["reg"]))
        reps = new
    return reps


@pytest.mark.parametrize("groups", [[1, 1, 1, 1, 1], [2, 3]], ids=str)
def test_layers_follow_the_paper(groups):
    model = ple_model(num_experts=[2, 1, 1], extraction_layers=groups).eval()
    assert [l.shared_gate is None for l in model.encoder.layers] == [False] * (len(groups) - 1) + [True]
    x, _, _ = arch_batch()
    with torch.no_grad():
        got, expected = model.encoder(x), _reference_encoder(model, x)
        for t in TASKS:
            torch.testing.assert_close(got[t], expected[t], rtol=1e-4, atol=1e-5)
        assert got["cls"].shape == (4, 512, 1, 1)
        one = model(x, task_name="reg")
        assert set(one) == {"reg"}
        torch.testing.assert_close(one["reg"], model(x)["reg"], rtol=0, atol=0)


def _gate_params(num_experts, groups, inputs, shared_gate) -> int:
    """Task gates (S + T_t outputs) in every layer, the shared gate (all experts) in every layer but the last."""
    s, tasks = num_experts[0], num_experts[1:]
    total = 0
    for i, n_in in enumerate(inputs):
        total += sum((s + t) * (n_in + 1) for t in tasks)
        if shared_gate and i < len(inputs) - 1 and s > 0:
            total += (s + sum(tasks)) * (n_in + 1)
    return total


@pytest.mark.parametrize("num_experts,groups,shared_gate", [([1, 1, 1], [1, 1, 1, 1, 1], True),
                                                            ([2, 1, 0], [2, 3], True),
                                                            ([1, 2, 1], [1, 1, 1, 1, 1], False)], ids=str)
def test_parameter_count_and_shared_parameters(num_experts, groups, shared_gate):
    model = ple_model(num_experts=num_experts, extraction_layers=groups, shared_gate=shared_gate)
    starts = [sum(groups[:i]) for i in range(len(groups))]
    inputs = [STAGE_INPUTS[s] for s in starts]
    heads = sum(p.numel() for p in two_heads().parameters())
    expected = sum(num_experts) * RESNET + _gate_params(num_experts, groups, inputs, shared_gate) + heads
    assert sum(p.numel() for p in model.parameters()) == expected
    # shared: the shared experts of every layer and the shared gates; nothing else
    shared = {id(p) for p in model.get_share_params()}
    layers = model.encoder.layers
    expect = {id(p) for l in layers for m in [l.shared] + ([l.shared_gate] if l.shared_gate else [])
              for p in m.parameters()}
    assert shared == expect and len(shared) == len(list(model.get_share_params()))
    s = num_experts[0]
    n_shared_gates = sum((s + sum(num_experts[1:])) * (n + 1) for n in inputs[:-1]) if shared_gate else 0
    assert sum(p.numel() for p in model.get_share_params()) == s * RESNET + n_shared_gates
    private = {id(p) for l in layers for m in [l.specific, l.task_gates] for p in m.parameters()}
    assert not shared & private and shared | private == {id(p) for p in model.encoder.parameters()}


def test_every_copy_is_its_own_encoder():
    layer0, layer1 = ple_model().encoder.layers[:2]
    convs = [layer0.shared[0][0][0], layer0.specific["cls"][0][0][0], layer0.specific["reg"][0][0][0]]
    assert len({id(c) for c in convs}) == 3 and not torch.equal(convs[0].weight, convs[1].weight)
    assert isinstance(layer1.shared[0][0], nn.Sequential) and len(layer1.shared[0][0]) == 2   # layer1's 2 blocks


def test_graddrop_representations_are_the_task_outputs():
    model = ple_model(libmtl_weighting.GradDrop, rep_grad=True).train()
    x, labels, targets = arch_batch()
    out = model(x)
    assert set(model.rep) == set(TASKS) and model.rep["cls"].shape == (4, 512, 1, 1)
    assert model.rep["cls"] is not model.rep["reg"]
    model.zero_grad(set_to_none=True)
    model.backward(arch_losses(out, labels, targets), leak=0.0)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.get_share_params())


def test_channels_last():
    model = ple_model(libmtl_weighting.PCGrad).eval()
    x, labels, targets = arch_batch()
    with torch.no_grad():
        reference = model(x)
    model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = model(xc)
    for t in TASKS:
        torch.testing.assert_close(got[t], reference[t], rtol=1e-4, atol=1e-4)
    model.train().zero_grad(set_to_none=True)
    model.backward(arch_losses(model(xc), labels, targets))
    for p in model.get_share_params():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.stride() == p.stride()


def step(weighting: str, decoder: str = "decoder1", **arch_args):
    """One SGD step of a ``build_mtl_model`` PLE cell; returns the model."""
    torch.manual_seed(0)
    built = build_mtl_model("PLE", weighting, decoder, num_classes=3, img_size=32, device=CPU,
                            arch_args=arch_args or None)
    model = built.module.train()
    x, labels, targets = arch_batch()
    layers = model.encoder.layers
    watched = [layers[0].shared[0][0][0].weight, layers[3].shared_gate.weight, layers[4].task_gates["reg"].weight,
               model.decoders["cls"][-1].weight]
    step_moves(model, built.backward_kwargs, x, labels, targets, watched, weighting)
    return model


@pytest.mark.parametrize("weighting", ["EW", "PCGrad"])
def test_a_step_moves_shared_parameters(weighting):
    step(weighting, decoder="decoder2")


# Decoder 1 here (Decoder-2 above, with EW and PCGrad); the smoke sweep (tests/test_grid.py) steps every cell.
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
def test_every_weighting_takes_a_step(weighting):
    assert not_applicable(ARCHITECTURES.entry("PLE"), WEIGHTINGS.entry(weighting)) is None
    step(weighting)
