"""TreeMTL's pair table from mtlbench results folders (real Parquet folders with synthetic rows), the plan spec,
budgets, the written tables and the errors."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from results_factory import HAND, PROTOCOL, pair_folder, write_run

from mtlbench.config import TrainingProtocol
from mtlbench.errors import ConfigError, MtlbenchError
from mtlbench.records.store import ResultsStore
from mtlbench.treemtl import from_results as fr
from mtlbench.treemtl.layouts import layout_key
from mtlbench.treemtl.tables import (
    PAIR_TABLE,
    RECOMMENDATIONS,
    TASK_WEIGHTS,
    read_table,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Per-block MACs / params (stem, layer1..4) given to the ranking, so budgets are checked by hand (no model built).
COSTS = ((1.0, 2.0, 2.0, 2.0, 3.0), (1.0, 1.0, 2.0, 4.0, 8.0))   # one trunk: 10 MACs, 16 params


def _pair(tmp_path, **kw):
    folder = pair_folder(tmp_path / "res", **kw)
    return fr.build_pair_table(fr.select_runs([folder])), folder


def _row(pair, task, b):
    return next(r for r in pair.rows if r["task"] == task and r["branch_point"] == b)


def test_delta_t_by_hand(tmp_path):
    pair, _ = _pair(tmp_path)
    # b = 0 baseline, each metric the mean of the last 3 epochs (epoch 1 is off by 30 / 50 and must not count),
    # then averaged over seeds: accuracy (50 + 54) / 2, MAE (10 + 12) / 2, MAPE 20.
    assert pair.baseline == pytest.approx({"val_accuracy": 52.0, "val_mae": 11.0, "val_mape": 20.0})
    # Tree-b2 seed 0: accuracy 57.2 -> +10 %; MAE 9.9 -> +10 % (lower is better), MAPE 22 -> -10 %: reg = 0.
    # Tree-b2 seed 1: accuracy 52 -> 0 %; MAE 8.8 -> +20 %, MAPE 18 -> +10 %: reg = +15.
    per = pair.per_run.set_index(["architecture", "seed"])
    assert per.loc[("Tree-b2", 0), "dt_cls"] == pytest.approx(10.0)
    assert per.loc[("Tree-b2", 0), "dt_reg"] == pytest.approx(0.0)
    assert per.loc[("Tree-b2", 1), "dt_reg"] == pytest.approx(15.0)
    cls2, reg2 = _row(pair, "cls", 2), _row(pair, "reg", 2)
    assert cls2["dt_mean"] == pytest.approx(5.0) and reg2["dt_mean"] == pytest.approx(7.5)
    assert cls2["dt_std"] == pytest.approx(math.sqrt(50)) and reg2["dt_std"] == pytest.approx(math.sqrt(112.5))
    assert (cls2["dt_min"], cls2["dt_max"]) == pytest.approx((0.0, 10.0))
    assert (reg2["dt_min"], reg2["dt_max"], reg2["n_seeds"], reg2["seeds"]) == (pytest.approx(0.0),
                                                                               pytest.approx(15.0), 2, "0,1")
    # b = 0: 0 on average by construction, its spread the baseline's seed noise: accuracy -2/52, +2/52.
    cls0 = _row(pair, "cls", 0)
    assert cls0["dt_mean"] == pytest.approx(0.0, abs=1e-12)
    assert (cls0["dt_min"], cls0["dt_max"]) == pytest.approx((-200 / 52, 200 / 52))
    # MAE of b0 seed 0 is 10 vs 11: +1/11; MAPE equal: reg = half of it.
    assert per.loc[("Tree-b0", 0), "dt_reg"] == pytest.approx(100 / 11 / 2)
    # the rest of the table: b1 0/0, b3 +5/-2.5, b4 -5/-7.5, HPS -10/-20
    expect = {1: (0, 0), 2: (5, 7.5), 3: (5, -2.5), 4: (-5, -7.5), 5: (-10, -20)}
    for b, (c, r) in expect.items():
        assert pair.table.dt(0, 1, b) == pytest.approx(c) and pair.table.dt(1, 0, b) == pytest.approx(r)
    assert pair.metric_label("reg") == "mae-,mape-" and pair.metric_label("cls") == "accuracy+"


def test_metric_choice_changes_the_average(tmp_path):
    folder = pair_folder(tmp_path / "res")
    pair = fr.build_pair_table(fr.select_runs([folder]), fr.parse_metrics(reg="mape"))
    assert _row(pair, "reg", 2)["dt_mean"] == pytest.approx(0.0)     # MAPE only: (-10 + 10) / 2
    with pytest.raises(ConfigError, match="unknown metric 'rmse'"):
        fr.parse_metrics(reg="rmse")


def test_missing_cells_and_the_plan_spec(tmp_path):
    folder = pair_folder(tmp_path / "res", skip={("HPS", 1)}, failed={("Tree-b3", 0)})
    sel = fr.select_runs([folder])
    assert sel.seeds == (0, 1)
    missing = {(c.architecture, c.seed): c.status for c in sel.missing}
    assert missing == {("Tree-b3", 0): "failed", ("HPS", 1): "not run"}
    assert "Tree-b3 (b = 3) seed 0: failed (RuntimeError: boom)" in [c.describe() for c in sel.missing]
    text = fr.plan_spec_text(sel, data="default")
    assert 'architectures = ["Tree-b3", "HPS"]' in text and "seeds = [0, 1]" in text
    assert 'weightings = ["EW"]' in text and 'decoders = ["decoder1"]' in text and "enabled = false" in text
    assert "img_size = 32" in text and "epochs = 4" in text and "max_steps_per_epoch = 2" in text
    assert "--retry-failed" in text
    raw = tomllib.loads(text)
    assert raw["protocol"]["batch_size"] == PROTOCOL.batch_size

    import mtlbench.methods  # noqa: F401
    from mtlbench.methods.registry import ARCHITECTURES
    from mtlbench.sweep.spec import load_spec, parse_spec

    path = fr.write_plan(sel, tmp_path / "out")
    assert path == tmp_path / "out" / "treemtl" / "plan.toml" and path.read_text() == text
    if "Tree-b1" in ARCHITECTURES:   # the grid architectures are registered: the spec must parse as a sweep spec
        spec = parse_spec(raw)
        assert spec.architectures == ("Tree-b3", "HPS") and spec.seeds == (0, 1) and spec.fastcar is None
        assert spec.protocol == PROTOCOL
        assert [c.label for c in spec.cells()] == [
            "Tree-b3+EW/decoder1/none seed=0", "HPS+EW/decoder1/none seed=0",
            "Tree-b3+EW/decoder1/none seed=1", "HPS+EW/decoder1/none seed=1"]
        assert load_spec(path).name == "treemtl-pairs-EW-decoder1"
    # nothing missing: no plan
    full = fr.select_runs([pair_folder(tmp_path / "full")])
    assert full.missing == [] and fr.plan_spec_text(full) is None and fr.write_plan(full, tmp_path / "o2") is None


def test_plan_without_any_pair_run_uses_the_documented_defaults(tmp_path):
    store = ResultsStore(tmp_path / "res")
    write_run(store, "MTAN", 0, acc=50, mae=10, mape=20)   # another architecture only
    with pytest.raises(ConfigError, match="no run of EW/decoder1"):
        fr.select_runs([tmp_path / "res"])
    sel = fr.select_runs([tmp_path / "res"], allow_empty=True)
    assert sel.seeds == fr.DEFAULT_SEEDS and len(sel.missing) == 6
    assert sel.protocol == PROTOCOL   # the other runs' protocol
    text = fr.plan_spec_text(sel)
    assert 'architectures = ["Tree-b0", "Tree-b1", "Tree-b2", "Tree-b3", "Tree-b4", "HPS"]' in text
    # planning from nothing: a folder not made yet, or one without runs; mtlbench's default protocol
    ResultsStore(tmp_path / "empty")
    for folder in (tmp_path / "not-yet", tmp_path / "empty"):
        sel = fr.select_runs([folder], allow_empty=True)
        assert len(sel.missing) == 6 and sel.protocol == TrainingProtocol() and "every cell" in sel.notes[0]
        assert "default protocol" in sel.protocol_source and "seeds = [0]" in fr.plan_spec_text(sel)


def test_incomplete_table_cannot_be_ranked(tmp_path):
    folder = pair_folder(tmp_path / "res", skip={("Tree-b4", 0), ("Tree-b4", 1)})
    pair = fr.build_pair_table(fr.select_runs([folder]))
    assert pair.missing_points == [4] and _row(pair, "cls", 4)["n_seeds"] == 0
    with pytest.raises(ConfigError, match=r"no ok run of Tree-b4 \(b = 4\)"):
        fr.rank_layouts(pair, costs=COSTS)


def test_ranking_scores_weights_and_budgets(tmp_path):
    pair, _ = _pair(tmp_path)
    r = fr.rank_layouts(pair, top_k=6, costs=COSTS)
    assert len(r.layouts) == 6 and all(x.fits and x.recommended for x in r.layouts)
    assert r.weights.sum() == pytest.approx(1.0) and (r.weights >= 0).all()
    # S = w_cls dt_cls + w_reg dt_reg at each layout's branch point, sorted by S
    for x in r.layouts:
        b = fr.COARSE_ARCHITECTURES.index(x.architecture)
        assert x.estimate == pytest.approx((pair.table.dt(0, 1, b), pair.table.dt(1, 0, b)))
        assert x.score == pytest.approx(float(np.dot(r.weights, x.estimate)))
    assert [x.score for x in r.layouts] == sorted((x.score for x in r.layouts), reverse=True)
    assert r.layouts[0].architecture == "Tree-b2"     # +5 / +7.5 is best for any positive weights
    hps = next(x for x in r.layouts if x.architecture == "HPS")
    assert hps.key == "0,1|0,1|0,1|0,1|0,1" and hps.macs == 10 and hps.macs_pct == pytest.approx(-50.0)
    b2 = next(x for x in r.layouts if x.architecture == "Tree-b2")
    # shares stem + layer1 (1 + 2 MACs, 1 + 1 params) once, the rest twice: 3 + 2 x 7 = 17 MACs, 2 + 2 x 14 params
    assert (b2.macs, b2.params) == (17.0, 30.0) and b2.key == layout_key(b2.layout) == "0,1|0,1|0/1|0/1|0/1"
    assert b2.params_pct == pytest.approx(100 * (30 - 32) / 32)

    # MACs: b0 20, b1 1 + 2 x 9 = 19, b2 17, b3 1 + 2 + 2 + 2 x 5 = 15, b4 7 + 2 x 3 = 13, HPS 10.
    # Budget 1.5 backbones = 15 MACs: Tree-b3, Tree-b4 and HPS fit; of them Tree-b3 (+5 / -2.5) scores best.
    r = fr.rank_layouts(pair, top_k=1, budget=fr.Budget(backbones=1.5), costs=COSTS)
    assert [x.architecture for x in r.recommended] == ["Tree-b3"] and r.budget.label == "MACs <= 1.5 backbones"
    assert r.layouts[-1].architecture == "Tree-b3" and r.layouts[0].architecture == "Tree-b2"
    assert all(not x.fits and x.macs > 15 for x in r.layouts[:-1])
    r = fr.rank_layouts(pair, top_k=6, budget=fr.Budget(gmacs=15e-9), costs=COSTS)
    assert {x.architecture for x in r.layouts if x.fits} == {"Tree-b3", "Tree-b4", "HPS"}
    r = fr.rank_layouts(pair, top_k=6, budget=fr.Budget(mparams=20e-6), costs=COSTS)
    # params: b3 = 4 + 2 x 12 = 28, b4 = 8 + 2 x 8 = 24, HPS 16: only HPS fits 20
    assert [x.architecture for x in r.layouts if x.fits] == ["HPS"]
    with pytest.raises(ConfigError, match="give one budget, not 2"):
        fr.Budget(backbones=1.0, gmacs=2.0)
    with pytest.raises(ConfigError, match="positive"):
        fr.Budget(mparams=-1.0)


def test_fine_blocks_need_a_fine_pair_table(tmp_path):
    pair, _ = _pair(tmp_path)
    with pytest.raises(ConfigError, match="--blocks fine needs a pair table with 10 branch points"):
        fr.rank_layouts(pair, blocks="fine", costs=COSTS)
    with pytest.raises(ConfigError, match="--blocks must be one of coarse, fine"):
        fr.rank_layouts(pair, blocks="medium", costs=COSTS)


def test_costs_measured_on_the_trunk(tmp_path):
    pair, _ = _pair(tmp_path)
    r = fr.rank_layouts(pair, top_k=6)     # costs.stage_costs at the runs' 32 px
    assert r.img_size == 32 and r.one_backbone_params == pytest.approx(11_176_512, rel=1e-6)
    by = {x.architecture: x for x in r.layouts}
    assert by["Tree-b0"].macs_pct == pytest.approx(0.0) and by["HPS"].macs_pct == pytest.approx(-50.0)
    assert by["HPS"].params_pct == pytest.approx(-50.0)
    assert by["Tree-b0"].macs > by["Tree-b2"].macs > by["Tree-b4"].macs > by["HPS"].macs


def test_tables_written_and_read_back(tmp_path):
    pair, _ = _pair(tmp_path)
    ranking = fr.rank_layouts(pair, top_k=2, budget=fr.Budget(backbones=1.8), costs=COSTS)
    paths = fr.write_tables(tmp_path / "out", pair, ranking)
    assert [p.name for p in paths] == ["pair_table.parquet", "task_weights.parquet", "recommendations.parquet"]
    import pyarrow.parquet as pq

    assert pq.read_schema(paths[0]) == PAIR_TABLE and pq.read_schema(paths[1]) == TASK_WEIGHTS
    assert pq.read_schema(paths[2]) == RECOMMENDATIONS
    pt = read_table(tmp_path / "out", "pair_table")
    assert len(pt) == 12 and set(pt["task"]) == {"cls", "reg"}
    row = pt[(pt.task == "reg") & (pt.branch_point == 2)].iloc[0]
    assert row["dt_mean"] == pytest.approx(7.5) and row["dt_max"] == pytest.approx(15.0) and row["n_seeds"] == 2
    assert row["partner"] == "cls" and row["architecture"] == "Tree-b2" and row["weighting"] == "EW"
    tw = read_table(tmp_path / "out", "task_weights")
    assert tw["weight"].sum() == pytest.approx(1.0) and list(tw["task"]) == ["cls", "reg"]
    rec = read_table(tmp_path / "out", "recommendations")
    assert list(rec["rank"]) == list(range(1, len(rec) + 1)) and rec["recommended"].sum() == 2
    assert (rec["budget"] == "MACs <= 1.8 backbones").all()
    assert rec["verified_run_id"].isna().all() and rec["trained_score"].isna().all()
    assert not [p for p in (tmp_path / "out" / "treemtl").iterdir() if p.name.startswith(".")]   # no temporaries


def test_errors_name_the_culprit(tmp_path):
    folder = pair_folder(tmp_path / "res")
    with pytest.raises(ConfigError, match="unknown weighting 'NoSuchW'"):
        fr.select_runs([folder], weighting="NoSuchW")
    with pytest.raises(ConfigError, match="unknown decoder"):
        fr.select_runs([folder], decoder="decoder9")
    with pytest.raises(ConfigError, match="no run of UW/decoder1 .* they hold the pair models for: EW/decoder1"):
        fr.select_runs([folder], weighting="UW")
    ResultsStore(tmp_path / "empty")
    with pytest.raises(MtlbenchError, match="holds no runs"):
        fr.select_runs([tmp_path / "empty"])
    with pytest.raises(MtlbenchError, match="does not exist"):
        fr.select_runs([tmp_path / "nowhere"])


def test_missing_b0_is_an_error(tmp_path):
    folder = pair_folder(tmp_path / "res", skip={("Tree-b0", 0), ("Tree-b0", 1)})
    with pytest.raises(ConfigError, match=r"no Tree-b0 run \(b = 0, independent trunks\) finished ok .*nothing "
                                          r"to compare to"):
        fr.build_pair_table(fr.select_runs([folder]))
    # a gradient weighting cannot train Tree-b0 (not applicable): said so
    store = ResultsStore(tmp_path / "grad")
    for (arch, seed), (acc, mae, mape) in HAND.items():
        write_run(store, arch, seed, acc=acc, mae=mae, mape=mape, weighting="PCGrad",
                  status="not_applicable" if arch == "Tree-b0" else "ok")
    with pytest.raises(ConfigError, match="Tree-b0 is not applicable with weighting PCGrad"):
        fr.build_pair_table(fr.select_runs([tmp_path / "grad"], weighting="pcgrad"))


def test_old_records_without_val_mae(tmp_path):
    folder = pair_folder(tmp_path / "res", no_mae=True)
    with pytest.raises(ConfigError, match=r"epochs\.val_mae is null in every selected run \(12 runs\)"):
        fr.build_pair_table(fr.select_runs([folder]))
    pair = fr.build_pair_table(fr.select_runs([folder]), fr.parse_metrics(reg="mape"))   # without MAE it works
    assert _row(pair, "reg", 5)["dt_mean"] == pytest.approx(-20.0)
    # some runs with, some without: the message counts them
    mixed = pair_folder(tmp_path / "mixed")
    write_run(ResultsStore(mixed), "Tree-b1", 2, acc=50, mae=None, mape=20)
    with pytest.raises(ConfigError, match=r"epochs\.val_mae is null in the last 3 validation evaluations of 1 of "
                                          r"13 selected runs \(e\.g\. tree-b1-ew-decoder1-s2-pairs\)"):
        fr.build_pair_table(fr.select_runs([mixed]))


def test_verification_runs_are_kept_out_of_the_pair_table(tmp_path):
    folder = pair_folder(tmp_path / "res")
    write_run(ResultsStore(folder), "Tree-b2", 2, acc=0.1, mae=99, mape=99, sweep=fr.VERIFY_SWEEP)
    sel = fr.select_runs([folder])
    assert sel.seeds == (0, 1) and len(sel.verify_runs) == 1 and fr.verify_seed(sel) == 2
    assert fr.build_pair_table(sel).table.dt(0, 1, 2) == pytest.approx(5.0)


def test_merging_two_folders(tmp_path):
    a = {k: v for k, v in HAND.items() if k[1] == 0}
    b = {k: v for k, v in HAND.items() if k[1] == 1}
    fa, fb = pair_folder(tmp_path / "a", values=a), pair_folder(tmp_path / "b", values=b)
    merged = fr.build_pair_table(fr.select_runs([fa, fb]))
    single, _ = _pair(tmp_path)
    np.testing.assert_allclose(merged.table.delta[(0, 1)], single.table.delta[(0, 1)])
