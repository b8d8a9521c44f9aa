"""Ranking across the grid: mean ranks, the Friedman test and a critical-difference diagram (Demšar, JMLR 2006).

The methods compared are the values of one *factor* of the grid, ``weighting`` or ``architecture``. A *block* is
one value of every other key of a run: ``(other factor, decoder, target_scaling, seed)`` - with one target scaling,
the issue's "architectures x decoders x seeds" (for the weightings) and "weightings x decoders x seeds" (for the
architectures). In each block the methods are ranked on one test metric (rank 1 = best, the direction taken from
:data:`~mtlbench.report.data.METRIC_SPECS`' ``better``; ties get the average of the ranks they span), and the ranks are
averaged over the blocks.

Which runs count:

* only ``kind == "mtl"`` rows with ``status == "ok"`` and a finite value of the metric; several such runs of one
  method in one block (the same cell and seed from two folders) are averaged;
* the methods compared are those with at least one such run;
* a block is kept only if it is *complete*, i.e. holds a value for every compared method. A block where some
  method failed, diverged, is ``not_applicable``, was not run or lacks the metric is dropped for all methods, and
  :attr:`Ranking.n_dropped` counts the dropped blocks (of those where any MTL run of the grid was recorded).

The Friedman test (:func:`scipy.stats.friedmanchisquare`) and the Nemenyi post-hoc test
(:func:`scikit_posthocs.posthoc_nemenyi_friedman`) are run on the complete blocks only when there are at least
:data:`MIN_SEEDS` seeds, :data:`MIN_BLOCKS` complete blocks and three methods (scipy's Friedman test needs three);
otherwise :attr:`Ranking.reason` says in one line why they are not shown (the mean ranks are still given when any
block is complete). The critical difference drawn on the diagram is Demšar's
``CD = q_alpha * sqrt(k (k + 1) / (6 N))``, ``q_alpha`` being the studentized range quantile over sqrt(2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from mtlbench.report.data import CELL_KEY, METRIC_SPECS, MetricSpec, ordered
from mtlbench.report.figures import RC, new_figure

Factor = Literal["weighting", "architecture"]
FACTORS: tuple[Factor, ...] = ("weighting", "architecture")
RANK_METRICS = ("accuracy", "mape")   # the diagrams the report draws (add_rankings)
MIN_SEEDS = 2      # the issue: with fewer than 2 seeds the test is not shown
MIN_BLOCKS = 4     # fewer complete blocks make the chi-square approximation meaningless
MIN_METHODS_TEST = 3   # scipy.stats.friedmanchisquare needs at least three samples
ALPHA = 0.05

_PLURAL = {"weighting": "weightings", "architecture": "architectures"}


@dataclass(frozen=True, eq=False)
class Ranking:
    """The ranking of one factor's methods on one metric.

    ``mean_ranks``: mean rank per method over the complete blocks, best (lowest) first; empty when no block is
    complete. ``friedman_statistic`` / ``friedman_p``, ``nemenyi_p`` (a symmetric method x method matrix of
    p-values, in the order of ``mean_ranks``) and ``critical_difference`` are None exactly when ``reason`` (one line)
    says why the test is not shown.
    """

    factor: str
    metric: str
    selection: str
    mean_ranks: pd.Series
    n_blocks: int
    n_dropped: int
    n_seeds: int
    friedman_statistic: float | None = None
    friedman_p: float | None = None
    nemenyi_p: pd.DataFrame | None = None
    critical_difference: float | None = None
    alpha: float = ALPHA
    reason: str | None = None

    @property
    def spec(self) -> MetricSpec:
        return METRIC_SPECS[self.metric]

    @property
    def tested(self) -> bool:
        return self.reason is None

    def frame(self) -> pd.DataFrame:
        """The figure's data: one row per method (best first) with its mean rank, and the test's numbers."""
        out = pd.DataFrame({self.factor: list(self.mean_ranks.index), "mean_rank": self.mean_ranks.to_numpy(float)})
        out["n_blocks"] = self.n_blocks
        out["n_dropped"] = self.n_dropped
        out["friedman_chi2"] = np.nan if self.friedman_statistic is None else self.friedman_statistic
        out["friedman_p"] = np.nan if self.friedman_p is None else self.friedman_p
        out["critical_difference"] = np.nan if self.critical_difference is None else self.critical_difference
        return out


def critical_difference(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Demšar's critical difference of mean ranks for the Nemenyi test: k methods, N blocks."""
    q_alpha = float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / np.sqrt(2.0)
    return q_alpha * float(np.sqrt(k * (k + 1) / (6.0 * n_blocks)))


def block_matrix(runs: pd.DataFrame, factor: Factor, metric: str = "accuracy",
                 selection: str = "best") -> tuple[pd.DataFrame, int]:
    """The complete blocks (rows, indexed by the block key) x compared methods (columns, registry order) of the
    metric's values, and the number of blocks dropped as incomplete. See the module docstring for the rule."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; choose from: {', '.join(FACTORS)}")
    if metric not in METRIC_SPECS:
        raise ValueError(f"unknown metric {metric!r}; choose from: {', '.join(METRIC_SPECS)}")
    if selection not in ("best", "last"):
        raise ValueError(f"unknown selection {selection!r}; choose best or last")
    column = METRIC_SPECS[metric].source(selection)
    block_key = [c for c in CELL_KEY if c != factor] + ["seed"]
    mtl = runs[runs["kind"] == "mtl"] if "kind" in runs else runs
    missing = [c for c in [factor, *block_key] if c not in mtl]
    if missing or mtl.empty:
        return pd.DataFrame(), 0
    all_blocks = mtl[block_key].drop_duplicates()
    if column not in mtl:
        return pd.DataFrame(), len(all_blocks)
    values = pd.to_numeric(mtl[column], errors="coerce")
    ok = mtl[(mtl["status"] == "ok") & np.isfinite(values.to_numpy(float, na_value=np.nan))]
    if ok.empty:
        return pd.DataFrame(), len(all_blocks)
    ok = ok.assign(_value=pd.to_numeric(ok[column], errors="coerce").astype(float))
    wide = ok.pivot_table(index=block_key, columns=factor, values="_value", aggfunc="mean", dropna=False,
                          observed=True)
    wide = wide[ordered(factor, wide.columns)]
    wide.columns.name = factor
    complete = wide.dropna(how="any").sort_index()
    return complete, len(all_blocks) - len(complete)


def rank_methods(runs: pd.DataFrame, factor: Factor = "weighting", metric: str = "accuracy",
                 selection: str = "best", *, alpha: float = ALPHA) -> Ranking:
    """Rank the values of ``factor`` on ``metric`` over the blocks of the grid; Friedman and Nemenyi tests when
    the data allow them (else ``reason``)."""
    matrix, n_dropped = block_matrix(runs, factor, metric, selection)
    spec = METRIC_SPECS[metric]
    methods = _PLURAL[factor]
    n_blocks = len(matrix)
    n_seeds = int(matrix.index.get_level_values("seed").nunique()) if n_blocks else 0
    base = dict(factor=factor, metric=metric, selection=selection, n_blocks=n_blocks, n_dropped=n_dropped,
                n_seeds=n_seeds, alpha=alpha)
    dropped = f" ({n_dropped} incomplete block{'s' if n_dropped != 1 else ''} dropped)" if n_dropped else ""
    if n_blocks == 0:
        return Ranking(mean_ranks=pd.Series(dtype=float, name="mean_rank"), **base,
                       reason=f"no block holds an ok {spec.source(selection)} for every {factor}{dropped}")
    k = matrix.shape[1]
    # orient so that smaller = better, then rank within each block (rank 1 = best; ties share the average rank)
    oriented = -matrix if spec.better == "max" else matrix
    ranks = pd.DataFrame(stats.rankdata(oriented.to_numpy(float), axis=1, method="average"),
                         index=matrix.index, columns=matrix.columns)
    mean = ranks.mean(axis=0).rename("mean_rank")
    mean = mean.iloc[np.argsort(mean.to_numpy(), kind="stable")]   # best first; ties keep registry order
    mean.index.name = factor

    reason = None
    if k < 2:
        reason = f"fewer than 2 {methods} finished ok in the same blocks"
    elif n_seeds < MIN_SEEDS:
        reason = f"fewer than {MIN_SEEDS} seeds ({n_seeds} in the complete blocks)"
    elif n_blocks < MIN_BLOCKS:
        reason = f"too few complete blocks ({n_blocks}, at least {MIN_BLOCKS} needed){dropped}"
    elif k < MIN_METHODS_TEST:
        reason = f"only {k} {methods} compared; the Friedman test needs at least {MIN_METHODS_TEST}"
    elif (ranks.nunique(axis=1) == 1).all():
        reason = f"every {factor} ties in every block"
    if reason is not None:
        return Ranking(mean_ranks=mean, **base, reason=reason)

    columns = [oriented[c].to_numpy(float) for c in oriented.columns]
    chi2, p = stats.friedmanchisquare(*columns)
    import scikit_posthocs as sp  # imports statsmodels: only when a test is run

    nemenyi = sp.posthoc_nemenyi_friedman(oriented.reset_index(drop=True))
    nemenyi = nemenyi.loc[mean.index, mean.index]
    nemenyi.index.name, nemenyi.columns.name = factor, factor
    return Ranking(mean_ranks=mean, **base, friedman_statistic=float(chi2), friedman_p=float(p), nemenyi_p=nemenyi,
                   critical_difference=critical_difference(k, n_blocks, alpha))


def ranking_table(rankings: Iterable[Ranking]) -> pd.DataFrame:
    """One row per method, one ``mean_rank_<metric>`` column per ranking (all of one factor); rows in the order of
    the first ranking (best first), methods it lacks after them. NaN where a ranking has no rank for a method."""
    rankings = list(rankings)
    if not rankings:
        return pd.DataFrame()
    factors = {r.factor for r in rankings}
    if len(factors) > 1:
        raise ValueError(f"rankings of different factors cannot share a table: {sorted(factors)}")
    factor = rankings[0].factor
    rows = list(dict.fromkeys(m for r in rankings for m in r.mean_ranks.index))
    table = pd.DataFrame({f"mean_rank_{r.metric}": r.mean_ranks.reindex(rows).to_numpy(float) for r in rankings},
                         index=pd.Index(rows, name=factor))
    return table


def cd_diagram(ranking: Ranking) -> Figure:
    """The critical-difference diagram: methods on the mean-rank axis (1 = best, left), bars joining the methods
    the Nemenyi test cannot tell apart at ``alpha``, and the critical difference. Raises ValueError when the
    ranking has no test (``ranking.reason``)."""
    if ranking.nemenyi_p is None or ranking.reason is not None:
        raise ValueError(f"no critical-difference diagram: {ranking.reason or 'no Nemenyi test'}")
    import scikit_posthocs as sp

    k = len(ranking.mean_ranks)
    spec = ranking.spec
    with matplotlib.rc_context(RC):
        fig = new_figure(max(6.5, 4.0 + 0.35 * k), 1.6 + 0.3 * ((k + 1) // 2) + 0.25 * k / 2)
        ax = fig.add_subplot()
        sp.critical_difference_diagram(ranking.mean_ranks, ranking.nemenyi_p, alpha=ranking.alpha, ax=ax,
                                       label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
                                       text_h_margin=0.02, label_props={"fontsize": 8.5})
        ax.set_xlim(0.8, k + 0.2)
        ax.set_xticks(range(1, k + 1))
        ax.set_xlabel("mean rank (1 = best)")
        ax.xaxis.set_label_position("top")
        # the critical difference, drawn here (not by scikit-posthocs: its ``cd`` argument is recent)
        cd = ranking.critical_difference
        bottom, top = ax.get_ylim()
        y = bottom - 0.4   # below the lowest label
        ax.plot([1, 1 + cd], [y, y], color="black", linewidth=1.6, solid_capstyle="butt")
        ax.plot([1, 1], [y - 0.2, y + 0.2], color="black", linewidth=1.0)
        ax.plot([1 + cd, 1 + cd], [y - 0.2, y + 0.2], color="black", linewidth=1.0)
        ax.text(1 + cd + 0.05, y, f"critical difference = {cd:.2f}", ha="left", va="center", fontsize=8)
        ax.set_ylim(y - 0.4, top)
        ax.set_title(f"{spec.title}: mean rank of the {_PLURAL[ranking.factor]} over {ranking.n_blocks} blocks\n"
                     f"Friedman χ² = {ranking.friedman_statistic:.2f}, p = {ranking.friedman_p:.2g}; "
                     f"Nemenyi CD = {ranking.critical_difference:.2f} (α = {ranking.alpha:g})",
                     fontsize=9.5)
    return fig


def _caption(r: Ranking) -> str:
    spec = r.spec
    others = [c for c in CELL_KEY if c != r.factor]
    return (f"Mean rank of each {r.factor} ({spec.title}, {r.selection} validation epoch; rank 1 = "
            f"{'highest' if spec.better == 'max' else 'lowest'}, ties share the average rank) over {r.n_blocks} "
            f"blocks = {' x '.join(others)} x seed ({r.n_seeds} seeds). Only blocks where every {r.factor} "
            f"finished ok count; {r.n_dropped} incomplete block{'s were' if r.n_dropped != 1 else ' was'} dropped. "
            f"Friedman χ² = {r.friedman_statistic:.2f}, p = {r.friedman_p:.2g}. Thick bars join {_PLURAL[r.factor]} "
            f"the Nemenyi test (Demšar 2006) cannot tell apart at α = {r.alpha:g}; the bar below is the "
            f"critical difference CD = {r.critical_difference:.2f}.")


def add_rankings(data_runs: pd.DataFrame, emit: Callable[[Any, str, str, str], None], skipped: list[str],
                 selection: str = "best", *, draw: bool = True, metrics: Iterable[str] = RANK_METRICS,
                 factors: Iterable[Factor] = FACTORS) -> dict[str, pd.DataFrame]:
    """The report's rankings: for each factor and metric, ``emit(fig, "cd_<factor>_<metric>", title, caption)``
    with the critical-difference diagram (when ``draw``), or a one-line reason appended to ``skipped``.

    Returns the data to export as CSV, keyed by file stem: ``cd_<factor>_<metric>`` (the diagram's mean ranks and
    test numbers, also when the test is not shown) and ``ranking_<factor>`` (:func:`ranking_table`)."""
    metrics = list(metrics)
    frames: dict[str, pd.DataFrame] = {}
    for factor in factors:
        rankings = []
        for metric in metrics:
            r = rank_methods(data_runs, factor, metric, selection)
            name = f"cd_{factor}_{metric}"
            if len(r.mean_ranks):
                rankings.append(r)
                frames[name] = r.frame()
            if r.reason is not None:
                skipped.append(f"Critical-difference diagram of the {_PLURAL[factor]} ({r.spec.title}) "
                               f"not shown: {r.reason}.")
            elif draw:
                emit(cd_diagram(r), name, f"Ranking of the {_PLURAL[factor]}: {r.spec.title}", _caption(r))
        if rankings:
            frames[f"ranking_{factor}"] = ranking_table(rankings).reset_index()
    return frames
