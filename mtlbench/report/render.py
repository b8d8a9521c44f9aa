"""``render_report``: results folder(s) -> heatmaps, scatter plots, learning curves, the summary and one HTML page."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from mtlbench.config import cell_name
from mtlbench.errors import ConfigError, MtlbenchError
from mtlbench.report import figures as F
from mtlbench.report import html as H
from mtlbench.report.findings import findings
from mtlbench.report.ranking import add_rankings
from mtlbench.report.sharing import share_by_epoch, share_by_layer, sharing_figure
from mtlbench.report.data import (CELL_KEY, ENV_FIELDS, METRIC_SPECS, PROTOCOL_FIELDS, Axes, MetricSpec,
                                  aggregate_ablation, aggregate_cells, aggregate_fastcar, axes_of, coverage_counts,
                                  example_config, find_missing, load_results, metric_specs, value_counts)
from mtlbench.stability import UNSTABLE_ACCURACY_POINTS, UNSTABLE_MAPE_POINTS
from mtlbench.report.tables import (ablation_markdown, ablation_view, best_cell, build_summary, cells_table,
                                    summary_markdown, summary_wide)

FORMATS = ("png", "svg", "md", "csv", "html")
DEFAULT_METRICS = ("accuracy", "mse", "mape", "time")
HeatmapKey = tuple[str, str, str]   # (metric, decoder, target_scaling)

# Files this module writes; a re-render removes its own stale ones (never anything else in the folder).
_OWN = re.compile(r"^(heatmap_.+\.(png|svg|csv)|(scatter_accuracy_mape|fastcar_predictions|fastcar_confusion|"
                  r"learning_curves|ltb_trees)\.(png|svg)|treemtl_(delta_t|score_macs|verified)(_\d+)?\.(png|svg|csv)|"
                  r"cd_(weighting|architecture)_\w+\.(png|svg|csv)|ranking_(weighting|architecture)\.csv|"
                  r"summary\.(md|csv)|cells\.csv|ablation\.csv|report\.html)$")


@dataclass
class ReportResult:
    out_dir: Path
    files: list[Path]
    summary: pd.DataFrame                       # tidy: see mtlbench.report.tables
    missing: list[str]                          # human-readable: not run, failed, diverged, no FastCAR, ...
    heatmaps: dict[HeatmapKey, pd.DataFrame]    # the numbers drawn: architecture rows x weighting columns
    color_limits: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (vmin, vmax), shared
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)                  # one row per grid cell
    fastcar: dict[str, Any] | None = None       # FastCAR aggregated over its seeds
    skipped: list[str] = field(default_factory=list)                           # figures not drawn, and why


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    out = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats))
    bad = [f for f in out if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown report format(s) {', '.join(bad)}; choose from: {', '.join(FORMATS)}")
    if not out:
        raise ConfigError(f"no report format given; choose from: {', '.join(FORMATS)}")
    return out


def _sort_cells(cells: pd.DataFrame, axes: Axes) -> pd.DataFrame:
    if cells.empty:
        return cells
    orders = {"architecture": axes.architectures, "weighting": axes.weightings, "decoder": axes.decoders,
              "target_scaling": axes.scalings}
    keys = pd.DataFrame({k: cells[k].map({v: i for i, v in enumerate(orders[k])}) for k in CELL_KEY})
    order = keys.sort_values(["target_scaling", "decoder", "architecture", "weighting"], kind="stable").index
    return cells.loc[order].reset_index(drop=True)


def _grid(cells: pd.DataFrame, axes: Axes, decoder: str, scaling: str, column: str, fill: Any) -> pd.DataFrame:
    fam = cells[(cells["decoder"] == decoder) & (cells["target_scaling"] == scaling)]
    m = fam.pivot(index="architecture", columns="weighting", values=column) if not fam.empty else pd.DataFrame()
    m = m.reindex(index=axes.architectures, columns=axes.weightings)
    m.index.name, m.columns.name = "architecture", None
    return m if fill is None else m.fillna(fill)


def _heading(spec: MetricSpec) -> str:
    """"Test accuracy (%)", "Test MSE (x1000)", "Run time (minutes)"."""
    unit = re.search(r"\([^()]*\)$", spec.cbar)
    return f"{spec.title} {unit.group(0)}" if unit else spec.title


def _stem(out: Path, name: str) -> Path:
    return out / re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _mean_curve(epochs: pd.DataFrame, run_ids: Sequence[str]) -> pd.DataFrame:
    e = epochs[epochs["run_id"].isin(run_ids)]
    cols = [c for c in ("val_loss", "val_accuracy", "val_mape") if c in e]
    if e.empty:
        return pd.DataFrame(columns=["epoch", *cols])
    return e.groupby("epoch", as_index=False)[cols].mean(numeric_only=True).sort_values("epoch")


def render_report(results: list[Path] | Path | str, out: Path | str | None = None, *,
                  formats: Iterable[str] = FORMATS, metrics: Iterable[str] = DEFAULT_METRICS,
                  selection: str = "best") -> ReportResult:
    """Render the report of one or more results folders into ``out`` (default: ``results[0] / "report"``).

    ``formats``: any of png, svg (one file per figure), md, csv (summary, per-cell table, heatmap matrices), html
    (one self-contained page). ``metrics``: the heatmaps and summary rows, any of accuracy, mse, mape, time (and
    rmse, mae, within8). ``selection``: "best" (test metrics at the best validation epoch) or "last".
    Raises :class:`~mtlbench.errors.MtlbenchError` naming the folder when there is nothing to report.
    """
    folders = [Path(results)] if isinstance(results, (str, Path)) else [Path(r) for r in results]
    if not folders:
        raise MtlbenchError("no results folder given to the report")
    formats = _check_formats(formats)
    specs = metric_specs(metrics)
    if selection not in ("best", "last"):
        raise ConfigError(f"unknown selection {selection!r}; choose best or last")
    all_specs = list(METRIC_SPECS.values())

    data = load_results(folders)
    axes = axes_of(data)
    cells = _sort_cells(aggregate_cells(data.runs, all_specs, selection), axes)
    fastcar = aggregate_fastcar(data.runs, all_specs, selection)
    missing = find_missing(data, cells, axes) + _unstable_note(data.runs)
    found = findings(data.runs, specs, selection)

    out_dir = Path(out) if out is not None else folders[0] / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for p in out_dir.iterdir():
            if p.is_file() and _OWN.match(p.name):
                p.unlink()
    except OSError as exc:
        raise MtlbenchError(f"report folder {out_dir} is not writable ({exc.strerror or exc})") from None

    files: list[Path] = []
    blocks: list[H.FigureBlock] = []
    skipped: list[str] = []
    draw = any(f in formats for f in ("png", "svg", "html"))
    several_scalings = len(axes.scalings) > 1
    has_grid = not cells.empty

    def emit(fig: Any, name: str, title: str, caption: str) -> None:
        written, png = F.save(fig, _stem(out_dir, name), formats)
        files.extend(written)
        blocks.append(H.FigureBlock(title, png, caption, name))

    # -- heatmaps --------------------------------------------------------------------------------------------------
    heatmaps: dict[HeatmapKey, pd.DataFrame] = {}
    limits: dict[str, tuple[float, float]] = {}
    if not has_grid:
        skipped.append("No MTL grid cells in these results: heatmaps and the accuracy-MAPE scatter are skipped.")
    for spec in specs if has_grid else []:
        fams = [(d, s) for s in axes.scalings for d in axes.decoders]
        mats = {k: _grid(cells, axes, k[0], k[1], f"{spec.name}_mean", None) for k in fams}
        finite = np.concatenate([m.to_numpy(float).ravel() for m in mats.values()])
        finite = finite[np.isfinite(finite)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        limits[spec.name] = (vmin, vmax)
        fc_value = fastcar.get(f"{spec.name}_mean") if fastcar else None
        fc_value = fc_value if fc_value is not None and np.isfinite(fc_value) else None
        for dec, sc in fams:
            key = (spec.name, dec, sc)
            heatmaps[key] = mats[(dec, sc)]
            name = f"heatmap_{spec.name}_{dec}" + (f"_{sc}" if several_scalings else "")
            if "csv" in formats:
                path = _stem(out_dir, name).with_suffix(".csv")
                mats[(dec, sc)].to_csv(path)
                files.append(path)
            if not draw:
                continue
            fam = cells[(cells["decoder"] == dec) & (cells["target_scaling"] == sc)]
            win = best_cell(fam, spec)
            status = _grid(cells, axes, dec, sc, "status", "")
            partial = _grid(cells.assign(_p=(cells["n_failed"] + cells["n_diverged"] > 0) & (cells["n_ok"] > 0)),
                            axes, dec, sc, "_p", False).astype(bool)
            std = _grid(cells, axes, dec, sc, f"{spec.name}_std", None)
            fam_label = f"MTL family {dec}" + (f", {sc} targets" if several_scalings else "")
            title = f"{_heading(spec)}: {fam_label}" + (f"   |   FastCAR: {spec.format(fc_value)}"
                                                        if fc_value is not None else "")
            fig = F.heatmap(mats[(dec, sc)], std, status, partial, spec, vmin, vmax, title=title, fastcar=fc_value,
                            best=(win["architecture"], win["weighting"]) if win is not None else None)
            best_txt = (f" Best cell ({'highest' if spec.better == 'max' else 'lowest'}, boxed): "
                        f"{win['architecture']}+{win['weighting']} {spec.format(win[f'{spec.name}_mean'])}."
                        if win is not None else "")
            caption = (f"Architecture (rows) x weighting scheme (columns), {fam_label}; {spec.cbar}, test set, "
                       f"{selection} validation epoch. Each cell: mean over the seeds that finished ok "
                       f"(± sample std when there are several; * = some seeds failed or diverged). Hatched cells "
                       f"failed or diverged; blank cells were not run. One colour scale for every decoder "
                       f"[{spec.format(vmin)}, {spec.format(vmax)}], lighter = better."
                       + best_txt + (f" Red mark on the colour bar: FastCAR {spec.format(fc_value)}."
                                     if fc_value is not None else " No FastCAR value."))
            emit(fig, name, f"{spec.title}: {fam_label}", caption)

    # -- scatter, FastCAR figures, learning curves --------------------------------------------------------------------
    if draw and has_grid:
        if cells["accuracy_mean"].notna().any() and cells["mape_mean"].notna().any():
            emit(F.scatter_accuracy_mape(cells, fastcar, axes.decoders, axes.scalings), "scatter_accuracy_mape",
                 "Accuracy vs MAPE", "Every grid cell (mean over seeds; bars = std), coloured by decoder. Dashed: "
                 "the Pareto front (no other point has both higher accuracy and lower MAPE), its cells circled "
                 "and named. Red star: FastCAR.")
        else:
            skipped.append("Accuracy-MAPE scatter skipped: no cell finished ok with both metrics.")
    fc_runs = data.fastcar[data.fastcar["status"] == "ok"].sort_values("seed", kind="stable")
    if draw and not fc_runs.empty:
        fc = fc_runs.iloc[0]
        seed_txt = f"seed {fc['seed']}" + (f", the first of {len(fc_runs)}" if len(fc_runs) > 1 else "")
        pred = data.predictions[(data.predictions["run_id"] == fc["run_id"]) &
                                (data.predictions["checkpoint"] == selection)]
        if not pred.empty:
            mape, mse = fc.get(f"{selection}_mape"), fc.get(f"{selection}_mse")
            title = (f"FastCAR ({seed_txt}): predicted vs true hardness\ntest set, {selection} epoch; "
                     f"MAPE {mape:.2f}%, MSE {mse:.1f}" if pd.notna(mape) and pd.notna(mse) else
                     f"FastCAR ({seed_txt}): predicted vs true hardness")
            emit(F.predictions_scatter(pred, title), "fastcar_predictions", "FastCAR: predicted vs true hardness",
                 f"Each test image ({len(pred)}), coloured by its true class; dashed: prediction = truth. "
                 f"Run {fc['run_id']}.")
        else:
            skipped.append(f"FastCAR prediction scatter skipped: no '{selection}' rows in the predictions table.")
        cm_fig = F.confusion(fc.get(f"{selection}_confusion_json"),
                             f"FastCAR ({seed_txt}): confusion matrix\naccuracy {fc.get(f'{selection}_accuracy'):.2f}%"
                             if pd.notna(fc.get(f"{selection}_accuracy")) else "FastCAR: confusion matrix")
        if cm_fig is not None:
            emit(cm_fig, "fastcar_confusion", "FastCAR: confusion matrix",
                 "Rows: true class, columns: class predicted (after the inverse label transform); test set.")
        else:
            skipped.append("FastCAR confusion matrix skipped: the run has no confusion matrix recorded.")
    elif draw:
        skipped.append("FastCAR figures skipped: no FastCAR run finished ok in these results.")
    if draw:
        curves = []
        if not fc_runs.empty:
            c = _mean_curve(data.epochs, list(fc_runs["run_id"]))
            if not c.empty:
                curves.append((f"FastCAR ({len(fc_runs)} seed{'s' if len(fc_runs) > 1 else ''})", c, True))
        if has_grid:
            top = cells[cells["accuracy_mean"].notna()].sort_values("accuracy_mean", ascending=False,
                                                                    kind="stable").head(3)
            ok_runs = data.mtl[data.mtl["status"] == "ok"]
            for _, cell in top.iterrows():
                ids = ok_runs[(ok_runs[list(CELL_KEY)] == cell[list(CELL_KEY)].to_numpy()).all(axis=1)]["run_id"]
                c = _mean_curve(data.epochs, list(ids))
                if not c.empty:
                    label = (cell_name(cell["architecture"], cell["weighting"], cell["decoder"],
                                       cell["target_scaling"] if several_scalings else None)
                             + f" ({cell['accuracy_mean']:.2f}%)")
                    curves.append((label, c, False))
        if curves:
            emit(F.learning_curves(curves), "learning_curves", "Learning curves",
                 "Validation loss, accuracy and MAPE per epoch (mean over seeds) of FastCAR and the three most "
                 "accurate grid cells. FastCAR's loss is the MSE on its hybrid labels, so its scale differs from "
                 "the MTL losses.")
        else:
            skipped.append("Learning curves skipped: the epochs table has no rows for FastCAR or the best cells.")

    if draw:
        _ltb_trees(data, several_scalings, emit, skipped)
    if not data.sharing.empty:   # architectures that tie kernels across tasks (MTAL)
        by_layer = share_by_layer(data.runs, data.sharing, several_scalings)
        by_epoch = share_by_epoch(data.runs, data.sharing, several_scalings)
        if "csv" in formats and not by_layer.empty:
            for name, frame in (("sharing_layers", by_layer.reset_index()), ("sharing_epochs", by_epoch)):
                path = _stem(out_dir, name).with_suffix(".csv")
                frame.to_csv(path, index=False)
                files.append(path)
        if draw and not by_layer.empty:
            emit(sharing_figure(by_layer, by_epoch), "sharing", "Kernel sharing (MTAL)",
                 "Left: per layer of the trunk, the fraction of filters tied across the tasks after each run's last "
                 "merge (the MTAL paper's Table 6), mean over seeds. Right: the fraction of all banked filters tied "
                 "after each merge epoch (filter-weighted over layers), mean ± std over seeds.")
    if draw or "csv" in formats:
        _treemtl_figures(data.folders, formats, out_dir, files, emit, skipped)
    if has_grid:   # which weighting (architecture) wins across the grid: mean ranks, Friedman, Nemenyi
        frames = add_rankings(data.mtl, emit, skipped, selection, draw=draw)
        if "csv" in formats:
            for name, frame in frames.items():
                path = _stem(out_dir, name).with_suffix(".csv")
                frame.to_csv(path, index=False)
                files.append(path)

    # -- summary and tables ----------------------------------------------------------------------------------------
    summary = build_summary(cells, fastcar, specs, axes)
    ablation = aggregate_ablation(data, all_specs, selection)
    ablation_shown = ablation_view(ablation, all_specs) if not ablation.empty else pd.DataFrame()
    title = "mtlbench report: MTL grid vs FastCAR"
    if "md" in formats:
        path = out_dir / "summary.md"
        extra = ablation_markdown(ablation_shown, selection)
        path.write_text(summary_markdown(summary, axes, title=title, notes=missing, findings=found, extra=extra))
        files.append(path)
    if "csv" in formats and not ablation.empty:
        path = out_dir / "ablation.csv"
        ablation.to_csv(path, index=False)
        files.append(path)
    per_cell = cells_table(cells, all_specs_for_table(specs), several_scalings) if has_grid else pd.DataFrame()
    if "csv" in formats:
        path = out_dir / "summary.csv"
        summary.to_csv(path, index=False)
        files.append(path)
        if has_grid:
            path = out_dir / "cells.csv"
            per_cell.to_csv(path, index=False)
            files.append(path)
    if "html" in formats:
        path = out_dir / "report.html"
        path.write_text(_html(title, data, axes, summary, cells, per_cell, fastcar, missing, blocks, skipped, specs,
                              selection, found, ablation_shown), encoding="utf-8")
        files.append(path)
    return ReportResult(out_dir=out_dir, files=files, summary=summary, missing=missing, heatmaps=heatmaps,
                        color_limits=limits, cells=cells, fastcar=fastcar, skipped=skipped)


def _unstable_note(runs: pd.DataFrame) -> list[str]:
    """One note naming the runs whose validation scores still swung at the end (mtlbench.stability)."""
    if "unstable" not in runs:
        return []
    flagged = runs[(runs["status"] == "ok") & (runs["unstable"] == True)]  # noqa: E712 (nullable column)
    if flagged.empty:
        return []
    names = [cell_name(None if r["kind"] == "fastcar" else r["architecture"], r["weighting"], r["decoder"])
             + f" seed {r['seed']}" for _, r in flagged.iterrows()]
    return [f"unstable: {len(flagged)} of {int((runs['status'] == 'ok').sum())} runs spanned more than "
            f"{UNSTABLE_ACCURACY_POINTS:g} points of validation accuracy or {UNSTABLE_MAPE_POINTS:g} of MAPE over "
            f"their last epochs, so their best-epoch figures are partly luck: {', '.join(names[:10])}"
            + (f" and {len(names) - 10} more" if len(names) > 10 else "")]


def _ltb_trees(data: Any, several_scalings: bool, emit: Any, skipped: list[str]) -> None:
    """One panel per LTB run that recorded its final tree (``runs.arch_state_json``)."""
    ltb = data.mtl[(data.mtl["architecture"] == "LTB") & (data.mtl["status"] == "ok")]
    if ltb.empty:
        return
    if "arch_state_json" not in ltb or ltb["arch_state_json"].isna().all():
        skipped.append("LTB trees skipped: these runs recorded no tree (written before mtlbench recorded it).")
        return
    trees = []
    for _, r in ltb[ltb["arch_state_json"].notna()].sort_values(["decoder", "weighting", "seed"]).iterrows():
        state = json.loads(r["arch_state_json"])
        label = (f"{r['weighting']} / {r['decoder']}" + (f" / {r['target_scaling']}" if several_scalings else "")
                 + f" / seed {r['seed']}")
        trees.append((label, state["tree"], state["stages"]))
    emit(F.branching_trees(trees, ["cls", "reg"]), "ltb_trees", "LTB: learned branching trees",
         "Each LTB run's tree at its last epoch: branch j of a stage reads the branch of the stage before that "
         "its logits rank first (evaluation uses this argmax tree). Task i reads the last stage's branch i; "
         "hollow nodes and dotted edges lie on no task's path.")


def _one_backbone_macs(rec: pd.DataFrame) -> float | None:
    """One trunk's MACs from the recommendations table: macs_pct is against len(TASKS) independent trunks."""
    from mtlbench.treemtl.tables import TASKS

    m, pct = rec["macs"].to_numpy(float), rec["macs_pct"].to_numpy(float)
    ok = np.isfinite(m) & np.isfinite(pct) & (pct > -100)
    if not ok.any():
        return None
    return float(np.median(m[ok] / (len(TASKS) * (1 + pct[ok] / 100))))


def _budget_macs(label: str, one_backbone: float | None) -> float | None:
    """The MACs cap of a recommendations table's budget label (``from_results.Budget.label``); None for a
    parameter budget or none."""
    num = r"([0-9.]+(?:e[-+]?[0-9]+)?)"
    if (m := re.fullmatch(rf"MACs <= {num} backbones", label)) and one_backbone:
        return float(m.group(1)) * one_backbone
    if m := re.fullmatch(rf"MACs <= {num} G", label):
        return float(m.group(1)) * 1e9
    return None


def _treemtl_figures(folders: Sequence[Path], formats: tuple[str, ...], out_dir: Path, files: list[Path],
                     emit: Any, skipped: list[str]) -> None:
    """The tables ``mtlbench recommend`` wrote into ``<folder>/treemtl/`` (mtlbench.treemtl.tables): Δt against the
    branch point, score against MACs of the ranked layouts and, after ``--verify``, predicted against trained
    scores. Each figure's numbers go to a CSV of the same name."""
    import pyarrow as pa

    from mtlbench.treemtl.from_results import correlations
    from mtlbench.treemtl.tables import TASKS, path_of, read_table

    have = [f for f in dict.fromkeys(folders)
            if path_of(f, "pair_table").is_file() or path_of(f, "recommendations").is_file()]
    if not have:   # no `mtlbench recommend` here: nothing to say, as for a grid without LTB runs
        return
    draw = any(f in formats for f in ("png", "svg", "html"))

    def read(folder: Path, name: str) -> pd.DataFrame | None:
        if not path_of(folder, name).is_file():
            return None
        try:
            return read_table(folder, name)
        except (OSError, ValueError, pa.ArrowException) as exc:
            skipped.append(f"TreeMTL: {path_of(folder, name)} could not be read ({exc}); its figures are skipped.")
            return None

    def out(frame: pd.DataFrame, name: str, figure: tuple, title: str, caption: str) -> None:
        """The figure's data as ``name``.csv; the figure (``figure`` = (function, *its arguments)) drawn."""
        if "csv" in formats:
            path = _stem(out_dir, name).with_suffix(".csv")
            frame.to_csv(path, index=False)
            files.append(path)
        if draw:
            emit(figure[0](*figure[1:]), name, title, caption)

    for i, folder in enumerate(have, 1):
        suffix = f"_{i}" if len(have) > 1 else ""
        where = f" ({folder})" if len(have) > 1 else ""
        pair = read(folder, "pair_table")
        if pair is not None and not pair.empty:
            pair = pair.sort_values(["weighting", "decoder", "target_scaling", "task", "branch_point"],
                                    kind="stable").reset_index(drop=True)
            out(pair, f"treemtl_delta_t{suffix}", (F.treemtl_delta_t, pair),
                f"TreeMTL: Δt against the branch point{where}",
                "Δt of each task (% improvement over its b = 0 model, independent trunks; the mean over the task's "
                "validation metrics, each signed so that higher is better) at each branch point b of the two-task "
                "models Tree-b0 .. Tree-b4 and HPS: mean over seeds, bars ± sample std, shaded band min..max over "
                f"seeds. From {path_of(folder, 'pair_table')}.")
        elif pair is None and path_of(folder, "recommendations").is_file():
            skipped.append(f"TreeMTL Δt figure skipped{where}: no pair table.")
        rec = read(folder, "recommendations")
        if rec is None or rec.empty:
            if pair is not None:
                skipped.append(f"TreeMTL score-MACs figure skipped{where}: no ranked layouts (recommendations "
                               "table absent or empty: `mtlbench recommend` could not rank).")
            continue
        rec = rec.sort_values("rank", kind="stable").reset_index(drop=True)
        one = _one_backbone_macs(rec)
        budget = str(rec["budget"].iloc[0])
        cap = _budget_macs(budget, one)
        score, macs = rec["score"].to_numpy(float), rec["macs"].to_numpy(float)
        finite = np.isfinite(score) & np.isfinite(macs)
        front = np.zeros(len(rec), dtype=bool)
        front[finite] = F.pareto_front(score[finite], macs[finite])
        rec_out = rec.assign(pareto=front, budget_macs=cap)
        budget_txt = ("no budget: every layout fits" if budget == "none" else
                      f"budget {budget}, the red vertical line" if cap is not None else
                      f"budget {budget}, not a MACs cap: not drawn on this axis")
        out(rec_out, f"treemtl_score_macs{suffix}",
            (F.treemtl_score_macs, rec_out, one, cap),
            f"TreeMTL: score against backbone MACs{where}",
            f"The ranked layouts (every layout down to the last recommended one) by estimated score S and backbone "
            f"MACs ({budget_txt}). Filled: fits the budget, hollow: over it; green rings: recommended. Dashed: the "
            f"Pareto front (no other layout has both a higher score and fewer MACs), its layouts named by rank. "
            f"From {path_of(folder, 'recommendations')}.")
        ver = rec[rec["trained_score"].notna()].copy()
        tried = int(rec["verified_run_id"].notna().sum())
        if ver.empty:
            skipped.append(f"TreeMTL verification figure skipped{where}: " +
                           (f"none of the {tried} verified layouts has a trained score." if tried else
                            "the recommendations are not verified (`mtlbench recommend --verify`)."))
            continue
        sp, pe, notes = correlations(ver["score"].astype(float).tolist(), ver["trained_score"].astype(float).tolist())
        ver["predicted_rank"] = ver["score"].rank(ascending=False, method="min").astype(int)
        ver["trained_rank"] = ver["trained_score"].rank(ascending=False, method="min").astype(int)
        ver["spearman"], ver["pearson"] = sp, pe
        ver["verified_seed"] = ver["verified_seed"].astype("Int64")   # read back as float where others are null
        cols = ["weighting", "decoder", "target_scaling", "rank", "layout_key", "architecture", "score",
                "trained_score", "predicted_rank", "trained_rank", *(f"dt_hat_{t}" for t in TASKS),
                *(f"trained_dt_{t}" for t in TASKS), "verified_run_id", "verified_seed", "verified_status",
                "spearman", "pearson"]
        ver = ver[cols].reset_index(drop=True)
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        seeds = sorted({int(s) for s in ver["verified_seed"].dropna()})
        title = (f"TreeMTL verification: predicted vs trained score ({len(ver)} layouts"
                 + (f", seed {', '.join(map(str, seeds))}" if seeds else "") + ")\n"
                 f"Spearman rank correlation = {fmt(sp)}, Pearson correlation = {fmt(pe)}")
        left_out = tried - len(ver)
        out(ver, f"treemtl_verified{suffix}", (F.treemtl_verified, ver, title),
            f"TreeMTL: predicted vs trained score{where}",
            "Each verified layout trained once more with an unused seed (`mtlbench recommend --verify`): its score "
            "S predicted from the pair table against the score of its trained Δt with the same task weights; "
            "dashed: trained = predicted. Spearman: rank correlation, Pearson: linear correlation."
            + (f" {left_out} verified layout(s) did not finish ok: left out." if left_out else "")
            + "".join(f" Note: {n}" for n in notes))


def all_specs_for_table(specs: list[MetricSpec]) -> list[MetricSpec]:
    """The per-cell table shows the requested metrics and always accuracy, MAPE and MSE."""
    names = [s.name for s in specs] + [m for m in ("accuracy", "mse", "mape", "time", "within8")
                                       if m not in {s.name for s in specs}]
    return [METRIC_SPECS[n] for n in names]


def _html(title: str, data: Any, axes: Axes, summary: pd.DataFrame, cells: pd.DataFrame, per_cell: pd.DataFrame,
          fastcar: dict[str, Any] | None, missing: list[str], blocks: list[H.FigureBlock], skipped: list[str],
          specs: list[MetricSpec], selection: str, found: list[str], ablation: pd.DataFrame) -> str:
    runs = data.runs
    n_mtl, n_fc = int((runs["kind"] == "mtl").sum()), int((runs["kind"] == "fastcar").sum())
    headline = [f"{len(runs)} runs: {n_mtl} MTL grid runs in {len(cells)} cells, {n_fc} FastCAR run(s); "
                f"test metrics at the {selection} validation epoch."]
    headline += [m for m in missing if m.startswith("grid:")]
    if fastcar is not None:
        headline.append("FastCAR: " + ", ".join(f"{s.cbar} {s.format(fastcar.get(f'{s.name}_mean'))}" for s in specs))
    scalings = [s for s in dict.fromkeys(summary["scaling"]) if s is not None and not pd.isna(s)]
    if len(scalings) > 1:
        tables = [(f"Target scaling: {s}", summary_wide(summary, s)) for s in scalings]
        tables.append(("Side by side", summary_wide(summary)))
    else:
        tables = [("", summary_wide(summary))]
    if not ablation.empty:   # a spec's [ablation]: each setting beside the spec's own, mean ± std over seeds
        tables.append(("Ablation: one factor at a time from the spec's setting (\"spec\"); spreads in points over "
                       "the last epochs", ablation.set_index("run")))
    note = ("Best-type rows: the winning cell (architecture+weighting) chosen by its mean over seeds, shown as mean "
            "± sample std [min-max] over seeds (neither with one seed); FastCAR: the same over its seeds. Run time: "
            "the family's mean ± std over its cells, and the fastest cell. MSE in multiples of 1000.")
    fc_table = None
    if n_fc:
        cols = ["run_id", "seed", "status", f"{selection}_accuracy", f"{selection}_mse", f"{selection}_mape",
                f"{selection}_within8", "total_s", "label_search_s", "best_epoch", "epochs_run", "message"]
        fc_table = runs[runs["kind"] == "fastcar"][[c for c in cols if c in runs]]
    cell_fmt = {}
    for s in all_specs_for_table(specs):
        cell_fmt[f"{s.cbar} mean"] = s.fmt
        cell_fmt[f"{s.cbar} std"] = s.fmt
    run_id, cfg = example_config(runs)
    protocol = value_counts(runs, PROTOCOL_FIELDS)
    if cfg:
        try:
            proto = json.loads(cfg).get("protocol", {})
            protocol += [(f"protocol.{k}", json.dumps(v)) for k, v in sorted(proto.items())]
        except (ValueError, AttributeError):
            pass
    environment = value_counts(runs, ENV_FIELDS)
    return H.page(title=title, folders=[str(f) for f in data.folders], headline=headline, summary_tables=tables,
                  summary_note=note, missing=missing, missing_cells=sum(coverage_counts(cells, axes, fastcar).values()),
                  figures=blocks, cells=per_cell, cell_fmt=cell_fmt,
                  fastcar_table=fc_table, config=(run_id, cfg), protocol=protocol, environment=environment,
                  skipped=skipped, findings=found)
