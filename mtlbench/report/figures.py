"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot, no display, no global figure state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it as PNG / SVG and returns the PNG
bytes the HTML page embeds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)  # no-op if a caller already chose a backend; we never use pyplot anyway

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from mtlbench.config import cell_name  # noqa: E402
from mtlbench.report.data import MetricSpec  # noqa: E402

FASTCAR_COLOUR = "#d62728"
STATUS_STYLE = {"failed": ("///", "#8b0000"), "diverged": ("xxx", "#b35900"), "not_applicable": ("", "#707070")}
STATUS_TEXT = {"not_applicable": "N/A"}
RC = {"font.size": 9, "svg.fonttype": "none", "axes.titlesize": 11, "axes.titleweight": "bold"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, stem: Path, formats: tuple[str, ...]) -> tuple[list[Path], bytes]:
    """Write ``stem.png`` / ``stem.svg`` as asked; always return the PNG bytes (for the HTML page)."""
    written = []
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="png", dpi=130)
        png = buf.getvalue()
        fig.set_layout_engine("none")  # keep the positions just computed: the SVG needs no second layout pass
        if "png" in formats:
            path = stem.with_suffix(".png")
            path.write_bytes(png)
            written.append(path)
        if "svg" in formats:
            path = stem.with_suffix(".svg")
            fig.savefig(path, format="svg", metadata={"Date": None})
            written.append(path)
    return written, png


def _text_colour(rgba: tuple[float, ...]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _cmap(spec: MetricSpec):
    return colormaps["viridis" if spec.better == "max" else "viridis_r"].with_extremes(bad="white")


def heatmap(matrix: pd.DataFrame, std: pd.DataFrame, status: pd.DataFrame, partial: pd.DataFrame,
            spec: MetricSpec, vmin: float, vmax: float, *, title: str, fastcar: float | None,
            best: tuple[str, str] | None = None) -> Figure:
    """Architecture rows x weighting columns. ``matrix`` holds the drawn values (NaN = nothing drawn); ``status``
    is "ok" / "failed" / "diverged" / "not_applicable" / "" (not run); ``partial`` marks ok cells where some seeds failed."""
    rows, cols = list(matrix.index), list(matrix.columns)
    width = min(15.0, max(7.0, 2.8 + 0.72 * len(cols)))
    height = max(3.4, 1.9 + 0.52 * len(rows))
    with matplotlib.rc_context(RC):
        fig = new_figure(width, height)
        ax = fig.add_subplot()
        cmap = _cmap(spec)
        norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-9)
        values = matrix.to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        two_lines = bool(np.isfinite(std.to_numpy(dtype=float)).any())
        for i, _ in enumerate(rows):
            for j, _ in enumerate(cols):
                st = status.iat[i, j]
                v = values[i, j]
                if st in STATUS_STYLE:
                    hatch, colour = STATUS_STYLE[st]
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f2f2f2", edgecolor="#b0b0b0",
                                           hatch=hatch, linewidth=0))
                    ax.text(j, i, STATUS_TEXT.get(st, st), ha="center", va="center", fontsize=7.5, color=colour, fontweight="bold",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                            in_layout=False)
                elif np.isfinite(v):
                    s = spec.format(v)
                    if partial.iat[i, j]:
                        s += "*"
                    sd = std.iat[i, j]
                    if two_lines and np.isfinite(sd):
                        s += "\n±" + spec.format_std(sd)
                    ax.text(j, i, s, ha="center", va="center", fontsize=7 if two_lines else 8,
                            color=_text_colour(cmap(norm(v))), in_layout=False)
        if best is not None and best[0] in rows and best[1] in cols:
            i, j = rows.index(best[0]), cols.index(best[1])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black",
                                   linewidth=2.2))
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xticks(np.arange(-0.5, len(cols), 1), minor=True)
        ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
        ax.grid(which="minor", color="#d0d0d0", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        ax.set_xlim(-0.5, len(cols) - 0.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel("Weighting scheme")
        ax.set_ylabel("Architecture")
        ax.set_title(title, loc="left")
        cbar = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.012, aspect=18)
        label = spec.cbar
        if fastcar is not None and np.isfinite(fastcar):
            trans = blended_transform_factory(cbar.ax.transAxes, cbar.ax.transData)
            lo, hi = norm.vmin, norm.vmax
            if lo <= fastcar <= hi:
                cbar.ax.axhline(fastcar, color=FASTCAR_COLOUR, linewidth=3)
                cbar.ax.plot([-0.35], [fastcar], marker=">", color=FASTCAR_COLOUR, markersize=7, transform=trans,
                             clip_on=False)
                label += f"\nred mark: FastCAR {spec.format(fastcar)}"
            else:
                y, marker, where = (lo, "v", "below") if fastcar < lo else (hi, "^", "above")
                cbar.ax.plot([0.5], [y], marker=marker, color=FASTCAR_COLOUR, markersize=10, transform=trans,
                             clip_on=False)
                label += f"\nred mark: FastCAR {spec.format(fastcar)} ({where} scale)"
        cbar.set_label(label)
    return fig


def pareto_front(acc: np.ndarray, mape: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both (higher accuracy, lower MAPE)."""
    n = len(acc)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better = (acc >= acc[i]) & (mape <= mape[i]) & ((acc > acc[i]) | (mape < mape[i]))
        if better.any():
            mask[i] = False
    return mask


def scatter_accuracy_mape(cells: pd.DataFrame, fastcar: dict[str, Any] | None, decoders: list[str],
                          scalings: list[str]) -> Figure:
    ok = cells[np.isfinite(cells["accuracy_mean"].astype(float)) & np.isfinite(cells["mape_mean"].astype(float))]
    names = [cell_name(a, w) for a, w in zip(ok["architecture"], ok["weighting"])]
    acc = ok["accuracy_mean"].to_numpy(float)
    mape = ok["mape_mean"].to_numpy(float)
    fc_ok = fastcar is not None and np.isfinite(fastcar.get("accuracy_mean", np.nan)) and \
        np.isfinite(fastcar.get("mape_mean", np.nan))
    all_acc = np.append(acc, fastcar["accuracy_mean"]) if fc_ok else acc
    all_mape = np.append(mape, fastcar["mape_mean"]) if fc_ok else mape
    front = pareto_front(all_acc, all_mape)
    with matplotlib.rc_context(RC):
        fig = new_figure(9.5, 6.5)
        ax = fig.add_subplot()
        colours = colormaps["tab10"]
        markers = ["o", "s", "D", "^"]
        for di, dec in enumerate(decoders):
            for si, sc in enumerate(scalings):
                m = ((ok["decoder"] == dec) & (ok["target_scaling"] == sc)).to_numpy()
                if not m.any():
                    continue
                label = f"MTL {dec}" + (f" ({sc} targets)" if len(scalings) > 1 else "")
                ax.errorbar(mape[m], acc[m], xerr=ok["mape_std"].to_numpy(float)[m],
                            yerr=ok["accuracy_std"].to_numpy(float)[m], fmt=markers[si % 4], color=colours(di),
                            alpha=0.75, markersize=6, elinewidth=0.5, ecolor=(*colours(di)[:3], 0.35), capsize=0,
                            label=label)
        if front.any():
            order = np.argsort(all_mape[front])
            fx, fy = all_mape[front][order], all_acc[front][order]
            ax.step(fx, fy, where="post", color="black", linewidth=1, linestyle="--", label="Pareto front")
            ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4)
            labelled = np.flatnonzero(front[: len(acc)])
            labelled = labelled[np.argsort(-acc[labelled], kind="stable")][:8]
            for rank, k in enumerate(labelled):  # stacked downwards: front points are often close together
                dec = ok["decoder"].iloc[k]
                ax.annotate(f"{names[k]} ({dec})", (mape[k], acc[k]), xytext=(10, -4 - 11 * rank),
                            textcoords="offset points", fontsize=7.5, va="top",
                            arrowprops={"arrowstyle": "-", "color": "#888888", "linewidth": 0.6})
        if fc_ok:
            ax.errorbar([fastcar["mape_mean"]], [fastcar["accuracy_mean"]], xerr=[fastcar.get("mape_std", np.nan)],
                        yerr=[fastcar.get("accuracy_std", np.nan)], fmt="*", color=FASTCAR_COLOUR, markersize=18,
                        markeredgecolor="black", zorder=5, label="FastCAR")
            ax.annotate(f"FastCAR\n{fastcar['accuracy_mean']:.2f}%, MAPE {fastcar['mape_mean']:.1f}%",
                        (fastcar["mape_mean"], fastcar["accuracy_mean"]), xytext=(10, 8), textcoords="offset points",
                        color=FASTCAR_COLOUR, fontweight="bold", fontsize=9)
        pos = all_mape[np.isfinite(all_mape) & (all_mape > 0)]
        if len(pos) and pos.max() / pos.min() > 20:
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ax.set_xlabel("Test MAPE (%)  - lower is better")
        ax.set_ylabel("Test accuracy (%)  - higher is better")
        ax.set_title("Accuracy vs MAPE of every cell (mean over seeds; best = top left)", loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return fig


def predictions_scatter(pred: pd.DataFrame, title: str) -> Figure:
    with matplotlib.rc_context(RC):
        fig = new_figure(6.8, 6.2)
        ax = fig.add_subplot()
        colours = colormaps["tab10"]
        for k, (cls, g) in enumerate(sorted(pred.groupby("true_class"), key=lambda kv: kv[0])):
            ax.scatter(g["true_target"], g["pred_target"], s=14, alpha=0.7, color=colours(k % 10),
                       label=f"class {cls}", edgecolors="none")
        lo = float(np.nanmin([pred["true_target"].min(), pred["pred_target"].min()]))
        hi = float(np.nanmax([pred["true_target"].max(), pred["pred_target"].max()]))
        pad = 0.03 * (hi - lo if hi > lo else 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=1, linestyle="--",
                label="prediction = truth")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("True hardness")
        ax.set_ylabel("Predicted hardness")
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", title="true class", title_fontsize=8)
    return fig


def confusion(confusion_json: str, title: str) -> Figure | None:
    try:
        cm = np.asarray(json.loads(confusion_json), dtype=float)
    except (TypeError, ValueError):
        return None
    if cm.ndim != 2 or cm.size == 0:
        return None
    n = cm.shape[0]
    with matplotlib.rc_context(RC):
        fig = new_figure(max(4.8, 1.8 + 0.6 * n), max(4.2, 1.5 + 0.55 * n))
        ax = fig.add_subplot()
        im = ax.imshow(cm, cmap="Blues", vmin=0)
        top = cm.max() if cm.max() > 0 else 1
        for i in range(n):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9,
                        color="white" if cm[i, j] > 0.55 * top else "black")
        ax.set_xticks(range(cm.shape[1]))
        ax.set_yticks(range(n))
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        ax.set_title(title, loc="left", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="test images")
    return fig


def learning_curves(curves: list[tuple[str, pd.DataFrame, bool]]) -> Figure:
    """``curves``: (label, epochs frame with epoch + val_* columns averaged over seeds, is_fastcar)."""
    panels = (("val_loss", "Validation loss (log)"), ("val_accuracy", "Validation accuracy (%)"),
              ("val_mape", "Validation MAPE (%, log)"))
    with matplotlib.rc_context(RC):
        fig = new_figure(15, 4.6)
        axs = fig.subplots(1, 3)
        colours = colormaps["tab10"]
        handles = []
        k = 0
        for label, df, is_fc in curves:
            colour = FASTCAR_COLOUR if is_fc else colours([0, 1, 2, 4, 5, 6, 7][k % 7])
            k += 0 if is_fc else 1
            for ax, (col, _) in zip(axs, panels):
                if col in df and df[col].notna().any():
                    ax.plot(df["epoch"], df[col], color=colour, linewidth=2.4 if is_fc else 1.4,
                            marker="o" if len(df) <= 12 else None, markersize=3)
            handles.append(Line2D([], [], color=colour, linewidth=2.4 if is_fc else 1.4, label=label))
        for ax, (col, title) in zip(axs, panels):
            ax.set_xlabel("Epoch")
            ax.set_title(title, loc="left", fontsize=10)
            ax.grid(True, alpha=0.3)
            if col in ("val_loss", "val_mape"):
                vals = np.concatenate([df[col].to_numpy(float) for _, df, _ in curves if col in df] or [np.array([])])
                vals = vals[np.isfinite(vals)]
                if len(vals) and (vals > 0).all():
                    ax.set_yscale("log")
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8.5)
        fig.suptitle("Learning curves: FastCAR and the 3 most accurate cells (mean over seeds)", x=0.01, ha="left",
                     fontweight="bold")
    return fig


def branching_trees(trees: list[tuple[str, list[list[int]], list[str]]], tasks: list[str]) -> Figure:
    """LTB's learned trees, one panel per run: ``trees`` holds (label, tree, stage names), ``tree[l - 1][j]`` the
    parent (stage l - 1) of branch j at stage l. A branch that no used path reaches is drawn hollow."""
    n = len(trees)
    cols = min(n, 4)
    rows = -(-n // cols)
    with matplotlib.rc_context(RC):
        fig = new_figure(3.6 * cols, 2.2 * rows + 0.4)
        axs = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, (label, tree, stages) in zip(axs, trees):
            width = len(tree[0]) if tree else len(tasks)
            used = [set(range(width))]   # walk back from the tasks: the last stage's branches are all used
            for parents in reversed(tree):
                used.insert(0, {parents[j] for j in used[0]})
            for s, branches in enumerate(used):
                for b in range(width):
                    ax.plot(s, b, "o", markersize=9, color="#1f77b4",
                            markerfacecolor="#1f77b4" if b in branches else "white")
                if s > 0:
                    for j in range(width):
                        p = tree[s - 1][j]
                        on = j in used[s]
                        ax.plot([s - 1, s], [p, j], color="#1f77b4" if on else "#bbbbbb",
                                linewidth=2 if on else 1, linestyle="-" if on else ":")
            for j, task in enumerate(tasks[:width]):
                ax.annotate(task, (len(used) - 1, j), xytext=(8, 0), textcoords="offset points", va="center")
            ax.set_xticks(range(len(stages)), stages, fontsize=7.5)
            ax.set_yticks(range(width), [f"branch {b}" for b in range(width)], fontsize=7.5)
            ax.set_xlim(-0.4, len(stages) - 0.2)
            ax.set_ylim(-0.6, width - 0.4)
            ax.invert_yaxis()
            ax.set_title(label, loc="left", fontsize=9)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        for ax in axs[n:]:
            ax.set_axis_off()
        fig.suptitle("LTB: the branching tree each run ended with (argmax parents)", x=0.01, ha="left",
                     fontweight="bold")
    return fig


def _context_label(row: pd.Series) -> str:
    """"EW / decoder1" (+ " / standard" for scaled targets) of a TreeMTL table row."""
    scaling = row.get("target_scaling")
    return f"{row['weighting']} / {row['decoder']}" + (f" / {scaling}" if scaling not in (None, "none") else "")


def treemtl_delta_t(pair: pd.DataFrame) -> Figure:
    """TreeMTL's pair table: Δt of each task against the branch point b (0 = independent trunks .. 5 = HPS), one line
    per task (and weighting / decoder), ± the sample std over seeds as error bars, the min..max over seeds shaded."""
    groups = list(pair.groupby(["weighting", "decoder", "target_scaling", "task"], sort=False, dropna=False))
    several = pair[["weighting", "decoder", "target_scaling"]].drop_duplicates().shape[0] > 1
    with matplotlib.rc_context(RC):
        fig = new_figure(8.5, 5.2)
        ax = fig.add_subplot()
        colours = colormaps["tab10"]
        for k, (key, g) in enumerate(groups):
            g = g.sort_values("branch_point")
            x = g["branch_point"].to_numpy(float)
            mean = g["dt_mean"].to_numpy(float)
            lo, hi = g["dt_min"].to_numpy(float), g["dt_max"].to_numpy(float)
            std = np.nan_to_num(g["dt_std"].to_numpy(float), nan=0.0)
            colour = colours(k % 10)
            label = f"{key[3]} ({g['metrics'].iloc[0]})" + (f", {_context_label(g.iloc[0])}" if several else "")
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
            ax.errorbar(x, mean, yerr=std, fmt="-o", color=colour, markersize=5, linewidth=1.6, capsize=3,
                        elinewidth=1, label=label)
        ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
        points = pair[["branch_point", "architecture"]].drop_duplicates("branch_point").sort_values("branch_point")
        ax.set_xticks(points["branch_point"].to_numpy(int),
                      [f"{b}\n{a}" for b, a in zip(points["branch_point"], points["architecture"])])
        ax.set_xlabel("Branch point b (shared blocks: 0 = independent trunks, 5 = HPS)")
        ax.set_ylabel("Δt (%) vs the b = 0 model  - higher is better")
        context = "" if several or pair.empty else f", {_context_label(pair.iloc[0])}"
        ax.set_title(f"TreeMTL pair table{context}: Δt per task (mean over seeds; bars ± std, band min..max)",
                     loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8, title="task (metrics)", title_fontsize=8)
    return fig


def treemtl_score_macs(rec: pd.DataFrame, one_backbone_macs: float | None, budget_macs: float | None) -> Figure:
    """The ranked layouts' score S against backbone GMACs; ``rec`` carries a boolean ``pareto`` column (max score,
    min MACs). Filled markers fit the budget, hollow ones do not; recommended layouts are ringed. ``budget_macs``:
    the budget as a vertical line; ``one_backbone_macs`` adds the MACs % axis (vs independent trunks) on top."""
    g = rec["macs"].to_numpy(float) / 1e9
    s = rec["score"].to_numpy(float)
    fits = rec["fits"].to_numpy(bool)
    recommended = rec["recommended"].to_numpy(bool)
    front = rec["pareto"].to_numpy(bool)
    with matplotlib.rc_context(RC):
        fig = new_figure(8.5, 5.6)
        ax = fig.add_subplot()
        colour = "#1f77b4"
        ax.scatter(g[fits], s[fits], s=36, color=colour, zorder=3, label="fits the budget")
        if (~fits).any():
            ax.scatter(g[~fits], s[~fits], s=36, facecolors="white", edgecolors=colour, zorder=3,
                       label="over the budget")
        if recommended.any():
            ax.scatter(g[recommended], s[recommended], s=150, facecolors="none", edgecolors="#2ca02c",
                       linewidths=1.8, zorder=4, label="recommended")
        if front.any():
            order = np.argsort(g[front], kind="stable")
            ax.step(g[front][order], s[front][order], where="post", color="black", linewidth=1, linestyle="--",
                    zorder=2, label="Pareto front (max score, min MACs)")
            ax.scatter(g[front], s[front], s=14, color="black", zorder=5)
        for k in range(len(rec)):
            if front[k] or recommended[k]:
                name = rec["architecture"].iloc[k]
                name = name if isinstance(name, str) else rec["layout_key"].iloc[k]
                ax.annotate(f"#{int(rec['rank'].iloc[k])} {name}", (g[k], s[k]), xytext=(6, 5),
                            textcoords="offset points", fontsize=7.5)
        budget = str(rec["budget"].iloc[0]) if len(rec) else "none"
        if budget_macs is not None and np.isfinite(budget_macs):
            ax.axvline(budget_macs / 1e9, color=FASTCAR_COLOUR, linewidth=1.4, label=f"budget: {budget}")
        if one_backbone_macs:
            ref = 2 * one_backbone_macs / 1e9
            top = ax.secondary_xaxis("top", functions=(lambda x: 100 * (x - ref) / ref,
                                                       lambda p: ref * (1 + p / 100)))
            top.set_xlabel("MACs % vs independent trunks")
        ax.set_xlabel("Backbone GMACs  - lower is cheaper")
        ax.set_ylabel("Score S (estimated, Eq. 2)  - higher is better")
        ax.set_title(f"TreeMTL: score vs backbone MACs of the ranked layouts (budget: {budget})", loc="left",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    return fig


def treemtl_verified(ver: pd.DataFrame, title: str) -> Figure:
    """Predicted (``score``) against trained (``trained_score``) scores of the verified layouts, each named by its
    predicted rank; dashed: trained = predicted."""
    x = ver["score"].to_numpy(float)
    y = ver["trained_score"].to_numpy(float)
    with matplotlib.rc_context(RC):
        fig = new_figure(7.0, 6.0)
        ax = fig.add_subplot()
        ax.scatter(x, y, s=46, color="#1f77b4", zorder=3)
        for k in range(len(ver)):
            name = ver["architecture"].iloc[k]
            name = name if isinstance(name, str) else ver["layout_key"].iloc[k]
            ax.annotate(f"#{int(ver['rank'].iloc[k])} {name}", (x[k], y[k]), xytext=(6, 5),
                        textcoords="offset points", fontsize=8)
        both = np.concatenate([x, y])
        lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
        pad = 0.12 * (hi - lo if hi > lo else max(abs(hi), 1.0))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="black", linewidth=1, linestyle="--",
                label="trained = predicted")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("Predicted score S (from the pair table)")
        ax.set_ylabel("Trained score (the layout trained, same task weights)")
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    return fig
