"""The training loop's BatchNorm re-estimation (protocol.bn_reestimate_batches) and options added after runs were
recorded keeping every earlier run id."""

from __future__ import annotations

import pytest
import torch

from mtlbench.config import FastCARSettings, RunConfig, TrainingProtocol
from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.models.mtl import build_mtl_model
from mtlbench.runs import run_cell
from mtlbench.train.learners import MTLLearner
from mtlbench.train.loop import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tiny_data, cache_dir):
    table = resolve_dataset(str(tiny_data), cache_dir=str(cache_dir))
    return table, DeviceData.from_table(table, 32, CPU, cache_dir=str(cache_dir))


def trainer(data, **protocol) -> Trainer:
    p = TrainingProtocol(epochs=2, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1, **protocol)
    torch.manual_seed(0)
    built = build_mtl_model("HPS", "EW", "decoder1", num_classes=data.num_classes, img_size=32, device=CPU)
    return Trainer(MTLLearner(built.module, built.backward_kwargs, epochs=p.epochs), data, p, seed=0)


def test_reestimating_batchnorm_changes_only_the_running_statistics(loaded):
    _, data = loaded
    t = trainer(data)
    t.train_epoch()
    params = {k: v.detach().clone() for k, v in t.module.named_parameters()}
    buffers = {k: v.clone() for k, v in t.module.named_buffers() if "running" in k}
    rng, global_rng = t.generator.get_state(), torch.get_rng_state()
    t.reestimate_batchnorm(3)
    assert all(torch.equal(v, params[k]) for k, v in t.module.named_parameters())
    changed = [k for k, v in t.module.named_buffers() if "running" in k and not torch.equal(v, buffers[k])]
    assert len(changed) == len(buffers)                     # every running mean and variance was re-estimated
    assert torch.equal(t.generator.get_state(), rng)        # the training order is untouched
    assert torch.equal(torch.get_rng_state(), global_rng)   # and dropout's draws (the decoders' dropout)
    norms = [m for m in t.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 for m in norms)            # the layers' momentum is restored
    assert all(int(m.num_batches_tracked) == 3 for m in norms)
    again = {k: v.clone() for k, v in t.module.named_buffers() if "running" in k}
    t.reestimate_batchnorm(3)                               # the same batches: the same statistics
    assert all(torch.equal(v, again[k]) for k, v in t.module.named_buffers() if "running" in k)


def test_a_run_with_reestimated_batchnorm_trains_and_is_another_run(loaded):
    table, data = loaded
    p = TrainingProtocol(epochs=2, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1)
    plain = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", protocol=p)
    bn = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1",
                   protocol=TrainingProtocol(**{**p.__dict__, "bn_reestimate_batches": 2}))
    a, b = run_cell(plain, table, data), run_cell(bn, table, data)
    assert a.status == b.status == "ok", (a.message, b.message)
    assert a.run_id != b.run_id
    # training is the same (own generator); only the statistics the evaluations use differ
    assert [e["train_loss"] for e in a.tables["epochs"]] == [e["train_loss"] for e in b.tables["epochs"]]
    assert [e["val_loss"] for e in a.tables["epochs"]] != [e["val_loss"] for e in b.tables["epochs"]]


def test_options_added_later_keep_earlier_run_ids_at_their_defaults():
    # ids computed at e2f9bbc, before bn_reestimate_batches, label_scale and setting existed
    p = TrainingProtocol(epochs=10, img_size=64)
    assert RunConfig(kind="fastcar", protocol=p, fastcar=FastCARSettings()).run_id("25a1c3a7040f9374") == \
        "fastcar-e42cd04c33ac"
    assert RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", protocol=p
                     ).run_id("25a1c3a7040f9374") == "hps-ew-decoder1-c73e9b49d41c"
    cfg = RunConfig(kind="fastcar", protocol=TrainingProtocol(), fastcar=FastCARSettings())
    ident = cfg.identity()
    assert "bn_reestimate_batches" not in ident["protocol"] and "label_scale" not in ident["fastcar"]
    other = RunConfig(kind="fastcar", protocol=TrainingProtocol(bn_reestimate_batches=4),
                      fastcar=FastCARSettings(label_scale="unit"))
    assert other.identity()["protocol"]["bn_reestimate_batches"] == 4
    assert other.identity()["fastcar"]["label_scale"] == "unit"
    assert other.run_id("x") != cfg.run_id("x")


@pytest.mark.parametrize("bad", [{"bn_reestimate_batches": -1}, {"bn_reestimate_batches": 1.5},
                                 {"bn_reestimate_batches": True}])
def test_bad_reestimation_counts_are_refused(bad):
    from mtlbench.errors import ConfigError

    with pytest.raises(ConfigError, match="bn_reestimate_batches"):
        TrainingProtocol(**bad)


def test_unknown_label_scale_is_refused():
    from mtlbench.errors import ConfigError

    with pytest.raises(ConfigError, match="label_scale"):
        FastCARSettings(label_scale="minmax")
