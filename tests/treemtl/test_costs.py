"""TreeMTL's cost model measured on built models (``mtlbench/treemtl/costs.py``): ResNet-18 per-stage MACs and
parameters, agreement with one flop count of the whole trunk, layout and branch-point costs, heads, and the
parameter count of every built Tree-bk trunk."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mtlbench.models.decoders import build_decoder
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk
from mtlbench.treemtl.costs import (STAGE_NAMES, branch_layout, head_cost, layout_cost_of, model_cost, stage_costs,
                                    tree_cost, trunk_macs)
from mtlbench.treemtl.layouts import layout_key, parse_key

RESNET18_224_MACS_M = (118.0, 462.4, 411.0, 411.0, 411.0)
RESNET18_PARAMS = (9_536, 147_968, 525_568, 2_099_712, 8_393_728)


@pytest.fixture(scope="module")
def trunk() -> nn.Module:
    torch.manual_seed(0)
    return ResNet18Trunk()


@pytest.fixture(scope="module")
def at224(trunk):
    return stage_costs(trunk, 224)


@pytest.fixture(scope="module")
def at32(trunk):
    return stage_costs(trunk, 32)


def test_resnet18_stages_at_224(at224):
    assert len(at224.macs) == len(STAGE_NAMES) == 5
    for got, want in zip(at224.macs, RESNET18_224_MACS_M):
        assert abs(got / 1e6 - want) < 0.1, (got, want)
    assert at224.params == RESNET18_PARAMS
    assert at224.out_shape == (512, 7, 7) and at224.img_size == 224
    # the stem by hand: a 7x7 conv, 3 -> 64 channels, onto a 112 x 112 map
    assert at224.macs[0] == 112 * 112 * 64 * 3 * 7 * 7


@pytest.mark.parametrize("size", [224, 32, 100])
def test_stage_costs_equal_one_count_of_the_whole_trunk(trunk, size):
    costs = stage_costs(trunk, size)
    assert sum(costs.macs) == trunk_macs(trunk, size)
    assert sum(costs.params) == sum(p.numel() for p in trunk.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk.eval()(torch.zeros(1, 3, size, size))
    assert costs.total_macs == counter.get_total_flops() / 2


def test_measurement_keeps_the_training_mode(trunk):
    trunk.train()
    stage_costs(trunk, 32)
    assert trunk.training
    assert stage_costs(None, 32) == stage_costs(trunk, 32)  # the default is a fresh ResNet-18 trunk


def test_branch_layouts():
    assert layout_key(branch_layout(0)) == "0/1|0/1|0/1|0/1|0/1"
    assert layout_key(branch_layout(2)) == "0,1|0,1|0/1|0/1|0/1"
    assert layout_key(branch_layout(5, n_tasks=3)) == "0,1,2|0,1,2|0,1,2|0,1,2|0,1,2"
    with pytest.raises(ValueError):
        branch_layout(6)


@pytest.mark.parametrize("k", range(6))
def test_tree_cost_is_shared_once_and_branched_per_task(at224, k):
    cost = tree_cost(k, at224)
    assert cost.params == sum(at224.params[:k]) + 2 * sum(at224.params[k:])
    assert cost.macs == pytest.approx(sum(at224.macs[:k]) + 2 * sum(at224.macs[k:]))
    assert cost.params_pct == pytest.approx(-100 * sum(at224.params[:k]) / (2 * at224.total_params))
    if k == 0:
        assert cost.macs_pct == 0 and cost.params_pct == 0
    if k == 5:
        assert cost.macs_pct == pytest.approx(-50) and cost.params_pct == pytest.approx(-50)


def test_any_layout(at224):
    layout = parse_key("0,1,2|0,1,2|0,1/2|0,1/2|0/1/2")   # 3 tasks: groups per block 1, 1, 2, 2, 3
    cost = layout_cost_of(layout, at224)
    groups = (1, 1, 2, 2, 3)
    assert cost.params == sum(g * p for g, p in zip(groups, at224.params))
    assert cost.macs == pytest.approx(sum(g * m for g, m in zip(groups, at224.macs)))
    with pytest.raises(ValueError):
        layout_cost_of(parse_key("0,1|0/1|0,1|0/1|0/1"), at224)   # block 2 does not refine block 1
    with pytest.raises(ValueError):
        layout_cost_of(parse_key("0,1|0/1"), at224)   # 2 blocks for a 5-stage trunk


@pytest.mark.parametrize("decoder", ["decoder1", "decoder2"])
def test_heads_are_reported_apart(at224, decoder):
    heads_params = sum(p.numel() for n in (6, 1) for p in build_decoder(decoder, n).parameters())
    cost = model_cost(3, decoder, (6, 1), at224)
    assert cost.backbone == tree_cost(3, at224)
    assert cost.heads_params == heads_params
    assert cost.params == cost.backbone.params + heads_params
    assert cost.heads_macs > 0 and cost.macs == cost.backbone.macs + cost.heads_macs
    macs, params = head_cost(decoder, 6, at224.out_shape)
    assert params == sum(p.numel() for p in build_decoder(decoder, 6).parameters())
    if decoder == "decoder1":   # pooling, then fc 512 -> 512 and fc 512 -> 6
        assert macs == 512 * 512 + 512 * 6
    three = model_cost(parse_key("0,1,2|0,1,2|0,1/2|0,1/2|0,1/2"), decoder, (6, 1, 1), at224)
    assert three.heads_params == heads_params + sum(p.numel() for p in build_decoder(decoder, 1).parameters())
    with pytest.raises(ValueError):
        model_cost(parse_key("0,1,2|0,1,2|0,1/2|0,1/2|0,1/2"), decoder, (6, 1), at224)


@pytest.mark.parametrize("k", range(6))
def test_built_tree_trunks_match_the_cost_model(at32, k):
    from mtlbench.methods.tree import Tree

    torch.manual_seed(0)
    model = Tree(["a", "b"], EncoderFactory(False), nn.ModuleDict({"a": nn.Identity(), "b": nn.Identity()}),
                 rep_grad=False, multi_input=False, device=torch.device("cpu"), branch_point=k)
    cost = tree_cost(k, at32)
    assert sum(p.numel() for p in model.encoder.parameters()) == cost.params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() / 2 == cost.macs


def test_registered_tree_models_match_the_cost_model(at32):
    from mtlbench.models.mtl import build_mtl_model

    for k in range(5):
        built = build_mtl_model(f"Tree-b{k}", "EW", "decoder1", num_classes=6, img_size=32,
                                device=torch.device("cpu"))
        cost = model_cost(k, "decoder1", (6, 1), at32)
        assert sum(p.numel() for p in built.module.encoder.parameters()) == cost.backbone.params
        assert sum(p.numel() for p in built.module.parameters()) == cost.params


def test_measuring_the_trunk_leaves_the_global_rng_alone():
    """Runs record their backbone MACs: measuring must not shift the RNG that a run's training draws from (a resumed
    run would otherwise differ from an uninterrupted one, depending on what the process measured before)."""
    from mtlbench.treemtl.costs import resnet18_stage_costs

    resnet18_stage_costs.cache_clear()
    state = torch.get_rng_state()
    resnet18_stage_costs(32)
    assert torch.equal(state, torch.get_rng_state())
