"""The training loop's BatchNorm re-estimation (protocol.bn_reestimate_batches), options added after runs were
recorded keeping every earlier run id, and steps on three batches (MoDo, SDMGrad): the stream they read, resume,
refused checkpoints, run ids and records."""

from __future__ import annotations

import json

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


# -- weightings that take three batches a step (MoDo, SDMGrad) --------------------------------------------------

class RecordingLearner(MTLLearner):
    """MTLLearner that keeps the targets of every batch it trains on (they identify the batches)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[torch.Tensor]] = []

    def train_step_samples(self, batches):
        self.seen.append([b[2].clone() for b in batches])
        return super().train_step_samples(batches)


def sampled_trainer(data, weighting: str = "MoDo", batch_size: int = 16, **protocol) -> Trainer:
    p = TrainingProtocol(**{"epochs": 2, "batch_size": batch_size, "img_size": 32, "max_steps_per_epoch": 2,
                            "latency_repeats": 1, **protocol})
    torch.manual_seed(0)
    built = build_mtl_model("HPS", weighting, "decoder1", num_classes=data.num_classes, img_size=32, device=CPU)
    learner = RecordingLearner(built.module, built.backward_kwargs, epochs=p.epochs, samples=built.samples)
    return Trainer(learner, data, p, seed=0)


def test_three_batch_steps_read_one_shuffled_stream_of_passes(loaded):
    """Each step takes the next three batches of one stream of reshuffled passes (a 48-image split at batch 16 is
    three batches: two steps read two passes); steps per epoch stay one per batch (capped), images count all
    three batches, the recorded loss is the mean over the step's batches, and the weights are recorded."""
    _, data = loaded
    t = sampled_trainer(data)
    assert t.samples == 3 and t.steps_per_epoch() == 2
    reference = torch.Generator().manual_seed(0)
    stream = [b[2] for _ in range(2) for b in data.batches("train", 16, shuffle=True, generator=reference)]
    record = t.train_epoch()
    seen = [target for step in t.learner.seen for target in step]
    assert len(t.learner.seen) == 2 and all(len(step) == 3 for step in t.learner.seen)
    assert all(torch.equal(a, b) for a, b in zip(seen, stream, strict=True))
    assert t.state.images == 2 * 3 * 16
    assert torch.equal(t.generator.get_state(), reference.get_state())   # nothing drawn past the last step
    assert record["train_loss"] > 0 and len(t.state.weights) == 2       # one row per task


def test_a_resumed_three_batch_run_equals_the_uninterrupted_one(loaded, tmp_path):
    """The stream restarts each epoch from the generator a checkpoint saves, and MoDo's lambda is saved with the
    model's attributes: two epochs straight and one + one through ``torch.save`` end with equal weights."""
    _, data = loaded
    whole = sampled_trainer(data)
    whole.fit()
    first = sampled_trainer(data)
    first.fit(1)
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = sampled_trainer(data)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    resumed.fit()
    for (name, a), (_, b) in zip(whole.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(whole.module._modo_lambda, resumed.module._modo_lambda, rtol=0, atol=0)


def test_a_checkpoint_of_another_batch_count_is_refused(loaded):
    from mtlbench.train.checkpoint import CheckpointError

    _, data = loaded
    one = trainer(data)
    with pytest.raises(CheckpointError, match=r"trained with 1 batch\(es\) per step and this run takes 3"):
        sampled_trainer(data).load_state_dict(one.state_dict())
    old = {k: v for k, v in sampled_trainer(data).state_dict().items() if k != "samples_per_step"}
    with pytest.raises(CheckpointError, match="trained with 1 batch"):   # written before three-batch steps
        sampled_trainer(data).load_state_dict(old)


def test_three_batch_cells_have_their_own_run_ids():
    p = TrainingProtocol(epochs=10, img_size=64)
    ident = RunConfig(kind="mtl", architecture="HPS", weighting="MoDo", decoder="decoder1", protocol=p).identity()
    assert ident["samples_per_step"] == 3
    assert "samples_per_step" not in RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1",
                                               protocol=p).identity()


def test_a_three_batch_cell_runs_and_records_it(loaded):
    table, data = loaded
    p = TrainingProtocol(epochs=1, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1)
    result = run_cell(RunConfig(kind="mtl", architecture="HPS", weighting="SDMGrad", decoder="decoder1", protocol=p),
                      table, data)
    assert result.status == "ok", result.message
    assert json.loads(result.row["hparams_json"])["samples_per_step"] == 3


def test_a_run_records_where_its_time_went(loaded):
    """setup_s, train_s, eval_s, latency_s and checkpoint_s are disjoint parts of total_s; eval_s grows with each
    epoch's validation pass and with the final test predictions."""
    table, data = loaded
    p = TrainingProtocol(epochs=2, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1)
    result = run_cell(RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", protocol=p),
                      table, data)
    r = result.row
    assert result.status == "ok", result.message
    parts = [r["setup_s"], r["train_s"], r["eval_s"], r["latency_s"], r["checkpoint_s"]]
    assert all(x > 0 for x in parts[:4]) and r["checkpoint_s"] == 0
    assert sum(parts) <= r["total_s"]
    t = trainer(data)
    t.train_epoch()
    one = t.state.eval_s
    t.train_epoch()
    two = t.state.eval_s
    assert 0 < one < two
    t.final_predictions()
    assert t.state.eval_s > two   # the test predictions count too


PARTS = ("setup_s", "train_s", "eval_s", "latency_s", "checkpoint_s")


def test_fastcar_records_disjoint_parts_fresh_and_resumed(loaded, tmp_path, monkeypatch):
    """FastCAR's accepted label-search attempt trains and validates epoch 1 and writes a checkpoint before the
    training loop: that time counts in train_s, eval_s and checkpoint_s, not in setup_s as well. A resumed run's
    parts still fit in its total (which includes the interrupted process's time)."""
    table, data = loaded
    cfg = RunConfig(kind="fastcar", seed=1, protocol=TrainingProtocol(epochs=3, batch_size=8, img_size=32,
                                                              max_steps_per_epoch=2, latency_repeats=1))
    fresh = run_cell(cfg, table, data, checkpoint_dir=tmp_path / "fresh")
    r = fresh.row
    assert fresh.status == "ok" and all(r[k] > 0 for k in PARTS)
    assert sum(r[k] for k in PARTS) <= r["total_s"]
    monkeypatch.setenv("MTLBENCH_FAULT", "epoch_end:cell=FastCAR:epoch=2:raise")
    assert run_cell(cfg, table, data, checkpoint_dir=tmp_path / "cut").status == "failed"
    monkeypatch.delenv("MTLBENCH_FAULT")
    resumed = run_cell(cfg, table, data, checkpoint_dir=tmp_path / "cut").row
    # the resumed process writes no checkpoint: the last epoch needs none
    assert resumed["resumed_from_epoch"] == 2 and all(resumed[k] > 0 for k in PARTS[:4])
    assert sum(resumed[k] for k in PARTS) <= resumed["total_s"]


def test_a_run_resumed_from_a_checkpoint_without_evaluation_time_records_it_unknown(loaded, tmp_path, monkeypatch):
    """A checkpoint written before eval_s existed holds no evaluation time for its epochs: the resumed run records
    eval_s as null, not as the later epochs' time alone."""
    table, data = loaded
    cfg = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1", seed=3,
                    protocol=TrainingProtocol(epochs=3, batch_size=8, img_size=32, max_steps_per_epoch=2,
                                              latency_repeats=1))
    monkeypatch.setenv("MTLBENCH_FAULT", f"epoch_end:cell={cfg.cell_name}:epoch=2:raise")
    cut = run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    monkeypatch.delenv("MTLBENCH_FAULT")
    path = tmp_path / f"{cut.run_id}.ckpt"
    payload = torch.load(path, weights_only=False)
    history = payload["trainer"]["history"]
    assert history.eval_s > 0
    del history.__dict__["eval_s"]   # as TrainState was pickled before the field existed
    torch.save(payload, path)
    resumed = run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    assert resumed.status == "ok" and resumed.row["resumed_from_epoch"] == 2
    assert resumed.row["eval_s"] is None and resumed.row["train_s"] > 0


def test_setup_time_leaves_out_what_this_process_already_counted(loaded):
    """setup_s subtracts the trainer's train_s and eval_s and the checkpoint's seconds of a fresh run, but only the
    checkpoint's for a resumed one, whose trainer's times are the earlier processes'."""
    from mtlbench.run_record import RunRecord

    table, data = loaded
    cfg = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder="decoder1",
                    protocol=TrainingProtocol(epochs=2, batch_size=8, img_size=32, max_steps_per_epoch=2))
    for resumed in (False, True):
        run = RunRecord(cfg, table, data, sweep=None, concurrency=1)
        run.trainer = trainer(data)
        run.trainer.state.train_s, run.trainer.state.eval_s, run.checkpoint.seconds = 100.0, 50.0, 25.0
        if resumed:
            run.row["resumed_from_epoch"] = 1
        run.set_up()
        elapsed = run.elapsed()
        expected = elapsed - 25.0 - (0.0 if resumed else 150.0)
        assert expected - 1.0 < run.row["setup_s"] <= expected, resumed


def test_a_refused_checkpoint_leaves_the_trainer_fresh(loaded):
    """A checkpoint naming a submodule the model lacks is refused before its weights are loaded."""
    from mtlbench.train.checkpoint import CheckpointError

    _, data = loaded
    trained = trainer(data)
    trained.train_epoch()
    state = trained.state_dict()
    state["attributes"] = {**state["attributes"], "no_such_module": {"x": 1}}
    fresh = trainer(data)
    before = {k: v.clone() for k, v in fresh.module.state_dict().items()}
    with pytest.raises(CheckpointError, match="no_such_module"):
        fresh.load_state_dict(state)
    for k, v in fresh.module.state_dict().items():
        assert torch.equal(v, before[k]), k
