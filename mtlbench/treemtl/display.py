"""Rich tables of ``mtlbench recommend``: the pair table with its spread over seeds, the task weights and the ranked
layouts (with the trained scores after ``--verify``)."""

from __future__ import annotations

import math

from rich.table import Table

from mtlbench.treemtl.from_results import (
    COARSE_ARCHITECTURES,
    PairResult,
    Ranking,
    Verification,
)
from mtlbench.treemtl.tables import TASKS


def _f(v, fmt: str = "{:+.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    text = fmt.format(float(v))
    return text.replace("-", "+" if "+" in fmt else "", 1) if text.startswith("-") and not text.strip("-+0.") else text   # no "-0.00"


def pair_rich_table(pair: PairResult) -> Table:
    s = pair.selection
    t = Table(title=f"TreeMTL pair table, {s.label}: Δt (%) vs Tree-b0, mean of the last 3 validation evaluations, "
                    f"seeds averaged")
    t.add_column("b", justify="right")
    t.add_column("model")
    for task in TASKS:
        t.add_column(f"Δt {task} ({pair.metric_label(task)})", justify="right")
        t.add_column(f"{task} std", justify="right")
        t.add_column(f"{task} min..max", justify="right")
    t.add_column("seeds", justify="right")
    by = {(r["task"], r["branch_point"]): r for r in pair.rows}
    for b, arch in enumerate(COARSE_ARCHITECTURES):
        cells = []
        for task in TASKS:
            r = by[(task, b)]
            cells += [_f(r["dt_mean"]), _f(r["dt_std"], "{:.2f}"),
                      f"{_f(r['dt_min'])}..{_f(r['dt_max'])}" if r["n_seeds"] else "-"]
        n = by[(TASKS[0], b)]["n_seeds"]
        t.add_row(str(b), arch, *cells, f"{n} ({by[(TASKS[0], b)]['seeds']})" if n else "[red]none[/]")
    return t


def weights_rich_table(ranking: Ranking) -> Table:
    t = Table(title="task weights (Eq. 1)")
    for col in ("task", "SVDE of Δt(b=1..5)", "weight = 1 - SVDE, normalised"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for i, task in enumerate(TASKS):
        t.add_row(task, f"{ranking.svde[i]:.3f}", f"{ranking.weights[i]:.3f}")
    return t


def ranking_rich_table(ranking: Ranking, verification: Verification | None = None) -> Table:
    one = ranking.one_backbone_macs
    t = Table(title=f"layouts by score S (top {ranking.top_k} that fit the budget: {ranking.budget.label}; costs "
                    f"of the ResNet-18 trunk at {ranking.img_size} px, one trunk = {one / 1e9:.3g} GMACs, "
                    f"{ranking.one_backbone_params / 1e6:.3g} M params)")
    for col in ("rank", "layout", "model", *(f"Δt̂ {task}" for task in TASKS), "score S", "MACs %", "params %",
                "fits", "recommended"):
        t.add_column(col, justify="left" if col in ("layout", "model", "fits", "recommended") else "right")
    if verification is not None:
        for col in ("trained run", "trained S"):
            t.add_column(col, justify="right")
    for r in ranking.layouts:
        row = [str(r.rank), r.key, r.architecture or "-", *(_f(e) for e in r.estimate), _f(r.score),
               _f(r.macs_pct, "{:+.1f}"), _f(r.params_pct, "{:+.1f}"),
               "yes" if r.fits else "[red]no[/]", "[green]yes[/]" if r.recommended else ""]
        if verification is not None:
            v = verification.results.get(r.key)
            row += [f"{v.run_id} ({v.status})" if v else "", _f(v.score) if v else ""]
        t.add_row(*row)
    return t


def correlation_lines(verification: Verification) -> list[str]:
    out = [(f"verification (seed {verification.seed}, {verification.n} trained layouts): "
           f"Spearman rank correlation = {_f(verification.spearman, '{:.3f}')}, "
           f"Pearson correlation = {_f(verification.pearson, '{:.3f}')} (predicted vs trained score)")]
    return out + [f"note: {n}" for n in verification.notes]
