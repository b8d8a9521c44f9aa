"""MTAL (``mtlbench/methods/mtal.py``): registration, the matching on hand-made banks, the limits rho > 1 (independent
networks) and rho = -1 (everything tied), tied kernels after a merge (values, gradients, optimiser steps), groups with
three tasks, the state_dict round trip, the penalty, the merge schedule, and cells built by ``build_mtl_model``."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from method_probes import TinyResNet, arch_batch, arch_losses, graddrop_leak_one_equals_ew, two_heads
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_weighting
from mtlbench.methods.mtal import (
    MTAL,
    MTAL_DEFAULTS,
    BankedConv2d,
    KernelBank,
    MTALOptions,
)
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk
from mtlbench.models.mtl import build_mtl_model

CPU = torch.device("cpu")
ROW_KEYS = {"layer", "task_a", "task_b", "kernels", "above_rho", "newly_tied", "ratio", "max_similarity",
            "mean_similarity"}


def mtal_model(weighting: type = libmtl_weighting.EW, rep_grad: bool = False, seed: int = 0, **options):
    """A two-task MTAL on ResNet-18 composed as ``build_mtl_model`` composes (decoders first, then the trunks)."""
    torch.manual_seed(seed)
    decoders = two_heads()
    return compose(MTAL, weighting)(task_name=["cls", "reg"], encoder_class=EncoderFactory(False), decoders=decoders,
                                    rep_grad=rep_grad, multi_input=False, device=CPU, img_size=[3, 32, 32],
                                    **options)


def bank_of(*tasks: list[list[float]]) -> KernelBank:
    """A bank of 1 x 2 x 2 filters (4 values each), one list of filters per task."""
    return KernelBank([torch.tensor(t, dtype=torch.float32).view(len(t), 1, 2, 2) for t in tasks])


def effective(bank: KernelBank, task: int) -> torch.Tensor:
    return bank.kernel(task).detach().flatten(1)


def conv_names(model) -> list[str]:
    return model.encoder.layer_names


def independent_copy(model):
    """Plain ResNet-18 trunks holding each task's effective weights, and copies of the decoders."""
    trunks = []
    for t in range(model.task_num):
        trunk = ResNet18Trunk()
        trunk.load_state_dict(model.task_trunk_state(t))
        trunks.append(trunk)
    return trunks, copy.deepcopy(model.decoders)


def run_independent(trunks, decoders, x) -> dict[str, torch.Tensor]:
    # the order MTAL.forward uses (trunk, head; task by task), so dropout draws the same masks after one seed
    return {task: decoders[task](trunk(x)) for trunk, task in zip(trunks, ("cls", "reg"))}


def assert_gradients_sum_over_readers(model, trunks, **tol):
    """Every stored filter's gradient is the sum of the gradients of the task filters that read it (zero if none)."""
    for name, bank in zip(conv_names(model), model.encoder.banks):
        expected = torch.zeros_like(bank.weight)
        for t, trunk in enumerate(trunks):
            expected.index_add_(0, bank.index[t], trunk.get_submodule(name).weight.grad)
        torch.testing.assert_close(bank.weight.grad, expected, msg=name, **tol)
    for t, trunk in enumerate(trunks):
        bn = dict(trunk.named_parameters())
        for pname, p in model.encoder.trunks[t].named_parameters():
            torch.testing.assert_close(p.grad, bn[pname].grad, msg=pname, **tol)


# -- registration ---------------------------------------------------------------------------------------------------
def test_registered_with_options():
    entry = ARCHITECTURES.entry("MTAL")
    assert entry.obj is MTAL and entry.options is MTALOptions and entry.library == "mtlbench"
    assert entry.trait("shared", True) and "Sharing Similar Convolution Kernel Pairs" in entry.reference
    assert entry.defaults == MTAL_DEFAULTS == {"rho": 0.4, "granularity": "filter", "layers": "all",
                                               "warmup_epochs": 1, "merge_every": 1, "alpha": 0.5, "beta": 0.5,
                                               "lam": 0.0, "init": "independent"}
    assert entry.choices["layers"] == ("all", "3x3") and entry.choices["granularity"] == ("filter",)


def test_bad_options_are_refused():
    for bad in ({"layers": "1x1"}, {"granularity": "slice"}, {"init": "pretrained"}, {"merge_every": 0},
                {"warmup_epochs": -1}, {"lam": -0.1}):
        with pytest.raises(ValueError, match="MTAL"):
            compose(MTAL, libmtl_weighting.EW)(task_name=["cls", "reg"], encoder_class=TinyResNet,
                                               decoders=nn.ModuleDict({"cls": nn.Flatten(), "reg": nn.Flatten()}),
                                               rep_grad=False, multi_input=False, device=CPU, **bad)


# -- the matching ---------------------------------------------------------------------------------------------------
def test_hand_case():
    u, v, e = [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.02, 0.0]
    u_e = [a + b for a, b in zip(u, e)]
    bank = bank_of([u, v], [u_e, [-x for x in v]])
    sim = bank.similarity(0, 1)
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64), atol=1e-3, rtol=0)
    (row,) = bank.merge(0.4)
    assert row == {"task_a": 0, "task_b": 1, "kernels": 2, "above_rho": 1, "newly_tied": 1, "ratio": 0.5,
                   "max_similarity": pytest.approx(float(sim.max())),
                   "mean_similarity": pytest.approx(float(sim.mean()))}
    expected = torch.tensor([a + b / 2 for a, b in zip(u, e)])
    for t in (0, 1):
        torch.testing.assert_close(effective(bank, t)[0], expected)
    torch.testing.assert_close(effective(bank, 0)[1], torch.tensor(v))
    torch.testing.assert_close(effective(bank, 1)[1], -torch.tensor(v))
    assert bank.index.tolist() == [[0, 1], [0, 3]] and bank.tied().tolist() == [[True, False], [True, False]]
    # ties are permanent and not counted again
    (again,) = bank.merge(0.4)
    assert again["newly_tied"] == 0 and again["ratio"] == 0.5 and bank.index.tolist() == [[0, 1], [0, 3]]


def test_alpha_beta_weight_the_pair():
    u, w = [1.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0]
    bank = bank_of([u], [w])
    bank.merge(0.4, alpha=0.75, beta=0.25)
    torch.testing.assert_close(effective(bank, 1)[0], torch.tensor([1.0, 0.125, 0.0, 0.0]))


def test_highest_similarity_first_and_one_partner_per_filter():
    # A0 is close to both B filters; B1 is closer, so B0 is left for nobody (A1 is orthogonal to it).
    bank = bank_of([[1, 0, 0, 0], [0, 0, 0, 1]], [[1, 1, 0, 0], [1, 0.1, 0, 0]])
    (row,) = bank.merge(0.4)
    assert bank.index.tolist() == [[0, 1], [2, 0]]
    assert row["above_rho"] == 2 and row["newly_tied"] == 1 and row["ratio"] == 0.5


def test_three_tasks_never_put_two_filters_of_one_task_in_a_group():
    # B0 and B1 are both close to A0 and C0: a plain union of every pair above rho would join B0 and B1.
    u = [1.0, 0.0, 0.0, 0.0]
    bank = bank_of([u, [0, 0, 0, 1]], [[1, 0.05, 0, 0], [1, -0.2, 0.1, 0]], [[1, 0, 0.05, 0], [0, 0, 1, 0]])
    rows = bank.merge(0.4)
    assert [(r["task_a"], r["task_b"]) for r in rows] == [(0, 1), (0, 2), (1, 2)]
    idx = bank.index
    assert all(len(set(idx[t].tolist())) == 2 for t in range(3))
    assert idx[0, 0] == idx[1, 0] == idx[2, 0] and idx[1, 1] != idx[0, 0]
    torch.testing.assert_close(effective(bank, 2)[0], torch.tensor([1.0, 0.05 / 3, 0.05 / 3, 0.0]))
    # random banks, every threshold: a stored filter is read by at most one filter of each task
    gen = torch.Generator().manual_seed(0)
    for rho in (-1.0, 0.0, 0.2):
        bank = KernelBank([torch.randn(12, 2, 1, 1, generator=gen) for _ in range(3)])
        for _ in range(2):
            bank.merge(rho)
            assert all(len(set(bank.index[t].tolist())) == 12 for t in range(3))
        if rho == -1.0:   # every filter is tied to at least one other task's
            assert bank.tied().all()


def test_three_task_model_at_rho_minus_one_shares_a_third():
    torch.manual_seed(0)
    tasks = ["a", "b", "c"]
    model = compose(MTAL, libmtl_weighting.EW)(
        task_name=tasks, encoder_class=TinyResNet, decoders=nn.ModuleDict({t: nn.Flatten() for t in tasks}),
        rep_grad=False, multi_input=False, device=CPU, rho=-1.0)
    convs = sum(b.weight.numel() for b in model.encoder.banks)
    before = model.unique_trunk_params()
    rows = model.epoch_end(1)
    assert len(rows) == 3 * len(model.encoder.banks) and all(set(r) == ROW_KEYS for r in rows)
    assert [(r["task_a"], r["task_b"]) for r in rows[:3]] == [("a", "b"), ("a", "c"), ("b", "c")]
    # every filter joins a group (a lone filter can always join a group lacking its task), never two of one task;
    # greedy grouping may leave some groups without a third task, so between a half and two thirds are saved
    assert model.share_ratio() == 1.0
    for bank in model.encoder.banks:
        assert all(len(set(bank.index[t].tolist())) == bank.filters for t in range(3))
    assert convs // 2 <= before - model.unique_trunk_params() <= convs * 2 // 3
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    out = model(x)
    assert all(out[t].shape == out["a"].shape for t in tasks)


# -- the limits -----------------------------------------------------------------------------------------------------
def test_rho_above_one_is_independent_networks():
    model = mtal_model(rho=1.01).train()
    torch.manual_seed(0)
    decoders = two_heads()
    trunks = [EncoderFactory(False)() for _ in range(2)]          # the same seed, the same draws
    assert model.epoch_end(1) and model.share_ratio() == 0.0
    for t, trunk in enumerate(trunks):
        state = model.task_trunk_state(t)
        assert state.keys() == trunk.state_dict().keys()
        assert all(torch.equal(state[name], p) for name, p in trunk.state_dict().items())
    x, labels, targets = arch_batch()
    torch.manual_seed(3)
    mine = model(x)
    torch.manual_seed(3)
    theirs = run_independent(trunks, decoders, x)
    for t in ("cls", "reg"):
        torch.testing.assert_close(mine[t], theirs[t], rtol=0, atol=0)
    arch_losses(mine, labels, targets).sum().backward()
    arch_losses(theirs, labels, targets).sum().backward()
    assert_gradients_sum_over_readers(model, trunks, rtol=0, atol=0)


def test_rho_minus_one_ties_every_filter_and_halves_the_convolutions():
    model = build_mtl_model("MTAL", "EW", "decoder1", num_classes=3, img_size=32, device=CPU,
                            arch_args={"rho": -1.0}).module
    convs = sum(b.weight.numel() for b in model.encoder.banks)
    bn = sum(p.numel() for trunk in model.encoder.trunks for p in trunk.parameters())
    assert model.unique_trunk_params() == convs + bn
    params = sum(p.numel() for p in model.parameters())
    rows = model.epoch_end(1)
    assert len(rows) == 20 and all(r["newly_tied"] == r["kernels"] and r["ratio"] == 1.0 for r in rows)
    assert model.share_ratio() == 1.0 and set(model.layer_share_ratios().values()) == {1.0}
    assert model.unique_trunk_params() == convs // 2 + bn
    assert sum(p.numel() for p in model.parameters()) == params   # ties change the index, never the parameters
    # both tasks read the same stored filters (in their own order: filter i of one task pairs with some j)
    assert all(sorted(b.index[0].tolist()) == sorted(b.index[1].tolist()) for b in model.encoder.banks)


# -- after a merge --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def merged():
    """A two-task MTAL after one merge at rho = 0.1, where some filters of the early layers tie."""
    model = mtal_model(rho=0.1)
    rows = model.epoch_end(1)
    return model, rows


def test_merge_rows(merged):
    model, rows = merged
    assert [r["layer"] for r in rows] == conv_names(model) and conv_names(model)[0] == "conv1"
    assert all(set(r) == ROW_KEYS and (r["task_a"], r["task_b"]) == ("cls", "reg") for r in rows)
    assert any(r["newly_tied"] > 0 for r in rows) and not all(r["ratio"] == 1 for r in rows)
    for r, bank in zip(rows, model.encoder.banks):
        assert r["kernels"] == bank.filters and 0 <= r["newly_tied"] <= min(r["above_rho"], r["kernels"])
        assert r["ratio"] == r["newly_tied"] / r["kernels"] == model.layer_share_ratios()[r["layer"]]
        assert -1 <= r["mean_similarity"] <= r["max_similarity"] <= 1
        assert (r["above_rho"] > 0) == (r["max_similarity"] > 0.1)
    assert 0 < model.share_ratio() < 1
    # each tied pair reads one stored filter; the other stored filter is dead and not counted
    tied = sum(int(b.tied()[0].sum()) * b.weight[0].numel() for b in model.encoder.banks)
    assert model.unique_trunk_params() == sum(p.numel() for p in model.encoder.parameters()) - tied


def test_tied_kernels_identical_summed_gradients_and_stay_tied(merged):
    model = copy.deepcopy(merged[0]).train()
    assert model.encoder.trunks[0].conv1.bank is model.encoder.banks[0]   # deepcopy keeps one bank per layer
    trunks, decoders = independent_copy(model)
    a, b = model.task_trunk_state(0), model.task_trunk_state(1)
    pairs = {}
    for name, bank in zip(conv_names(model), model.encoder.banks):
        i, j = (bank.index[0][:, None] == bank.index[1][None, :]).nonzero(as_tuple=True)
        pairs[name] = (i, j)
        assert torch.equal(a[f"{name}.weight"][i], b[f"{name}.weight"][j])
    # a tied filter's gradient is the sum of both tasks' gradients of their (equal) filters
    x, labels, targets = arch_batch()
    torch.manual_seed(3)
    arch_losses(model(x), labels, targets).sum().backward()
    torch.manual_seed(3)
    arch_losses(run_independent(trunks, decoders, x), labels, targets).sum().backward()
    assert_gradients_sum_over_readers(model, trunks, rtol=1e-4, atol=1e-6)
    # Adam steps keep them tied (one stored tensor) and move them
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.step()
    for _ in range(2):
        opt.zero_grad()
        arch_losses(model(x), labels, targets).sum().backward()
        opt.step()
    a2, b2 = model.task_trunk_state(0), model.task_trunk_state(1)
    for name, (i, j) in pairs.items():
        assert torch.equal(a2[f"{name}.weight"][i], b2[f"{name}.weight"][j])
    i, j = pairs["conv1"]
    assert len(i) and not torch.equal(a2["conv1.weight"][i], a["conv1.weight"][i])


def test_state_dict_round_trip_keeps_the_sharing(merged):
    model = merged[0].eval()
    state = model.state_dict()
    assert "encoder.banks.0.index" in state and not any(k.endswith("conv1.weight") for k in state
                                                        if k.startswith("encoder.trunks"))
    assert len({id(p) for p in model.parameters()}) == len(list(model.named_parameters()))
    fresh = mtal_model(rho=0.1, seed=7).eval()
    assert fresh.share_ratio() == 0.0
    fresh.load_state_dict(state)
    assert fresh.share_ratio() == model.share_ratio()
    assert all(torch.equal(p.index, q.index) for p, q in zip(fresh.encoder.banks, model.encoder.banks))
    x, _, _ = arch_batch()
    with torch.no_grad():
        mine, theirs = model(x), fresh(x)
    for t in ("cls", "reg"):
        assert torch.equal(mine[t], theirs[t])
    # the next merge continues from the same sharing, deterministically
    again = copy.deepcopy(model)
    assert fresh.merge() == again.merge()
    assert all(torch.equal(p.index, q.index) and torch.equal(p.weight, q.weight)
               for p, q in zip(fresh.encoder.banks, again.encoder.banks))


# -- the rest of the API --------------------------------------------------------------------------------------------
def test_merge_schedule():
    model = compose(MTAL, libmtl_weighting.EW)(
        task_name=["a", "b"], encoder_class=TinyResNet, decoders=nn.ModuleDict({"a": nn.Flatten(), "b": nn.Flatten()}),
        rep_grad=False, multi_input=False, device=CPU, warmup_epochs=2, merge_every=3)
    assert [model.merges_at(e) for e in range(1, 9)] == [False, True, False, False, True, False, False, True]
    assert model.epoch_end(1) == [] and len(model.epoch_end(2)) == 5


def test_penalty():
    model = mtal_model()
    assert torch.equal(model.penalty(), torch.zeros(2))
    model = mtal_model(rho=0.1, lam=0.1, layers="3x3")   # the stem and the downsample convolutions per task
    model.merge()
    expected = torch.stack([0.1 * sum(v.pow(2).sum() for k, v in model.task_trunk_state(t).items()
                                      if k.endswith(("conv1.weight", "conv2.weight", "downsample.0.weight")))
                            for t in range(2)])
    pen = model.penalty()
    torch.testing.assert_close(pen, expected)
    pen.sum().backward()
    for bank in model.encoder.banks:
        # d/dw lam ||w||^2 = 2 lam w, once per task that reads the stored filter (twice when tied, never when dead)
        readers = torch.bincount(bank.index.reshape(-1), minlength=bank.weight.shape[0]).view(-1, 1, 1, 1)
        torch.testing.assert_close(bank.weight.grad, 0.2 * readers * bank.weight.detach())
    assert model.encoder.banks[0].tied().any() and model.encoder.trunks[0].conv1.weight.grad is not None


def test_layers_3x3_leaves_stem_and_downsample_per_task():
    model = mtal_model(layers="3x3")
    assert len(conv_names(model)) == 16 and "conv1" not in conv_names(model)
    for trunk in model.encoder.trunks:
        assert type(trunk.conv1) is nn.Conv2d and type(trunk.layer2[0].downsample[0]) is nn.Conv2d
        assert isinstance(trunk.layer1[0].conv1, BankedConv2d)


def test_identical_start_collapses_at_the_first_merge(merged):
    model = mtal_model(init="identical")
    assert model.identical_start and not merged[0].identical_start
    model.epoch_end(1)
    assert model.share_ratio() == 1.0 and model.architecture_state()["identical_start"] is True


def test_pretrained_copies_start_identical():
    state = {k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    factory = EncoderFactory(False)
    factory.pretrained, factory._state = True, state   # the factory's own path, with a stand-in checkpoint
    model = compose(MTAL, libmtl_weighting.EW)(task_name=["cls", "reg"], encoder_class=factory,
                                               decoders=two_heads(), rep_grad=False, multi_input=False,
                                               device=CPU)
    assert model.identical_start
    for t in (0, 1):
        mine = model.task_trunk_state(t)
        assert all(torch.equal(mine[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_graddrop_representation_is_each_task_trunk_output(merged):
    model = mtal_model(libmtl_weighting.GradDrop, rep_grad=True, rho=0.1).train()
    model.load_state_dict(merged[0].state_dict())
    reference = copy.deepcopy(merged[0]).train()
    x, labels, targets = arch_batch()
    torch.manual_seed(5)
    graddrop_leak_one_equals_ew(model, reference, x, labels, targets)
    assert set(model.rep) == {"cls", "reg"} and all(r.shape == (4, 512, 1, 1) for r in model.rep.values())


@pytest.mark.parametrize("decoder", ["decoder1", "decoder2"])
@pytest.mark.parametrize("weighting", ["EW", "PCGrad", "GradDrop"])
def test_cells_step_after_a_merge(weighting, decoder, merged):
    torch.manual_seed(0)
    built = build_mtl_model("MTAL", weighting, decoder, num_classes=3, img_size=32, device=CPU,
                            arch_args={"rho": 0.1})
    model = built.module.train()
    assert built.hparams["architecture"]["rho"] == 0.1 and model.share_ratio() == 0
    model.encoder.load_state_dict(merged[0].encoder.state_dict())   # the merged trunks (merging again costs a second)
    assert model.share_ratio() == merged[0].share_ratio() > 0
    assert {id(p) for p in model.get_share_params()} == {id(p) for p in model.encoder.parameters()}
    x, labels, targets = arch_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bank = model.encoder.banks[0]
    before = [bank.weight.detach().clone(), model.decoders["reg"][-1].weight.detach().clone()]
    losses = arch_losses(model(x), labels, targets) + model.penalty()
    opt.zero_grad(set_to_none=True)
    model.backward(losses, **built.backward_kwargs)
    assert torch.isfinite(losses).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert not torch.equal(before[0], bank.weight) and not torch.equal(before[1], model.decoders["reg"][-1].weight)
    tied = bank.tied()
    i, j = (bank.index[0][:, None] == bank.index[1][None, :]).nonzero(as_tuple=True)
    assert tied.any() and torch.equal(bank.kernel(0)[i], bank.kernel(1)[j])


def test_channels_last(merged):
    model = copy.deepcopy(merged[0]).eval()
    x, _, _ = arch_batch()
    with torch.no_grad():
        reference = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert model.encoder.banks[1].weight.is_contiguous(memory_format=torch.channels_last)
    for t in ("cls", "reg"):
        torch.testing.assert_close(out[t], reference[t], rtol=1e-4, atol=1e-5)
