"""The whole grid: every registered architecture x weighting x decoder cell (and FastCAR) builds, takes training steps and writes sane records.

Runs the shipped smoke sweep once per session through the real CLI (see conftest.smoke_results)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
from mtlbench.models.decoders import DECODERS


@pytest.fixture(scope="module")
def all_runs(smoke_results):
    return pd.read_parquet(smoke_results / "runs.parquet")


@pytest.fixture(scope="module")
def runs(all_runs):
    """The runs that trained (every cell but the not-applicable ones, and FastCAR)."""
    return all_runs[all_runs.status != "not_applicable"]


def test_every_cell_built_stepped_and_is_ok(all_runs):
    runs = all_runs
    n_cells = len(ARCHITECTURES) * len(WEIGHTINGS) * len(DECODERS)
    assert n_cells >= 204 and len(runs) == n_cells + 1 and runs.run_id.is_unique
    na = runs[runs.status == "not_applicable"]
    expected_na = {(a.name, w.name, d) for a in ARCHITECTURES for w in WEIGHTINGS for d in DECODERS.names()
                   if not_applicable(a, w)}
    assert set(zip(na.architecture, na.weighting, na.decoder)) == expected_na
    assert ("Tree-b0", "PCGrad", "decoder1") in expected_na and ("Tree-b0", "EW", "decoder1") not in expected_na
    assert na.message.str.contains("shares no parameters").all() and na.epochs_run.isna().all()
    assert na[["setup_s", "train_s", "eval_s", "latency_s"]].isna().all().all()
    bad = runs[~runs.status.isin(("ok", "not_applicable"))]
    assert bad.empty, bad[["architecture", "weighting", "decoder", "status", "message"]].to_string()
    grid = runs[runs.kind == "mtl"]
    expected = {(a, w, d) for a in ARCHITECTURES.names() for w in WEIGHTINGS.names() for d in DECODERS.names()}
    assert set(zip(grid.architecture, grid.weighting, grid.decoder)) == expected
    assert (runs.kind == "fastcar").sum() == 1


def test_every_cell_wrote_sane_metrics(runs):
    for col in ("best_accuracy", "last_accuracy", "best_within8"):
        assert runs[col].between(0, 100).all(), col
    for col in ("best_mse", "best_rmse", "best_mae", "best_mape", "total_s", "train_s", "train_images_per_s",
                "latency_b1_ms", "latency_batch_ms", "peak_mem_mb", "setup_s", "eval_s", "latency_s"):
        assert np.isfinite(runs[col]).all() and (runs[col] > 0).all(), col
    parts = runs.setup_s + runs.train_s + runs.eval_s + runs.latency_s + runs.checkpoint_s   # disjoint parts
    assert (parts <= runs.total_s).all()
    assert (runs.epochs_run == 1).all() and (runs.best_epoch == 1).all()
    np.testing.assert_allclose(runs.best_rmse, np.sqrt(runs.best_mse))
    for cm in runs.best_confusion_json:
        m = np.array(json.loads(cm))
        assert m.shape == (6, 6) and m.sum() == runs.n_test.iloc[0]
    # more shared encoders -> more parameters: MMoE/CGC (3 ResNet-18s) > Cross-stitch/LTB (2) > HPS (1)
    p = runs[runs.decoder == "decoder1"].groupby("architecture").params.min()
    assert p["MMoE"] > p["Cross_stitch"] > p["HPS"] and p["CGC"] > p["LTB"] > p["HPS"]


def test_every_cell_recorded_its_hyper_parameters_and_weights(smoke_results, runs):
    grid = runs[runs.kind == "mtl"]
    for _, r in grid.iterrows():
        hp = json.loads(r.hparams_json)
        assert hp["architecture"]["img_size"] == [3, 32, 32]
        assert hp["weighting"] == {k: v for k, v in WEIGHTINGS.entry(r.weighting).defaults.items() if k != "rep_grad"}
    weights = pd.read_parquet(smoke_results / "weights.parquet")
    have = set(weights.run_id)
    no_weights = set(grid[~grid.run_id.isin(have)].weighting)
    assert no_weights <= {"GradDrop"}, no_weights   # LibMTL's GradDrop returns no weights
    assert np.isfinite(weights.weight).all()


def test_epochs_and_predictions_tables(smoke_results, runs):
    epochs = pd.read_parquet(smoke_results / "epochs.parquet")
    assert set(epochs.run_id) == set(runs.run_id) and epochs.val_loss.notna().all() and epochs.val_mae.notna().all()
    preds = pd.read_parquet(smoke_results / "predictions.parquet")
    assert len(preds) == len(runs) * 2 * runs.n_test.iloc[0]
    assert preds.true_target.between(100, 1500).all()


def test_tree_models_record_their_structure(runs):
    grid = runs[runs.kind == "mtl"].set_index(["architecture", "weighting", "decoder"])
    for k in range(6):
        arch = f"Tree-b{k}" if k < 5 else "HPS"
        r = grid.loc[(arch, "EW", "decoder1")]
        assert r.branch_point == k and r.layout.count("|") == 4 and r.backbone_macs > 0, arch
        assert r.layout.startswith("0,1" if k else "0/1")
    macs = [grid.loc[(f"Tree-b{k}" if k < 5 else "HPS", "EW", "decoder1")].backbone_macs for k in range(6)]
    assert macs == sorted(macs, reverse=True)     # the later the branch, the less the backbone computes
    assert grid.loc[("Tree-b0", "EW", "decoder1")].shared_params == 0
    assert grid.loc[("HPS", "EW", "decoder1")].shared_params == grid.loc[("HPS", "EW", "decoder1")].backbone_params
    assert grid[~grid.index.get_level_values(0).str.startswith("Tree") & (grid.index.get_level_values(0) != "HPS")
                ].branch_point.isna().all()
    assert (grid.shared_params <= grid.backbone_params).all()


def test_every_mtal_cell_wrote_its_sharing_table(smoke_results, runs):
    """MTAL x every weighting x both decoders merged after its epoch and recorded it; no other architecture did."""
    sharing = pd.read_parquet(smoke_results / "sharing.parquet")
    mtal = runs[runs.architecture == "MTAL"]
    assert len(mtal) == len(WEIGHTINGS) * len(DECODERS)
    assert set(sharing.run_id) == set(mtal.run_id)
    per_run = sharing.groupby("run_id").layer.nunique()
    assert (per_run == 20).all()                      # every convolution of the ResNet-18 trunk
    assert sharing.ratio.between(0, 1).all() and (sharing.epoch == 1).all()
    assert mtal.kernel_share_ratio.between(0, 1).all()
    assert (mtal.unique_trunk_params <= mtal.backbone_params).all()
    assert runs[runs.architecture != "MTAL"].kernel_share_ratio.isna().all()
