"""The report's view of architectures that tie convolution kernels across tasks (MTAL): the share ratio per layer at
the end of each run (the shape of the MTAL paper's Table 6) and the overall share ratio against epoch.

Both come from the ``sharing`` table: one row per run, merge epoch, layer and task pair; ``ratio`` is the fraction
of the pair's filters tied after that merge. A cell's value is the mean over its seeds that finished ok.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mtlbench.config import cell_name
from mtlbench.report.data import CELL_KEY, natural_key
from mtlbench.report.figures import new_figure


def _cells(runs: pd.DataFrame, sharing: pd.DataFrame, several_scalings: bool) -> pd.DataFrame:
    """The sharing rows of runs that finished ok, with each run's cell name."""
    ok = runs[(runs["kind"] == "mtl") & (runs["status"] == "ok")][["run_id", "seed", *CELL_KEY]]
    rows = sharing.merge(ok, on="run_id")
    rows["cell"] = [cell_name(a, w, d, s if several_scalings else None)
                    for a, w, d, s in zip(rows["architecture"], rows["weighting"], rows["decoder"],
                                          rows["target_scaling"])]
    return rows


def share_by_layer(runs: pd.DataFrame, sharing: pd.DataFrame, several_scalings: bool = False) -> pd.DataFrame:
    """One row per layer (in trunk order), one column per cell: the share ratio after each run's last merge, mean
    over seeds (over task pairs too, for more than two tasks)."""
    rows = _cells(runs, sharing, several_scalings)
    if rows.empty:
        return pd.DataFrame()
    last = rows[rows["epoch"] == rows.groupby("run_id")["epoch"].transform("max")]
    per_run = last.groupby(["cell", "run_id", "layer"], sort=False)["ratio"].mean().reset_index()
    order = list(dict.fromkeys(last["layer"]))
    table = per_run.groupby(["layer", "cell"], sort=False)["ratio"].mean().unstack("cell")
    return table.reindex(index=order, columns=sorted(table.columns, key=natural_key))


def share_by_epoch(runs: pd.DataFrame, sharing: pd.DataFrame, several_scalings: bool = False) -> pd.DataFrame:
    """Per cell and merge epoch: the share ratio over every banked layer (each layer's ratio weighted by its filter
    count; with more than two tasks, also averaged over task pairs), mean and sample std over seeds."""
    rows = _cells(runs, sharing, several_scalings)
    if rows.empty:
        return pd.DataFrame(columns=["cell", "epoch", "ratio_mean", "ratio_std", "seeds"])
    rows["tied"] = rows["ratio"] * rows["kernels"]
    per_run = rows.groupby(["cell", "run_id", "epoch"], sort=False)[["tied", "kernels"]].sum().reset_index()
    per_run["ratio"] = per_run["tied"] / per_run["kernels"]
    out = per_run.groupby(["cell", "epoch"], sort=False)["ratio"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "ratio_mean", "std": "ratio_std", "count": "seeds"})


def sharing_figure(by_layer: pd.DataFrame, by_epoch: pd.DataFrame) -> Figure:
    """Left: the final share ratio per layer, one line per cell; right: the overall share ratio against epoch."""
    fig = new_figure(13.0, 4.8)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1.0]})
    x = np.arange(len(by_layer.index))
    for cell in by_layer.columns:
        left.plot(x, by_layer[cell].to_numpy(float), marker="o", ms=3, lw=1.2, label=cell)
    left.set_xticks(x, list(by_layer.index), rotation=70, ha="right", fontsize=7)
    left.set_ylabel("filters tied (fraction)")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Share ratio per layer after the last merge")
    for cell, part in by_epoch.groupby("cell", sort=False):
        y, s = part["ratio_mean"].to_numpy(float), part["ratio_std"].to_numpy(float)
        right.plot(part["epoch"], y, marker="o", ms=3, lw=1.2, label=cell)
        if np.isfinite(s).any():
            right.fill_between(part["epoch"], y - np.nan_to_num(s), y + np.nan_to_num(s), alpha=0.15)
    right.set_xlabel("epoch")
    right.set_ylim(-0.02, 1.02)
    right.set_title("Share ratio against epoch (all banked filters)")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
               frameon=False)
    return fig
