"""mtlbench.report.ranking: mean ranks over the grid's blocks, the Friedman test, Nemenyi and the CD diagram."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mtlbench.report import figures as F
from mtlbench.report.ranking import (MIN_BLOCKS, Ranking, add_rankings, block_matrix, cd_diagram,
                                     critical_difference, rank_methods, ranking_table)

WEIGHTINGS = ["A", "B", "C"]


def run(arch: str, weighting: str, seed: int, acc: float, *, mape: float | None = None, status: str = "ok",
        decoder: str = "D1", kind: str = "mtl") -> dict:
    mape = 100.0 - acc if mape is None else mape
    return dict(architecture=arch, weighting=weighting, decoder=decoder, target_scaling="none", seed=seed,
                kind=kind, status=status, best_accuracy=acc, best_mse=mape * 10, best_mape=mape,
                last_accuracy=100.0 - acc, last_mse=acc * 10, last_mape=acc)


def dominance_runs(archs=("HPS", "MTAN"), seeds=(0, 1)) -> list[dict]:
    """A beats B beats C in every block (accuracy 90 > 80 > 70, MAPE 10 < 20 < 30), with some jitter per block."""
    rows = []
    for i, (arch, seed) in enumerate(itertools.product(archs, seeds)):
        for w, acc in zip(WEIGHTINGS, (90.0, 80.0, 70.0)):
            rows.append(run(arch, w, seed, acc + 0.1 * i))
    return rows


def hand_friedman(mean_ranks: np.ndarray, n: int, tie_sizes: list[int] = ()) -> float:
    """Friedman's chi-square from mean ranks, 12N/(k(k+1)) sum R_j^2 - 3N(k+1), divided by scipy's tie
    correction 1 - sum(t^3 - t) / (N k (k^2 - 1))."""
    k = len(mean_ranks)
    chi2 = 12 * n / (k * (k + 1)) * float(np.sum(np.square(mean_ranks))) - 3 * n * (k + 1)
    correction = 1 - sum(t ** 3 - t for t in tie_sizes) / (n * k * (k * k - 1))
    return chi2 / correction


def test_dominance_gives_ranks_one_two_three_and_the_hand_friedman_statistic():
    r = rank_methods(pd.DataFrame(dominance_runs()), "weighting", "accuracy")
    assert isinstance(r, Ranking)
    assert r.reason is None and r.tested
    assert list(r.mean_ranks.index) == ["A", "B", "C"]
    assert r.mean_ranks.tolist() == [1.0, 2.0, 3.0]
    assert (r.n_blocks, r.n_dropped, r.n_seeds) == (4, 0, 2)
    assert r.friedman_statistic == pytest.approx(hand_friedman(np.array([1.0, 2.0, 3.0]), 4))
    assert r.friedman_statistic == pytest.approx(8.0)
    assert r.friedman_p == pytest.approx(np.exp(-8.0 / 2))   # chi-square with 2 degrees of freedom
    # Nemenyi: a symmetric p-value matrix in the order of the ranks; the critical difference separates A from C only
    p = r.nemenyi_p
    assert list(p.index) == list(p.columns) == ["A", "B", "C"]
    assert np.allclose(p.to_numpy(), p.to_numpy().T) and np.allclose(np.diag(p.to_numpy()), 1.0)
    assert r.critical_difference == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 4)), abs=1e-3)  # Demsar's q_0.05
    assert p.loc["A", "C"] < 0.05 < p.loc["A", "B"]
    assert abs(r.mean_ranks["A"] - r.mean_ranks["C"]) > r.critical_difference > abs(
        r.mean_ranks["A"] - r.mean_ranks["B"])


def test_directions_come_from_the_metric_specs():
    runs = pd.DataFrame(dominance_runs())
    acc = rank_methods(runs, "weighting", "accuracy")
    mape = rank_methods(runs, "weighting", "mape")    # A has the lowest MAPE: best
    mse = rank_methods(runs, "weighting", "mse")
    assert list(acc.mean_ranks.index) == list(mape.mean_ranks.index) == list(mse.mean_ranks.index) == WEIGHTINGS
    # "last" reads last_*: there accuracy is reversed (C best) and MAPE too (A has the highest last MAPE)
    last_acc = rank_methods(runs, "weighting", "accuracy", selection="last")
    last_mape = rank_methods(runs, "weighting", "mape", selection="last")
    assert list(last_acc.mean_ranks.index) == ["C", "B", "A"]
    assert list(last_mape.mean_ranks.index) == ["C", "B", "A"]
    assert last_acc.mean_ranks.tolist() == [1.0, 2.0, 3.0]


def test_ties_share_the_average_rank_and_scipy_corrects_the_statistic():
    rows = dominance_runs()
    for row in rows:  # in the last block (MTAN, seed 1) A and B tie
        if (row["architecture"], row["seed"], row["weighting"]) == ("MTAN", 1, "B"):
            row["best_accuracy"] = 90.3
    r = rank_methods(pd.DataFrame(rows), "weighting", "accuracy")
    assert r.mean_ranks.to_dict() == {"A": 1.125, "B": 1.875, "C": 3.0}
    assert r.friedman_statistic == pytest.approx(hand_friedman(np.array([1.125, 1.875, 3.0]), 4, [2]))
    assert r.friedman_statistic == pytest.approx(7.6)


def test_incomplete_blocks_are_dropped_and_counted():
    rows = dominance_runs()
    rows += [run("LTB", "A", 0, 95), run("LTB", "B", 0, 10, status="failed"), run("LTB", "C", 0, 1)]
    rows += [run("LTB", "A", 1, 95), run("LTB", "B", 1, 94), run("LTB", "C", 1, 0, status="not_applicable")]
    rows += [run("Cross_stitch", "B", 0, 1), run("Cross_stitch", "C", 0, 99)]    # A was not run
    rows += [run("Cross_stitch", "A", 1, 1), run("Cross_stitch", "B", 1, 2), run("Cross_stitch", "C", 1, 99)]
    rows[-1]["best_accuracy"] = np.nan   # ok, but no value recorded
    rows += [run(None, "fastcar", 0, 100, kind="fastcar")]                       # never part of the grid
    runs = pd.DataFrame(rows)
    r = rank_methods(runs, "weighting", "accuracy")
    assert (r.n_blocks, r.n_dropped) == (4, 4)
    assert r.mean_ranks.tolist() == [1.0, 2.0, 3.0]
    assert r.friedman_statistic == pytest.approx(8.0)
    matrix, dropped = block_matrix(runs, "weighting", "accuracy")
    assert dropped == 4 and list(matrix.columns) == WEIGHTINGS
    assert set(matrix.index.get_level_values("architecture")) == {"HPS", "MTAN"}
    assert "fastcar" not in matrix.columns   # FastCAR rows are not part of the grid


def test_duplicate_runs_of_a_cell_and_seed_are_averaged():
    rows = dominance_runs() + [run("HPS", "C", 0, 100.0)]   # C's mean in (HPS, 0) becomes (70 + 100) / 2 = 85
    r = rank_methods(pd.DataFrame(rows), "weighting", "accuracy")
    assert r.mean_ranks.to_dict() == {"A": 1.0, "B": 2.25, "C": 2.75}


def test_architectures_are_ranked_over_weighting_blocks():
    rows = []
    for w, seed in itertools.product(["EW", "UW"], [0, 1]):
        for arch, acc in (("HPS", 60.0), ("MTAN", 70.0), ("Cross_stitch", 80.0)):
            rows.append(run(arch, w, seed, acc))
    r = rank_methods(pd.DataFrame(rows), "architecture", "accuracy")
    assert r.mean_ranks.to_dict() == {"Cross_stitch": 1.0, "MTAN": 2.0, "HPS": 3.0}
    assert r.n_blocks == 4 and r.reason is None
    assert r.nemenyi_p.index.name == "architecture"


def test_one_seed_gives_a_reason_and_no_diagram():
    runs = pd.DataFrame(dominance_runs(archs=("HPS", "MTAN", "LTB", "Cross_stitch"), seeds=(0,)))
    r = rank_methods(runs, "weighting", "accuracy")
    assert r.n_blocks == 4 and r.n_seeds == 1
    assert r.mean_ranks.tolist() == [1.0, 2.0, 3.0]   # the ranks are still given
    assert r.reason is not None and "seed" in r.reason and "\n" not in r.reason
    assert r.friedman_statistic is None and r.friedman_p is None
    assert r.nemenyi_p is None and r.critical_difference is None
    with pytest.raises(ValueError, match="seed"):
        cd_diagram(r)
    emitted, skipped = [], []
    frames = add_rankings(runs, lambda *a: emitted.append(a), skipped, "best")
    assert emitted == []
    assert len(skipped) == 4 and all("seed" in s for s in skipped)
    assert frames["cd_weighting_accuracy"]["mean_rank"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("rows, words", [
    ([run(a, "A", s, 90) for a in ("HPS", "MTAN") for s in (0, 1)], "fewer than 2 weightings"),
    (dominance_runs(archs=("HPS",)), "too few complete blocks"),
    ([r for r in dominance_runs() if r["weighting"] != "C"], "at least 3"),
    ([], "no block"),
])
def test_other_reasons(rows, words):
    runs = pd.DataFrame(rows, columns=list(run("HPS", "A", 0, 1)))
    r = rank_methods(runs, "weighting", "accuracy")
    assert r.reason is not None and words in r.reason and "\n" not in r.reason
    assert r.friedman_statistic is None and r.nemenyi_p is None


def test_too_few_blocks_threshold():
    assert len(dominance_runs(archs=("HPS",))) // 3 < MIN_BLOCKS <= len(dominance_runs()) // 3


def test_all_ties_give_a_reason():
    rows = dominance_runs()
    for row in rows:
        row["best_accuracy"] = 50.0
    r = rank_methods(pd.DataFrame(rows), "weighting", "accuracy")
    assert r.mean_ranks.tolist() == [2.0, 2.0, 2.0]
    assert r.reason is not None and "ties" in r.reason


def test_critical_difference_matches_demsar_table():
    # Demsar (2006), Table 5(a): q_0.05 = 2.343 (k = 3), 2.569 (k = 4), 2.949 (k = 7)
    for k, q in ((3, 2.343), (4, 2.569), (7, 2.949)):
        assert critical_difference(k, 10) == pytest.approx(q * np.sqrt(k * (k + 1) / 60), abs=1e-3)


def test_ranking_table_one_row_per_method():
    runs = pd.DataFrame(dominance_runs())
    rows = dominance_runs()
    table = ranking_table([rank_methods(runs, "weighting", m) for m in ("accuracy", "mape")])
    assert list(table.index) == WEIGHTINGS and table.index.name == "weighting"
    assert list(table.columns) == ["mean_rank_accuracy", "mean_rank_mape"]
    assert table.to_numpy().tolist() == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    with pytest.raises(ValueError):
        ranking_table([rank_methods(runs, "weighting"), rank_methods(pd.DataFrame(rows), "architecture")])


def test_the_diagram_builds_and_saves(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    names = ["EW", "UW", "GradNorm", "PCGrad", "MGDA"]
    for arch, dec, seed in itertools.product(["HPS", "MTAN"], ["D1", "D2"], [0, 1, 2]):
        for i, w in enumerate(names):
            rows.append(run(arch, w, seed, 80 + 2 * i + rng.normal(0, 1.5), decoder=dec))
    r = rank_methods(pd.DataFrame(rows), "weighting", "accuracy")
    assert r.tested and r.n_blocks == 12
    fig = cd_diagram(r)
    assert isinstance(fig, Figure)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert all(n in texts for n in names) and "critical difference" in texts
    written, png = F.save(fig, tmp_path / "cd", ("png", "svg"))
    assert png.startswith(b"\x89PNG") and {p.suffix for p in written} == {".png", ".svg"}
    frame = r.frame()
    assert frame["weighting"].tolist() == list(r.mean_ranks.index)
    assert frame["mean_rank"].is_monotonic_increasing
    assert frame["friedman_chi2"].iloc[0] == pytest.approx(r.friedman_statistic)


def test_add_rankings_emits_one_diagram_per_factor_and_metric():
    rows = []
    for arch, w, seed in itertools.product(["HPS", "MTAN", "LTB"], ["EW", "UW", "MGDA"], [0, 1]):
        acc = {"EW": 70, "UW": 80, "MGDA": 90}[w] + {"HPS": 0, "MTAN": 1, "LTB": 2}[arch] + seed * 0.1
        rows.append(run(arch, w, seed, acc))
    emitted, skipped = [], []
    frames = add_rankings(pd.DataFrame(rows), lambda fig, name, title, caption: emitted.append(
        (fig, name, title, caption)), skipped, "best")
    assert skipped == []
    assert [e[1] for e in emitted] == ["cd_weighting_accuracy", "cd_weighting_mape", "cd_architecture_accuracy",
                                       "cd_architecture_mape"]
    assert all(isinstance(e[0], Figure) and e[2] and e[3] for e in emitted)
    assert set(frames) == {n for _, n, _, _ in emitted} | {"ranking_weighting", "ranking_architecture"}
    assert frames["cd_weighting_accuracy"]["weighting"].tolist() == ["MGDA", "UW", "EW"]
    assert frames["cd_weighting_accuracy"]["mean_rank"].tolist() == [1.0, 2.0, 3.0]
    assert frames["ranking_architecture"].set_index("architecture")["mean_rank_accuracy"].to_dict() == {
        "LTB": 1.0, "MTAN": 2.0, "HPS": 3.0}
    # draw=False: the data only
    emitted.clear()
    frames2 = add_rankings(pd.DataFrame(rows), lambda *a: emitted.append(a), [], "best", draw=False)
    assert emitted == [] and set(frames2) == set(frames)


def test_bad_arguments():
    runs = pd.DataFrame(dominance_runs())
    with pytest.raises(ValueError):
        rank_methods(runs, "decoder")
    with pytest.raises(ValueError):
        rank_methods(runs, "weighting", "nope")
    with pytest.raises(ValueError):
        rank_methods(runs, "weighting", "accuracy", selection="middle")
