"""Tree-bk (``mtlbench/methods/tree.py``): registration, Tree-b5 = HPS, sizes, which parameters are shared, per-task
gradients, GradDrop's representation, channels-last, pretrained copies, and every Tree-bk x weighting x decoder
cell taking an optimiser step."""

from __future__ import annotations

import pytest
import torch
import torchvision
from method_probes import arch_batch, arch_losses, graddrop_leak_one_equals_ew
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_architecture, libmtl_weighting
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
from mtlbench.methods.tree import TREE_ARCHITECTURES, Tree, TreeOptions
from mtlbench.models.decoders import DECODERS, build_decoder
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk
from mtlbench.models.mtl import build_mtl_model
from mtlbench.treemtl.costs import resnet_stages

CPU = torch.device("cpu")
TREES = [f"Tree-b{k}" for k in range(5)]
GRADIENT_WEIGHTINGS = [w.name for w in WEIGHTINGS if w.trait("gradients", False)]
LOSS_WEIGHTINGS = [w.name for w in WEIGHTINGS if not w.trait("gradients", False)]
STAGE_PARAMS = [sum(p.numel() for p in s.parameters()) for s in resnet_stages(ResNet18Trunk())]


def tree_model(k: int, weighting: type = libmtl_weighting.EW, decoder: str = "decoder1", rep_grad: bool = False,
               encoder_class=None, seed: int = 0):
    """A Tree model at branch point ``k`` (5 included) composed as ``build_mtl_model`` composes."""
    torch.manual_seed(seed)
    decoders = nn.ModuleDict({"cls": build_decoder(decoder, 3), "reg": build_decoder(decoder, 1)})
    return compose(Tree, weighting)(task_name=["cls", "reg"], encoder_class=encoder_class or EncoderFactory(False),
                                    decoders=decoders, rep_grad=rep_grad, multi_input=False, device=CPU,
                                    branch_point=k, img_size=[3, 32, 32])


def step(name: str, weighting: str, decoder: str, channels_last: bool = False, **weight_args):
    """One SGD step of a ``build_mtl_model`` cell on a random batch; returns (losses, model)."""
    torch.manual_seed(0)
    built = build_mtl_model(name, weighting, decoder, num_classes=3, img_size=32, device=CPU,
                            weight_args=weight_args or None)
    model = built.module.train()
    x, labels, targets = arch_batch()
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    # a shared weight (task 0's first branched one for Tree-b0) and a head's, to see that the step moved them
    shared = list(model.get_share_params())
    watched = [shared[0] if shared else next(model.encoder.branches[0].parameters()), model.decoders["reg"][-1].weight]
    before = [p.detach().clone() for p in watched]
    losses = arch_losses(model(x), labels, targets)
    opt.zero_grad(set_to_none=True)
    model.backward(losses, **built.backward_kwargs)
    assert torch.isfinite(losses).all(), (name, weighting, decoder, losses)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), (name, weighting, decoder)
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, watched)), "the step left a watched weight unchanged"
    return losses, model


def test_registered_names_traits_and_options():
    for k, name in enumerate(TREES):
        entry = ARCHITECTURES.entry(name)
        assert entry.obj is TREE_ARCHITECTURES[k] and issubclass(entry.obj, Tree) and entry.obj.branch_point == k
        assert entry.trait("shared", True) is (k > 0)
        assert entry.options is TreeOptions and entry.defaults == {}
        assert "Tree-Structured Multi-Task Model Recommender" in entry.reference
        assert entry.obj.__doc__.startswith(f"{name}:")
    assert "Tree-b5" not in [n for n in ARCHITECTURES.names()]   # that is LibMTL's HPS


def test_tree_b5_is_hps():
    tree = tree_model(5, seed=0)
    hps = compose(libmtl_architecture.HPS, libmtl_weighting.EW)(
        task_name=["cls", "reg"], encoder_class=EncoderFactory(False),
        decoders=nn.ModuleDict({"cls": build_decoder("decoder1", 3), "reg": build_decoder("decoder1", 1)}),
        rep_grad=False, multi_input=False, device=CPU)
    for mine, theirs in zip(tree.encoder.shared, resnet_stages(hps.encoder)):
        mine.load_state_dict(theirs.state_dict())
    tree.decoders.load_state_dict(hps.decoders.state_dict())
    assert len(tree.encoder.branches) == 0
    assert sum(p.numel() for p in tree.parameters()) == sum(p.numel() for p in hps.parameters())
    x, _, _ = arch_batch()
    for train in (False, True):
        tree.train(train), hps.train(train)
        torch.manual_seed(3)   # the same dropout masks in training
        a = tree(x)
        torch.manual_seed(3)
        b = hps(x)
        for t in ("cls", "reg"):
            torch.testing.assert_close(a[t], b[t], rtol=0, atol=0)


@pytest.mark.parametrize("decoder", sorted(DECODERS.names()))
@pytest.mark.parametrize("k", range(5))
def test_parameter_count_is_the_formula(k, decoder):
    model = build_mtl_model(f"Tree-b{k}", "EW", decoder, num_classes=3, img_size=32, device=CPU).module
    heads = sum(p.numel() for n in (3, 1) for p in build_decoder(decoder, n).parameters())
    expected = sum(STAGE_PARAMS[:k]) + 2 * sum(STAGE_PARAMS[k:]) + heads
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("k", range(6))
def test_share_params_are_exactly_the_shared_stages(k):
    model = tree_model(k)
    shared = {id(p) for p in model.get_share_params()}
    assert shared == {id(p) for stage in model.encoder.shared for p in stage.parameters()}
    assert sum(p.numel() for p in model.get_share_params()) == sum(STAGE_PARAMS[:k])
    assert len(model.encoder.shared) == k and all(len(b) == 5 - k for b in model.encoder.branches)
    branch = {id(p) for b in model.encoder.branches for p in b.parameters()}
    assert not shared & branch and shared | branch == {id(p) for p in model.encoder.parameters()}


@pytest.mark.parametrize("k", range(5))
def test_one_task_loss_leaves_the_other_branch_untouched(k):
    model = tree_model(k).train()
    x, labels, _ = arch_batch()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x)["cls"], labels).backward()
    mine, other = model.encoder.branches
    assert all(p.grad is None or not p.grad.any() for p in other.parameters())
    assert all(p.grad is None or not p.grad.any() for p in model.decoders["reg"].parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mine.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.get_share_params())


def test_forward_for_one_task_runs_only_its_branch():
    model = tree_model(2).eval()
    x, _, _ = arch_batch()
    with torch.no_grad():
        both, one = model(x), model(x, task_name="reg")
    assert set(one) == {"reg"} and torch.equal(one["reg"], both["reg"])
    # the branches are separate networks: the same input gives different features
    rep = model.encoder.shared(x)
    assert not torch.allclose(model.encoder.branches[0](rep), model.encoder.branches[1](rep))


@pytest.mark.parametrize("k", [1, 4])
def test_graddrop_representation_is_the_shared_output(k):
    model = tree_model(k, libmtl_weighting.GradDrop, rep_grad=True).train()
    reference = tree_model(k, libmtl_weighting.EW).train()
    reference.load_state_dict(model.state_dict())
    x, labels, targets = arch_batch()
    torch.manual_seed(5)   # the same dropout masks in both models
    graddrop_leak_one_equals_ew(model, reference, x, labels, targets)
    rep = model.encoder.shared(x)
    assert set(model.rep) == {"cls", "reg"} and all(r.shape == rep.shape for r in model.rep.values())


def test_tree_b0_has_no_representation():
    with pytest.raises(ValueError, match="Tree-b0"):
        tree_model(0, libmtl_weighting.GradDrop, rep_grad=True)
    with pytest.raises(ValueError, match="branch point"):
        tree_model(6)


def test_pretrained_weights_in_every_copy():
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    factory = EncoderFactory(False)
    factory.pretrained, factory._state = True, state   # the factory's own path, with a stand-in checkpoint
    model = tree_model(2, encoder_class=factory)
    reference = ResNet18Trunk(True, state)
    ref_stages = resnet_stages(reference)
    for stage, ref in zip(model.encoder.shared, ref_stages[:2]):
        for a, b in zip(stage.state_dict().values(), ref.state_dict().values()):
            assert torch.equal(a, b)
    for branch in model.encoder.branches:
        for stage, ref in zip(branch, ref_stages[2:]):
            for a, b in zip(stage.state_dict().values(), ref.state_dict().values()):
                assert torch.equal(a, b)
    # separate copies, not one module twice
    assert model.encoder.branches[0][0][0].conv1 is not model.encoder.branches[1][0][0].conv1


def test_random_init_differs_between_copies():
    model = tree_model(1)
    a, b = (br[0][0].conv1.weight for br in model.encoder.branches)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("weighting", ["PCGrad", "GradDrop"])   # parameter and representation gradients
def test_channels_last(weighting):
    losses, model = step("Tree-b2", weighting, "decoder1", channels_last=True)
    reference, _ = step("Tree-b2", weighting, "decoder1")
    torch.testing.assert_close(losses, reference, rtol=1e-4, atol=1e-5)
    conv = model.encoder.branches[0][0][0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


# Decoder 1 here, a second each; the smoke sweep (tests/test_grid.py) steps every Tree-bk x weighting x decoder cell
# through the CLI, Decoder-2 included (its wide convolutions cost seconds a cell on a CPU).
@pytest.mark.parametrize("weighting", WEIGHTINGS.names())
@pytest.mark.parametrize("name", TREES[1:])
def test_every_tree_weighting_cell_steps(name, weighting):
    assert not_applicable(ARCHITECTURES.entry(name), WEIGHTINGS.entry(weighting)) is None
    step(name, weighting, "decoder1")


@pytest.mark.parametrize("decoder", sorted(DECODERS.names()))
@pytest.mark.parametrize("weighting", LOSS_WEIGHTINGS)
def test_tree_b0_with_loss_weightings(weighting, decoder):
    assert not_applicable(ARCHITECTURES.entry("Tree-b0"), WEIGHTINGS.entry(weighting)) is None
    _, model = step("Tree-b0", weighting, decoder)
    assert list(model.get_share_params()) == []


def test_tree_b0_rejects_gradient_weightings():
    assert GRADIENT_WEIGHTINGS and LOSS_WEIGHTINGS
    for weighting in GRADIENT_WEIGHTINGS:
        reason = not_applicable(ARCHITECTURES.entry("Tree-b0"), WEIGHTINGS.entry(weighting))
        assert reason and "shares no parameters" in reason, weighting
