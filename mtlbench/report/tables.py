"""The summary in the shape of the paper's Table 1, the per-cell table, and their Markdown / Rich renderings.

``build_summary`` returns a tidy frame, one row per (target scaling, metric, family):

==========  =========================================================================================
scaling     the MTL cells' target scaling ("none" / "standard"); None on FastCAR rows (FastCAR has none)
metric      accuracy | mse | mape | time | ...
row         the row label of Table 1
family      "MTL decoder1", "MTL decoder2", ..., "FastCAR"
decoder     the decoder (None for FastCAR)
value, std  display units; for best-type metrics the winning cell's mean and std over seeds; for run time
            the family mean and std over its cells (each cell = its mean over seeds)
min, max    best-type metrics: the range of the winning cell's (or FastCAR's) values over seeds
n           seeds behind the value (best-type) or cells (run time of a family)
cell        the winning cell "architecture+weighting" (for run time: the fastest cell)
text        the formatted entry, e.g. "99.85 ± 0.10 [99.70-99.95] (MTAN+IMTL)"
==========  =========================================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from mtlbench.config import cell_name
from mtlbench.report.data import SPREADS, Axes, MetricSpec

SUMMARY_COLUMNS = ["scaling", "metric", "row", "family", "decoder", "value", "std", "min", "max", "n", "cell",
                   "architecture", "weighting", "cell_value", "text"]


def row_label(spec: MetricSpec) -> str:
    if spec.name == "time":
        return "Run time (minutes): mean ± std; fastest cell"
    task = "Classification" if spec.name == "accuracy" else "Regression"
    return f"{task} {spec.cbar}: {'best' if spec.better == 'max' else 'lowest'}"


def format_spread(spec: MetricSpec, value: float, std: float, lo: float = np.nan, hi: float = np.nan) -> str:
    """"mean ± std [min-max]": the std and the range only where there are several values."""
    if not np.isfinite(value):
        return "-"
    if not np.isfinite(std):
        return spec.format(value)
    text = f"{spec.format(value)} ± {spec.format_std(std)}"
    return text + (f" [{spec.format(lo)}-{spec.format(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else "")


def best_cell(cells: pd.DataFrame, spec: MetricSpec) -> pd.Series | None:
    """The cell with the best mean (ties: the first in axis order); None if no cell has a value."""
    col = f"{spec.name}_mean"
    if col not in cells:
        return None
    vals = pd.to_numeric(cells[col], errors="coerce").astype(float)
    vals = vals[np.isfinite(vals)]
    if vals.empty:
        return None
    idx = vals.idxmax() if spec.better == "max" else vals.idxmin()
    return cells.loc[idx]


def build_summary(cells: pd.DataFrame, fastcar: dict[str, Any] | None, specs: list[MetricSpec],
                  axes: Axes) -> pd.DataFrame:
    rows = []
    for scaling in axes.scalings:
        for dec in axes.decoders:
            fam = cells[(cells["decoder"] == dec) & (cells["target_scaling"] == scaling)]
            for spec in specs:
                base = {"scaling": scaling, "metric": spec.name, "row": row_label(spec), "family": f"MTL {dec}",
                        "decoder": dec}
                if spec.name == "time":
                    per_cell = pd.to_numeric(fam[f"{spec.name}_mean"], errors="coerce").astype(float)
                    per_cell = per_cell[np.isfinite(per_cell)]
                    mean = float(per_cell.mean()) if len(per_cell) else float("nan")
                    std = float(per_cell.std(ddof=1)) if len(per_cell) > 1 else float("nan")
                    fastest = best_cell(fam, spec)
                    text = format_spread(spec, mean, std)
                    row = {**base, "value": mean, "std": std, "n": int(len(per_cell))}
                    if fastest is not None:
                        name = cell_name(fastest["architecture"], fastest["weighting"])
                        text += f" (fastest: {name} {spec.format(fastest['time_mean'])})"
                        row.update(cell=name, architecture=fastest["architecture"], weighting=fastest["weighting"],
                                   cell_value=float(fastest["time_mean"]))
                    rows.append({**row, "text": text})
                    continue
                win = best_cell(fam, spec)
                if win is None:
                    rows.append({**base, "value": np.nan, "std": np.nan, "n": 0, "text": "-"})
                    continue
                name = cell_name(win["architecture"], win["weighting"])
                mean, std = float(win[f"{spec.name}_mean"]), float(win[f"{spec.name}_std"])
                lo, hi = (float(win.get(f"{spec.name}_{k}", np.nan)) for k in ("min", "max"))
                rows.append({**base, "value": mean, "std": std, "min": lo, "max": hi,
                             "n": int(win[f"{spec.name}_n"]), "cell": name, "architecture": win["architecture"],
                             "weighting": win["weighting"], "cell_value": mean, "text": f"{format_spread(spec, mean, std, lo, hi)} ({name})"})
    if fastcar is not None:
        for spec in specs:
            mean, std = fastcar.get(f"{spec.name}_mean", np.nan), fastcar.get(f"{spec.name}_std", np.nan)
            lo, hi = fastcar.get(f"{spec.name}_min", np.nan), fastcar.get(f"{spec.name}_max", np.nan)
            rows.append({"scaling": None, "metric": spec.name, "row": row_label(spec), "family": "FastCAR",
                         "decoder": None, "value": mean, "std": std, "min": lo, "max": hi,
                         "n": int(fastcar.get(f"{spec.name}_n", 0)), "text": format_spread(spec, mean, std, lo, hi)})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def summary_wide(summary: pd.DataFrame, scaling: str | None = "__all__") -> pd.DataFrame:
    """Table 1's shape: one row per metric, one column per family (FastCAR last). ``scaling``: one target scaling,
    or "__all__" for the side-by-side of every scaling (column names then carry the scaling)."""
    if summary.empty:
        return pd.DataFrame()
    scalings = [s for s in dict.fromkeys(summary["scaling"]) if s is not None and not pd.isna(s)]
    several = len(scalings) > 1
    fc = summary[summary["family"] == "FastCAR"]
    grid = summary[summary["family"] != "FastCAR"]
    if scaling != "__all__":
        grid = grid[grid["scaling"] == scaling]
    columns: dict[str, dict[str, str]] = {}
    for (sc, fam), g in grid.groupby(["scaling", "family"], sort=False):
        name = f"{fam} ({sc} targets)" if several and scaling == "__all__" else fam
        columns[name] = dict(zip(g["row"], g["text"]))
    if not fc.empty:
        columns["FastCAR"] = dict(zip(fc["row"], fc["text"]))
    rows = list(dict.fromkeys(summary["row"]))
    wide = pd.DataFrame({c: [v.get(r, "-") for r in rows] for c, v in columns.items()}, index=rows)
    wide.index.name = "Evaluation metric"
    return wide


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return ""
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    align = ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    for idx, row in df.iterrows():
        vals = ([cell(idx)] if index else []) + [cell(v) for v in row]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ablation_view(ablation: pd.DataFrame, specs: list[MetricSpec]) -> pd.DataFrame:
    """The [ablation] table as shown: one row per run and setting, each figure "mean ± std [min-max]" over its
    seeds."""
    shown = [s for s in specs if s.name in ("accuracy", "mape")]
    rows = []
    for _, r in ablation.iterrows():
        row = {"run": r["run"], "setting": r["setting"], "seeds ok": f"{r['n_ok']}/{r['n_runs']}"}
        for spec in shown:
            row[spec.cbar] = format_spread(spec, r[f"{spec.name}_mean"], r[f"{spec.name}_std"], r[f"{spec.name}_min"],
                                 r[f"{spec.name}_max"])
        for col, label in SPREADS:
            mean, std = r[f"{col}_mean"], r[f"{col}_std"]
            row[f"{label} (points)"] = "-" if not np.isfinite(mean) else \
                f"{mean:.1f}" + (f" ± {std:.1f}" if np.isfinite(std) else "")
        row["unstable"] = f"{r['n_unstable']}/{r['n_ok']}"
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_markdown(view: pd.DataFrame, selection: str) -> list[str]:
    """The ablation section of summary.md (nothing without ablation runs)."""
    if view.empty:
        return []
    return ["## Ablation: one factor at a time from the spec's setting", "", markdown_table(view, index=False), "",
            f"Test metrics at the {selection} validation epoch, mean ± sample std [min-max] over seeds, and the "
            "spread (max - min) of validation accuracy and MAPE over each run's last epochs, mean ± sample std over "
            "seeds; unstable: runs whose spread exceeds the threshold (mtlbench.stability). \"spec\" is the spec's "
            "own setting.", ""]


def summary_markdown(summary: pd.DataFrame, axes: Axes, *, title: str, notes: list[str],
                     findings: list[str] | None = None, extra: list[str] | None = None) -> str:
    out = [f"# {title}", ""]
    if findings:
        out += ["## Findings", ""] + [f"- {line}" for line in findings] + ["", "## Summary (the paper's Table 1)", ""]
    if summary.empty:
        out += ["No values to summarise.", ""]
    else:
        scalings = [s for s in dict.fromkeys(summary["scaling"]) if s is not None and not pd.isna(s)]
        if len(scalings) > 1:
            for sc in scalings:
                out += [f"## Target scaling: {sc}", "", markdown_table(summary_wide(summary, sc)), ""]
            out += ["## Side by side", "", markdown_table(summary_wide(summary)), ""]
        else:
            out += [markdown_table(summary_wide(summary)), ""]
    out += ["Best-type rows: the winning cell (architecture+weighting) by mean over seeds, its mean ± std [min-max] "
            "over seeds (sample std; neither with one seed). FastCAR: the same over its seeds. Run time: the family's "
            "mean ± std over its cells, and the fastest cell. Test metrics at the best validation epoch. MSE in "
            "multiples of 1000.", ""]
    out += extra or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def cells_table(cells: pd.DataFrame, specs: list[MetricSpec], several_scalings: bool) -> pd.DataFrame:
    """The full per-cell table (numbers kept numeric, for sorting and CSV)."""
    cols = ["architecture", "weighting", "decoder"] + (["target_scaling"] if several_scalings else []) + \
        ["status", "seeds", "n_ok", "n_failed", "n_diverged", "n_unstable"]
    out = cells[cols].copy()
    for spec in specs:
        out[f"{spec.cbar} mean"] = cells[f"{spec.name}_mean"]
        out[f"{spec.cbar} std"] = cells[f"{spec.name}_std"]
        out[f"{spec.cbar} min"] = cells[f"{spec.name}_min"]
        out[f"{spec.cbar} max"] = cells[f"{spec.name}_max"]
    out["message"] = cells["message"]
    return out.reset_index(drop=True)


def summary_rich_table(summary: pd.DataFrame) -> Table:
    """The summary as a Rich table (Table 1's shape: metrics as rows, MTL families and FastCAR as columns)."""
    table = Table(title="Best of each family vs FastCAR (test, best validation epoch)", header_style="bold",
                  show_lines=True)
    wide = summary_wide(summary) if summary is not None else pd.DataFrame()
    table.add_column("Evaluation metric", style="bold")
    if wide.empty:
        table.add_row("no results")
        return table
    for col in wide.columns:
        table.add_column(col, justify="right", style="red" if col == "FastCAR" else None)
    for idx, row in wide.iterrows():
        table.add_row(str(idx), *[str(v) for v in row])
    return table
