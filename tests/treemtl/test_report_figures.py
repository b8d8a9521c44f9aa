"""``mtlbench report`` draws the tables of ``mtlbench recommend``: Δt against the branch point, score against MACs,
and predicted against trained scores once verified. Real results folders, the real ``recommend`` CLI, the real
report; each figure's CSV is checked against the Parquet table it was drawn from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from results_factory import pair_folder
from scipy.stats import pearsonr, spearmanr

from mtlbench.report import render_report
from mtlbench.treemtl import from_results as fr
from mtlbench.treemtl.tables import path_of, read_table, write_table

FORMATS = ("png", "csv", "html")
STEMS = ("treemtl_delta_t", "treemtl_score_macs", "treemtl_verified")


@pytest.fixture(scope="module")
def recommended(tmp_path_factory, cache_dir) -> Path:
    """A pair sweep's results folder after the real ``mtlbench recommend --budget-backbones 1.5 --top-k 2``."""
    res = pair_folder(tmp_path_factory.mktemp("rec") / "res")
    proc = run_cli("recommend", str(res), "--budget-backbones", "1.5", "--top-k", "2", cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("pair_table", "task_weights", "recommendations"):
        assert path_of(res, name).is_file()
    return res


def _verify_by_hand(res: Path, trained: dict[int, float | None]) -> pd.DataFrame:
    """Rewrite the recommendations with the verification columns filled (rank -> trained score; None: the run
    failed) through the tables' own writer; returns the table as read back."""
    rows = []
    for row in read_table(res, "recommendations").to_dict("records"):
        row = {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}
        rank = int(row["rank"])
        if rank in trained:
            score = trained[rank]
            row.update(verified_run_id=f"verify-{rank}", verified_seed=2,
                       verified_status="ok" if score is not None else "failed", trained_score=score,
                       trained_dt_cls=None if score is None else score + 1.0,
                       trained_dt_reg=None if score is None else score - 1.0)
        rows.append(row)
    write_table(res, "recommendations", rows)
    return read_table(res, "recommendations")


def _files(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.name.startswith("treemtl_")}


def test_delta_t_and_score_macs_figures(recommended, tmp_path):
    out = tmp_path / "report"
    res = render_report([recommended], out, formats=FORMATS)
    assert _files(out) == {f"{s}.{e}" for s in STEMS[:2] for e in ("png", "csv")}
    for stem in STEMS[:2]:
        assert out / f"{stem}.png" in res.files and out / f"{stem}.csv" in res.files
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("verification figure skipped" in s and "--verify" in s for s in res.skipped)
    assert not any("TreeMTL figures skipped" in s for s in res.skipped)

    # Δt: the pair table, row for row
    pair = read_table(recommended, "pair_table").sort_values(["task", "branch_point"]).reset_index(drop=True)
    got = pd.read_csv(out / "treemtl_delta_t.csv", dtype={"seeds": str})
    assert len(got) == 12 and list(got.columns) == list(pair.columns)
    for col in ("task", "partner", "architecture", "metrics", "seeds", "branch_point", "n_seeds"):
        assert got[col].tolist() == pair[col].tolist(), col
    for col in ("dt_mean", "dt_std", "dt_min", "dt_max"):
        np.testing.assert_allclose(got[col].to_numpy(float), pair[col].to_numpy(float), equal_nan=True)
    # the hand-checked pair sweep: Tree-b2's accuracy is +5% on average, from 0% to +10% over the two seeds
    b2 = got[(got["task"] == "cls") & (got["branch_point"] == 2)].iloc[0]
    assert b2["dt_mean"] == pytest.approx(5.0) and (b2["dt_min"], b2["dt_max"]) == pytest.approx((0.0, 10.0))

    # score vs MACs: the ranked layouts, the budget as MACs and the Pareto front
    rec = read_table(recommended, "recommendations").sort_values("rank").reset_index(drop=True)
    got = pd.read_csv(out / "treemtl_score_macs.csv")
    assert got["rank"].tolist() == rec["rank"].tolist() and got["layout_key"].tolist() == rec["layout_key"].tolist()
    assert got["architecture"].tolist() == rec["architecture"].tolist()
    for col in ("score", "macs", "macs_pct", "params"):
        np.testing.assert_allclose(got[col].to_numpy(float), rec[col].to_numpy(float))
    assert got["fits"].tolist() == rec["fits"].tolist() and got["recommended"].tolist() == rec["recommended"].tolist()
    assert (got["budget"] == "MACs <= 1.5 backbones").all()
    one_trunk = rec.loc[rec["architecture"] == "Tree-b0", "macs"].iloc[0] / 2   # b = 0: two independent trunks
    np.testing.assert_allclose(got["budget_macs"], 1.5 * one_trunk)
    assert ((got["macs"] <= got["budget_macs"] * (1 + 1e-9)) == got["fits"]).all()
    s, m = rec["score"].to_numpy(float), rec["macs"].to_numpy(float)
    front = [not any(s[j] >= s[i] and m[j] <= m[i] and (s[j] > s[i] or m[j] < m[i]) for j in range(len(s)))
             for i in range(len(s))]
    assert got["pareto"].tolist() == front and any(front) and not all(front)
    assert got.loc[got["rank"] == 1, "pareto"].item()   # the best score is always on the front

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "TreeMTL: Δt against the branch point" in page and "TreeMTL: score against backbone MACs" in page
    assert "TreeMTL: predicted vs trained score" not in page


def test_verified_figure_only_with_trained_scores(recommended, tmp_path):
    res = tmp_path / "res"
    shutil.copytree(recommended, res)
    ranks = read_table(res, "recommendations")["rank"].tolist()
    assert len(ranks) >= 4
    trained = {ranks[0]: 4.0, ranks[1]: 3.5, ranks[2]: -1.0, ranks[3]: None}   # the 4th one's run failed
    rec = _verify_by_hand(res, trained)
    assert rec["trained_score"].notna().sum() == 3 and rec["verified_run_id"].notna().sum() == 4

    out = tmp_path / "report"
    result = render_report([res], out, formats=(*FORMATS, "svg"))
    assert _files(out) == {f"{s}.{e}" for s in STEMS for e in ("png", "svg", "csv")}
    assert not any("verification" in s for s in result.skipped)
    got = pd.read_csv(out / "treemtl_verified.csv")
    ver = rec[rec["trained_score"].notna()].sort_values("rank").reset_index(drop=True)
    assert got["rank"].tolist() == ver["rank"].tolist() == ranks[:3]
    assert got["layout_key"].tolist() == ver["layout_key"].tolist()
    np.testing.assert_allclose(got["score"], ver["score"])
    np.testing.assert_allclose(got["trained_score"], [4.0, 3.5, -1.0])
    np.testing.assert_allclose(got["trained_dt_cls"], [5.0, 4.5, 0.0])
    assert (got["verified_status"] == "ok").all() and (got["verified_seed"] == 2).all()
    assert got["trained_rank"].tolist() == [1, 2, 3]
    sp = spearmanr(ver["score"], ver["trained_score"]).statistic
    pe = pearsonr(ver["score"], ver["trained_score"]).statistic
    np.testing.assert_allclose(got["spearman"], sp)
    np.testing.assert_allclose(got["pearson"], pe)
    # the title names both correlations (SVG keeps text as text)
    svg = (out / "treemtl_verified.svg").read_text(encoding="utf-8")
    assert f"Spearman rank correlation = {sp:.3f}" in svg and f"Pearson correlation = {pe:.3f}" in svg
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "TreeMTL: predicted vs trained score" in page and "1 verified layout(s) did not finish ok" in page

    # re-rendering the unverified folder into the same report folder removes the stale verification figure
    render_report([recommended], out, formats=(*FORMATS, "svg"))
    assert _files(out) == {f"{s}.{e}" for s in STEMS[:2] for e in ("png", "svg", "csv")}


def test_no_treemtl_tables_no_figure(tmp_path):
    res = pair_folder(tmp_path / "res")          # the pair runs, but `recommend` never ran
    out = tmp_path / "report"
    result = render_report([res], out, formats=FORMATS)
    assert _files(out) == set() and not any(p.name.startswith("treemtl_") for p in result.files)
    assert not any("TreeMTL" in s for s in result.skipped)      # silent, as for a grid without LTB runs
    assert "TreeMTL:" not in (out / "report.html").read_text(encoding="utf-8")


def test_pair_table_only(tmp_path):
    """Tree-b4 never finished: ``recommend`` writes the pair table, then cannot rank; the Δt figure is drawn (with
    the gap) and the score figure is skipped with a note."""
    res = pair_folder(tmp_path / "res", skip={("Tree-b4", 0), ("Tree-b4", 1)})
    pair = fr.build_pair_table(fr.select_runs([res]), fr.parse_metrics())
    fr.write_tables(res, pair)
    assert not path_of(res, "recommendations").exists()
    out = tmp_path / "report"
    result = render_report([res], out, formats=FORMATS)
    assert _files(out) == {"treemtl_delta_t.png", "treemtl_delta_t.csv"}
    got = pd.read_csv(out / "treemtl_delta_t.csv")
    assert got.loc[got["branch_point"] == 4, "dt_mean"].isna().all() and (got.loc[got["branch_point"] == 4,
                                                                                  "n_seeds"] == 0).all()
    assert any("score-MACs figure skipped" in s for s in result.skipped)


def test_two_folders_with_tables(recommended, tmp_path):
    """Each results folder holding tables gets its own figures, numbered by position."""
    other = tmp_path / "other"
    shutil.copytree(recommended, other)
    _verify_by_hand(other, {1: 2.0, 2: 1.0})
    out = tmp_path / "report"
    render_report([recommended, other], out, formats=("csv",))
    assert _files(out) == {"treemtl_delta_t_1.csv", "treemtl_score_macs_1.csv", "treemtl_delta_t_2.csv",
                           "treemtl_score_macs_2.csv", "treemtl_verified_2.csv"}
    assert len(pd.read_csv(out / "treemtl_verified_2.csv")) == 2
