"""The report's findings: a few sentences computed from the results, each with its numbers and seed spread.

Every value is a mean ± sample std and the range [min-max] over the seeds that finished ok (``n`` seeds), in display
units (:data:`~mtlbench.report.data.METRIC_SPECS`).

**The rule** (:func:`verdict`), used for every comparison below: two values *a* and *b* differ - one *leads* -
only when ``|mean_a - mean_b| > std_a + std_b``; otherwise they *tie*. When either side has a single seed its
spread is unknown, none is invented, and the comparison reads "one seed: no spread, not a finding".

Findings (in order): the rule and the seeds; the best cell per metric and decoder against its runner-up; where
FastCAR trained for another length than the grid, that it did; FastCAR against the best MTL cell on accuracy, MAPE
and run time; the effect of target scaling paired over the cells that ran with both scalings (else "not shown" and
why); which architectures and weightings lead on average; what is missing or failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mtlbench.config import cell_name
from mtlbench.report.data import (CELL_KEY, METRIC_SPECS, MetricSpec, _stats, aggregate_cells, aggregate_fastcar,
                                  ordered)
from mtlbench.report.tables import format_spread

LEAD, TIE, ONE_SEED = "lead", "tie", "one seed"
ONE_SEED_TEXT = "one seed: no spread, not a finding"
LEADER_METRICS = ("accuracy", "mape")          # the axes' averages: the paper's two headline metrics
FASTCAR_METRICS = ("accuracy", "mape", "time")


@dataclass(frozen=True)
class Stat:
    """A mean over seeds with its sample std (NaN with one seed), the number of seeds and their range."""

    mean: float
    std: float
    n: int
    lo: float = float("nan")
    hi: float = float("nan")

    @property
    def ok(self) -> bool:
        return self.n > 0 and bool(np.isfinite(self.mean))


def verdict(a: Stat, b: Stat) -> str:
    """The module's rule: LEAD when |a - b| exceeds std_a + std_b, TIE when within it, ONE_SEED when a spread is
    unknown (a side with one seed)."""
    if a.n < 2 or b.n < 2 or not (np.isfinite(a.std) and np.isfinite(b.std)):
        return ONE_SEED
    return LEAD if abs(a.mean - b.mean) > a.std + b.std else TIE


def _fmt(spec: MetricSpec, s: Stat) -> str:
    if not s.ok:
        return "-"
    seeds = f"{s.n} seed{'s' if s.n != 1 else ''}"
    if s.n < 2 or not np.isfinite(s.std):
        return f"{spec.format(s.mean)} ({seeds}, spread unknown)"
    return f"{format_spread(spec, s.mean, s.std, s.lo, s.hi)} ({seeds})"


def _judge(spec: MetricSpec, a: Stat, b: Stat) -> str:
    """The gap and what the rule makes of it, e.g. "gap 0.40, within the seed spread 0.90: a tie"."""
    gap = f"gap {spec.format_std(abs(a.mean - b.mean))}"
    v = verdict(a, b)
    if v == ONE_SEED:
        return f"{gap}; {ONE_SEED_TEXT}"
    spread = spec.format_std(a.std + b.std)
    return f"{gap}, beyond the seed spread {spread}: a lead" if v == LEAD else \
        f"{gap}, within the seed spread {spread}: a tie"


def _cell_stat(row: pd.Series | dict[str, Any], spec: MetricSpec) -> Stat:
    return Stat(float(row[f"{spec.name}_mean"]), float(row[f"{spec.name}_std"]), int(row[f"{spec.name}_n"]),
                float(row.get(f"{spec.name}_min", np.nan)), float(row.get(f"{spec.name}_max", np.nan)))


def _ranked(cells: pd.DataFrame, spec: MetricSpec) -> pd.DataFrame:
    """Cells with a value, best first; equal means keep axis order, as best_cell does."""
    col = f"{spec.name}_mean"
    have = cells[np.isfinite(pd.to_numeric(cells[col], errors="coerce").astype(float))]
    return have.sort_values(col, ascending=spec.better == "min", kind="stable")


def _direction(spec: MetricSpec, better: bool) -> str:
    """"faster" / "slower" for run time; "higher (better)", "lower (worse)", ... otherwise."""
    if spec.name == "time":
        return "faster" if better else "slower"
    higher = better == (spec.better == "max")
    return f"{'higher' if higher else 'lower'} ({'better' if better else 'worse'})"


def _sorted_cells(cells: pd.DataFrame) -> pd.DataFrame:
    if cells.empty:
        return cells
    keys = pd.DataFrame({k: cells[k].map({v: i for i, v in enumerate(ordered(k, cells[k]))}) for k in CELL_KEY})
    order = keys.sort_values(["target_scaling", "decoder", "architecture", "weighting"], kind="stable").index
    return cells.loc[order].reset_index(drop=True)


# -- the findings -----------------------------------------------------------------------------------------------------
def _seeds_line(runs: pd.DataFrame, selection: str) -> str:
    ok = runs[runs["status"] == "ok"]
    seeds = sorted(int(s) for s in ok["seed"].dropna().unique())
    per_run = ok.groupby(["kind", *CELL_KEY], dropna=False)["seed"].nunique() if len(ok) else pd.Series(dtype=int)
    rule = ("a difference counts (a lead) only when it exceeds the sum of the two seed spreads "
            "(|mean_a - mean_b| > std_a + std_b); otherwise it is a tie")
    head = f"Test metrics at the {selection} validation epoch, mean ± sample std [min-max] over seeds; {rule}."
    if not seeds:
        return head + " No run finished ok, so there is nothing to compare."
    if len(per_run) == 0 or int(per_run.max()) < 2:
        return (head + f" Seed spread not shown: only one seed finished ok per cell (seed "
                f"{', '.join(map(str, seeds))}), so every comparison below reads \"{ONE_SEED_TEXT}\".")
    return head + f" Seeds that finished ok: {', '.join(map(str, seeds))}."


def _best_lines(cells: pd.DataFrame, specs: list[MetricSpec], several_scalings: bool) -> list[str]:
    out = []
    for spec in specs:
        for dec in ordered("decoder", cells["decoder"]):
            ranked = _ranked(cells[cells["decoder"] == dec], spec)
            label = f"{spec.cbar}, {dec}"
            if ranked.empty:
                out.append(f"{label}: not shown: no cell finished ok with a value.")
                continue
            best = ranked.iloc[0]
            name = cell_name(best["architecture"], best["weighting"], None,
                             best["target_scaling"] if several_scalings else None)
            b = _cell_stat(best, spec)
            word = "fastest" if spec.name == "time" else "best"
            line = f"{label}: {word} cell {name} {_fmt(spec, b)}"
            if len(ranked) == 1:
                out.append(line + "; the only cell with a value, nothing to compare it with.")
                continue
            second = ranked.iloc[1]
            s = _cell_stat(second, spec)
            name2 = cell_name(second["architecture"], second["weighting"], None,
                              second["target_scaling"] if several_scalings else None)
            line += f"; runner-up {name2} {_fmt(spec, s)}, {_judge(spec, b, s)}"
            if verdict(b, s) != ONE_SEED:
                tied = sum(verdict(b, _cell_stat(r, spec)) == TIE for _, r in ranked.iloc[1:].iterrows())
                if tied:
                    line += f" ({tied} of the {len(ranked) - 1} other cells tie with it)"
            out.append(line + ".")
    return out


def _training_length(runs: pd.DataFrame) -> list[str]:
    """The distinct training lengths of some runs, e.g. ["20 epochs", "1 epoch of at most 6 steps"]."""
    out = []
    for epochs, text in zip(runs["epochs"], runs["config_json"] if "config_json" in runs else [None] * len(runs)):
        try:
            cap = json.loads(text)["protocol"].get("max_steps_per_epoch") if isinstance(text, str) else None
        except (ValueError, KeyError, TypeError, AttributeError):   # an older or hand-made record
            cap = None
        n, cap = int(epochs), (int(cap) if cap else None)
        out.append(f"{n} epoch{'s' if n != 1 else ''}" +
                   (f" of at most {cap} step{'s' if cap != 1 else ''}" if cap else ""))
    return sorted(dict.fromkeys(out))


def _budget_line(runs: pd.DataFrame) -> list[str]:
    """A line when FastCAR trained for another length than the grid (a spec's [fastcar.protocol], or folders of
    other runs reported together): its figures are then not like for like with the cells'."""
    ok = runs[(runs["status"] == "ok") & runs["epochs"].notna()]
    fc, mtl = ok[ok["kind"] == "fastcar"], ok[ok["kind"] == "mtl"]
    if fc.empty or mtl.empty:
        return []
    fc_len, mtl_len = _training_length(fc), _training_length(mtl)
    if fc_len == mtl_len:
        return []
    return [f"Training length: FastCAR trained {' / '.join(fc_len)}, the MTL cells {' / '.join(mtl_len)} (e.g. a "
            "spec's [fastcar.protocol]), so FastCAR's figures below, its run time included, are not like for like "
            "with the cells'."]


def _fastcar_lines(cells: pd.DataFrame, fastcar: dict[str, Any] | None, several_scalings: bool) -> list[str]:
    if fastcar is None:
        return ["FastCAR vs the best MTL cell: not shown: no FastCAR run in these results."]
    if fastcar.get("n_ok", 0) == 0:
        return [f"FastCAR vs the best MTL cell: not shown: no FastCAR run finished ok ({fastcar['status']})."]
    acc = METRIC_SPECS["accuracy"]
    by_acc = _ranked(cells, acc) if not cells.empty else cells
    out = []
    for m in FASTCAR_METRICS:
        spec = METRIC_SPECS[m]
        f = _cell_stat(fastcar, spec)
        # run time is weighed against the cell one would pick (the most accurate), not the fastest, poorer one
        ranked = by_acc if m == "time" else (_ranked(cells, spec) if not cells.empty else cells)
        what = "the most accurate MTL cell" if m == "time" else "the best MTL cell"
        if not f.ok or ranked.empty:
            out.append(f"FastCAR vs {what}, {spec.cbar}: not shown: "
                       + ("FastCAR has no value." if not f.ok else "no MTL cell finished ok with a value."))
            continue
        best = ranked.iloc[0]
        b = _cell_stat(best, spec)
        if not b.ok:
            out.append(f"FastCAR vs {what}, {spec.cbar}: not shown: that cell has no value.")
            continue
        name = cell_name(best["architecture"], best["weighting"], best["decoder"],
                         best["target_scaling"] if several_scalings else None)
        fc_better = f.mean > b.mean if spec.better == "max" else f.mean < b.mean
        v = verdict(f, b)
        if f.mean == b.mean or v == TIE:
            who = "FastCAR and the MTL cell tie"
        elif v == ONE_SEED:
            who = f"FastCAR is {_direction(spec, fc_better)}"
        else:
            who = f"FastCAR leads, {_direction(spec, True)}" if fc_better else "the MTL cell leads"
        out.append(f"FastCAR vs {what} ({name}), {spec.cbar}: FastCAR {_fmt(spec, f)} vs {_fmt(spec, b)}; "
                   f"{who}, {_judge(spec, f, b)}.")
    return out


def _side(pair: pd.Series, spec: MetricSpec, end: str) -> Stat:
    """One scaling's Stat from a row of two merged cells (columns suffixed ``_a`` / ``_b``)."""
    return Stat(float(pair[f"{spec.name}_mean{end}"]), float(pair[f"{spec.name}_std{end}"]),
                int(pair[f"{spec.name}_n{end}"]), float(pair.get(f"{spec.name}_min{end}", np.nan)),
                float(pair.get(f"{spec.name}_max{end}", np.nan)))


def _scaling_lines(cells: pd.DataFrame, specs: list[MetricSpec]) -> list[str]:
    scalings = ordered("target_scaling", cells["target_scaling"])
    if len(scalings) < 2:
        only = scalings[0] if scalings else "none"
        return [f"Target scaling: not shown: only '{only}' targets ran, so no cell can be compared across scalings."]
    base = "none" if "none" in scalings else scalings[0]
    out = []
    key = ["architecture", "weighting", "decoder"]
    for other in (s for s in scalings if s != base):
        for spec in (s for s in specs if s.name != "time"):
            col = f"{spec.name}_mean"
            a = cells[(cells["target_scaling"] == base) & np.isfinite(cells[col].astype(float))]
            b = cells[(cells["target_scaling"] == other) & np.isfinite(cells[col].astype(float))]
            pairs = a.merge(b, on=key, suffixes=("_a", "_b"))
            label = f"Target scaling {other} vs {base}, {spec.cbar}"
            if pairs.empty:
                out.append(f"{label}: not shown: no cell finished ok with both scalings, so there is no pair.")
                continue
            diff = (pairs[f"{col}_b"] - pairs[f"{col}_a"]).astype(float)
            helps = int((diff > 0).sum() if spec.better == "max" else (diff < 0).sum())
            hurts = int((diff < 0).sum() if spec.better == "max" else (diff > 0).sum())
            mean, std, n = _stats(diff)
            change = spec.format_std(mean) if mean < 0 else "+" + spec.format_std(mean)
            spread = f" ± {spec.format_std(std)} over cells" if n > 1 else ""
            line = (f"{label}, paired over the {n} cell{'s' if n != 1 else ''} that ran both: mean change "
                    f"({other} - {base}) "
                    f"{change}{spread}; {other} helps in {helps} of {n}, hurts in {hurts}")
            verdicts = [verdict(_side(p, spec, "_b"), _side(p, spec, "_a")) for _, p in pairs.iterrows()]
            judged = [v for v in verdicts if v != ONE_SEED]
            if not judged:
                line += f"; {ONE_SEED_TEXT}"
            else:
                leads = sum(v == LEAD for v in judged)
                line += (f"; beyond the seed spread in {leads} of the {len(judged)} cells with several seeds, "
                         f"a tie in {len(judged) - leads}")
                if len(judged) < n:
                    line += f" ({n - len(judged)} with one seed: not a finding)"
            out.append(line + ".")
    return out


def _factor_stats(ok: pd.DataFrame, factor: str, spec: MetricSpec, selection: str
                  ) -> tuple[dict[str, Stat], int, str]:
    """Per level of ``factor``: the mean over the other axes per seed, then mean ± std over seeds. Only blocks (the
    other axes' values) where every level has a value count, so no level is averaged over easier cells."""
    col = spec.source(selection)
    others = [k for k in CELL_KEY if k != factor]
    if col not in ok:
        return {}, 0, "the metric was not recorded"
    df = ok[[factor, *others, "seed"]].assign(v=pd.to_numeric(ok[col], errors="coerce").astype(float) * spec.scale)
    df = df[np.isfinite(df["v"])]
    levels = ordered(factor, df[factor])
    if len(levels) < 2:
        return {}, 0, (f"only one {factor} ({levels[0]}) finished ok" if levels else
                       f"no {factor} finished ok with a value")
    per_block = df.groupby(others, dropna=False)[factor].nunique()
    blocks = per_block[per_block == len(levels)].reset_index()[others]
    if blocks.empty:
        return {}, 0, f"no combination of the other axes where every {factor} finished ok"
    df = df.merge(blocks, on=others)
    per_seed = df.groupby([factor, "seed"])["v"].mean().reset_index()
    stats = {}
    for lv in levels:
        v = per_seed.loc[per_seed[factor] == lv, "v"]
        stats[lv] = Stat(*_stats(v), float(v.min()), float(v.max()))
    return stats, len(blocks), ""


def _leader_lines(runs: pd.DataFrame, selection: str) -> list[str]:
    ok = runs[(runs["kind"] == "mtl") & (runs["status"] == "ok")]
    out = []
    for factor, other_txt in (("architecture", "weightings, decoders and scalings"),
                              ("weighting", "architectures, decoders and scalings")):
        for m in LEADER_METRICS:
            spec = METRIC_SPECS[m]
            label = f"{factor.capitalize()}s on average, {spec.cbar}"
            stats, n_blocks, why = _factor_stats(ok, factor, spec, selection)
            if not stats:
                out.append(f"{label}: not shown: {why}.")
                continue
            order = sorted(stats, key=lambda k: stats[k].mean, reverse=spec.better == "max")
            first, second = order[0], order[1]
            a, b = stats[first], stats[second]
            v = verdict(a, b)
            head = (f"{first} and {second} tie" if v == TIE else f"{first} leads" if v == LEAD else
                    f"{first} ranks first")
            out.append(f"{label} (mean over the {other_txt} of {n_blocks} combination"
                       f"{'s' if n_blocks != 1 else ''} where each of the {len(stats)} {factor}s ran): {head}: "
                       f"{first} {_fmt(spec, a)}, runner-up {second} {_fmt(spec, b)}, {_judge(spec, a, b)}.")
    return out


def _missing_line(runs: pd.DataFrame, cells: pd.DataFrame, fastcar: dict[str, Any] | None) -> list[str]:
    mtl = runs[runs["kind"] == "mtl"]
    counts = mtl["status"].value_counts()
    run_txt = ", ".join(f"{int(counts.get(s, 0))} {s.replace('_', ' ')}"
                        for s in ("ok", "failed", "diverged", "not_applicable"))
    out = []
    if cells.empty:
        out.append("Missing: no MTL grid run in these results.")
    else:
        axes = [ordered(k, cells[k]) for k in CELL_KEY]
        expected = int(np.prod([len(a) for a in axes]))
        status = cells["status"].value_counts()
        n_ok, n_fail, n_div, n_na = (int(status.get(s, 0)) for s in ("ok", "failed", "diverged", "not_applicable"))
        not_run = expected - len(cells)
        partial = int(((cells["n_failed"] + cells["n_diverged"] > 0) & (cells["n_ok"] > 0)).sum())
        all_seeds = {s for v in cells["seeds"] for s in str(v).split(",") if s}
        applicable = cells.loc[cells["status"] != "not_applicable", "seeds"]   # N/A cells never train: no seeds owed
        short = int(sum(len({s for s in str(v).split(",") if s}) < len(all_seeds) for v in applicable))
        line = (f"Missing or failed: of {expected} grid cells, {n_ok} finished ok, {n_fail} failed, {n_div} diverged, "
                f"{n_na} not applicable, {not_run} missing (not run); runs: {run_txt}")
        extra = []
        if partial:
            extra.append(f"{partial} ok cell{'s' if partial != 1 else ''} lost some seeds to failure or divergence")
        if short:
            extra.append(f"{short} cell{'s' if short != 1 else ''} ran fewer than the {len(all_seeds)} seeds")
        out.append(line + (f"; {', '.join(extra)}" if extra else "") + ".")
    if fastcar is None:
        out.append("FastCAR: missing (no run in these results).")
    else:
        fc_bad = fastcar["n_runs"] - fastcar["n_ok"]
        out.append(f"FastCAR: {fastcar['n_ok']} of {fastcar['n_runs']} run{'s' if fastcar['n_runs'] != 1 else ''} "
                   f"finished ok" + (f" ({fastcar['n_failed']} failed, {fastcar['n_diverged']} diverged)"
                                     if fc_bad else "") + ".")
    return out


def findings(runs: pd.DataFrame, specs: Iterable[MetricSpec], selection: str = "best") -> list[str]:
    """The findings of one report, one sentence each (a Markdown bullet without its "- ").

    ``runs``: :attr:`Results.runs <mtlbench.report.data.Results>` (MTL and FastCAR rows); ``specs``: the report's
    metrics (best cell per decoder, target scaling); accuracy, MAPE and run time are always used for FastCAR and
    the averages. ``selection``: "best" or "last" validation epoch.
    """
    specs = list(specs)
    runs = runs.copy()
    mtl = runs["kind"] == "mtl"
    runs.loc[mtl, "target_scaling"] = runs.loc[mtl, "target_scaling"].fillna("none")
    names = list(dict.fromkeys([s.name for s in specs] + list(FASTCAR_METRICS)))
    every = [METRIC_SPECS[n] for n in names]
    cells = _sorted_cells(aggregate_cells(runs, every, selection))
    fastcar = aggregate_fastcar(runs, every, selection)
    several = cells["target_scaling"].nunique() > 1 if not cells.empty else False

    out = [_seeds_line(runs, selection)]
    if not cells.empty:
        out += _best_lines(cells, specs, several)
    out += _budget_line(runs) + _fastcar_lines(cells, fastcar, several)
    if not cells.empty:
        out += _scaling_lines(cells, specs)
        out += _leader_lines(runs, selection)
    out += _missing_line(runs, cells, fastcar)
    return out

