"""TreeMTL estimator (paper Sec. 3.1, Eqs. 1-2), cost model and budgeted recommendation against the paper's NYUv2
fixture and Table 1."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mtlbench.treemtl.estimate import (RESNET34_STAGE_MACS, PairTable, layout_cost, recommend, score,
                                       svd_entropy, task_weights)
from mtlbench.treemtl.layouts import enumerate_layouts, layout_key, parse_key

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "treemtl" / \
    "NYUv2_2task_metrics_resnet_1129_val_acc.xlsx"
# CI (MTLBENCH_REQUIRE_REAL_DATA=1) has ../shared beside the clone: there a missing fixture fails, never skips.
_MISSING = not FIXTURE.is_file() and os.environ.get("MTLBENCH_REQUIRE_REAL_DATA") != "1"
needs_fixture = pytest.mark.skipif(_MISSING, reason=f"fixture not present at {FIXTURE}")

# Table 1 (NYUv2, Deeplab-ResNet34, B = 5; tasks 0 = seg, 1 = normal, 2 = depth) as structures, with the paper's
# FLOPs / #Params % change vs. independent models. #0 is HPS; #45/#37 split {seg,normal}|{depth} after 3/2 shared
# blocks; #50/#49 share 4 blocks and split {seg,normal}|{depth} / {seg,depth}|{normal} in the last one.
TABLE1 = {
    0: ("0,1,2|0,1,2|0,1,2|0,1,2|0,1,2", -66.67, -66.66),
    45: ("0,1,2|0,1,2|0,1,2|0,1/2|0,1/2", -36.56, -35.45),
    50: ("0,1,2|0,1,2|0,1,2|0,1,2|0,1/2", -46.87, -46.13),
    37: ("0,1,2|0,1,2|0,1/2|0,1/2|0,1/2", -34.87, -33.70),
    49: ("0,1,2|0,1,2|0,1,2|0,1,2|0,2/1", -46.87, -46.13),
}


def _paper_index_t3(lay) -> tuple:
    """Ordering consistent with Table 1's numbering for T = 3 (our deduction, not stated in the paper): L0 first,
    then by the first block where any task splits (ascending); within it the 3-way split first, then 2-way splits
    ordered by the singled-out task (0, 1, 2), the branch that never splits further first."""
    b = len(lay)
    first = next((k for k, part in enumerate(lay) if len(part) > 1), b)
    if first == b:
        return (-1,)
    part = lay[first]
    if len(part) == 3:
        return (first, -1)
    single = next(g[0] for g in part if len(g) == 1)
    second = next((k for k in range(first, b) if len(lay[k]) == 3), b)
    return (first, single, -second)


def test_svd_entropy_values():
    assert svd_entropy([1, 2, 3, 4, 5]) == pytest.approx(0.2087, abs=1e-4)
    assert svd_entropy([10, 20, 30, 40, 50]) == pytest.approx(svd_entropy([1, 2, 3, 4, 5]), abs=1e-12)
    assert svd_entropy([5, 4, 3, 2, 1]) == pytest.approx(svd_entropy([1, 2, 3, 4, 5]), abs=1e-12)
    assert svd_entropy([1, 3, 2, 5, 4]) == pytest.approx(0.4889, abs=1e-4)
    assert svd_entropy([2, 2, 2, 2, 2]) == pytest.approx(0.0, abs=1e-12)  # rank 1
    assert svd_entropy([3, -3, 3, -3, 3]) == pytest.approx(0.0, abs=1e-12)  # rank 1
    assert svd_entropy([0, 0, 0, 0, 0]) == 0.0
    assert 0 < svd_entropy([1, 3, 2, 5, 4], normalize=False) == pytest.approx(0.4889 * np.log2(3), abs=1e-3)
    with pytest.raises(ValueError):
        svd_entropy([1, 2])


@pytest.fixture(scope="module")
def table():
    if _MISSING:
        pytest.skip(f"fixture not present at {FIXTURE}")
    from mtlbench.treemtl.pair_table import read_pair_table

    return read_pair_table(FIXTURE)


@pytest.fixture(scope="module")
def stage_params():
    from mtlbench.treemtl.estimate import resnet34_stage_params

    return resnet34_stage_params()


def test_pair_table_read(table):
    assert (table.n_tasks, table.n_blocks) == (3, 5)
    assert table.dt(0, 1, 5) == pytest.approx(5.109985, abs=1e-5)
    assert table.dt(1, 0, 5) == pytest.approx(9.184597, abs=1e-5)
    assert table.dt(2, 1, 4) == pytest.approx(5.150695, abs=1e-5)
    assert all(table.dt(i, j, 0) == 0 for i in range(3) for j in range(3) if i != j)


def test_golden_top5(table):
    np.testing.assert_allclose(task_weights(table), [0.0935, 0.5781, 0.3285], atol=1e-3)
    top = recommend(table, k=5)
    assert {r.key for r in top} == {v[0] for v in TABLE1.values()}
    # Our ranking by S: #45, #0, #50, #37, #49 (Table 1 lists #0 before #45).
    assert [r.key for r in top] == [TABLE1[n][0] for n in (45, 0, 50, 37, 49)]
    np.testing.assert_allclose([r.score for r in top], [4.0419, 3.9328, 3.8196, 3.6698, 3.5462], atol=1e-3)
    assert top[0].score == pytest.approx(score(parse_key(TABLE1[45][0]), table))


def test_paper_numbering_consistent():
    ordered = sorted(enumerate_layouts(3, 5), key=_paper_index_t3)
    assert len({_paper_index_t3(lay) for lay in ordered}) == 51  # a total order
    for n, (key, _, _) in TABLE1.items():
        assert layout_key(ordered[n]) == key


def test_table1_costs(stage_params):
    assert stage_params == (9536, 221952, 1116416, 6822400, 13114368)
    for key, flops, params in TABLE1.values():
        cost = layout_cost(parse_key(key), RESNET34_STAGE_MACS, stage_params)
        assert cost.macs_pct == pytest.approx(flops, abs=0.05)
        assert cost.params_pct == pytest.approx(params, abs=0.05)


def test_independent_and_hps_cost():
    ind = layout_cost(parse_key("0/1/2|0/1/2"), [1.0, 2.0], [3.0, 4.0])
    assert (ind.macs, ind.params, ind.macs_pct, ind.params_pct) == (9.0, 21.0, 0.0, 0.0)
    hps = layout_cost(parse_key("0,1,2|0,1,2"), [1.0, 2.0], [3.0, 4.0])
    assert hps.macs_pct == pytest.approx(-200 / 3)


def test_budget_monotone_and_fits(table, stage_params):
    best = -np.inf
    for c in [1, 1.2, 1.5, 1.6, 2, 2.5, 3]:
        recs = recommend(table, k=5, block_macs=RESNET34_STAGE_MACS, block_params=stage_params, n_backbones=c)
        assert recs and all(r.cost.macs <= c * sum(RESNET34_STAGE_MACS) * (1 + 1e-9) for r in recs)
        assert recs[0].score >= best - 1e-12
        best = recs[0].score
    assert recommend(table, k=1, block_macs=RESNET34_STAGE_MACS, n_backbones=1)[0].key == TABLE1[0][0]
    cap = 1.2 * sum(stage_params)
    recs = recommend(table, k=50, block_macs=RESNET34_STAGE_MACS, block_params=stage_params, max_params=cap)
    assert recs and all(r.cost.params <= cap for r in recs)
    assert recommend(table, k=3, block_macs=RESNET34_STAGE_MACS, max_macs=1.0) == []


def test_synthetic_estimate_matches_definition():
    """Δt̂_i averages task i over its pairs at their branch blocks (Fig. 2)."""
    rng = np.random.default_rng(0)
    tab = PairTable(3, 5, {p: np.vstack([np.zeros((1, 2)), rng.normal(size=(5, 2))]) for p in [(0, 1), (0, 2), (1, 2)]})
    lay = parse_key("0,1,2|0,1,2|0,1/2|0,1/2|0/1/2")  # b01 = 4, b02 = b12 = 2
    w = task_weights(tab)
    est = [(tab.dt(0, 1, 4) + tab.dt(0, 2, 2)) / 2, (tab.dt(1, 0, 4) + tab.dt(1, 2, 2)) / 2,
           (tab.dt(2, 0, 2) + tab.dt(2, 1, 2)) / 2]
    assert score(lay, tab) == pytest.approx(float(np.dot(w, est)))
    assert w.sum() == pytest.approx(1.0)
