"""Load one or more results folders, merge them, aggregate seeds per grid cell and say what is missing.

A *cell* is one point of the MTL grid: ``(architecture, weighting, decoder, target_scaling)``; its seeds are
aggregated to a mean and a sample standard deviation (ddof=1; NaN with one seed) over the runs whose status is
``ok``. Failed and diverged runs never contribute a value: they are counted and reported.

Values are kept in *display units* (see :data:`METRIC_SPECS`): accuracy and MAPE in %, MSE in multiples of 1000
(as in the paper's Figs 3 and 5), run time in minutes.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from mtlbench.config import base_architecture, cell_name, shown_architecture
from mtlbench.errors import ConfigError, MtlbenchError
from mtlbench.records.schema import TABLES
from mtlbench.records.store import ResultsStore

CELL_KEY = ("architecture", "weighting", "decoder", "target_scaling")
TABLE_NAMES = tuple(TABLES)   # "runs" first
STATUS_RANK = {"ok": 0, "not_applicable": 0, "diverged": 1, "failed": 2}   # one per schema.STATUSES


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is read from ``runs``, scaled for display, labelled and ranked."""

    name: str
    column: str | None        # a runs column; None = ``<selection>_<name>`` (a test metric)
    title: str                # heading / figure title
    cbar: str                 # colour-bar / axis label, with the unit
    scale: float              # display value = stored value * scale
    better: str               # "max" | "min"
    fmt: str                  # format of one value

    def source(self, selection: str) -> str:
        return self.column or f"{selection}_{self.name}"

    def format(self, value: float | None) -> str:
        if value is None or not np.isfinite(value):
            return "-"
        if 0 < abs(value) < 1 and self.fmt in ("{:.1f}", "{:.0f}"):
            return f"{value:.2g}"  # e.g. FastCAR's MSE in multiples of 1000: 0.61, not 0.6
        return self.fmt.format(value)

    def format_std(self, value: float | None) -> str:
        """A spread in the same fixed decimals as the values it belongs to."""
        if value is None or not np.isfinite(value):
            return "-"
        return self.fmt.format(value)


METRIC_SPECS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec("accuracy", None, "Test accuracy", "Accuracy (%)", 1.0, "max", "{:.2f}"),
    "mse": MetricSpec("mse", None, "Test MSE", "MSE (x1000)", 1e-3, "min", "{:.1f}"),
    "mape": MetricSpec("mape", None, "Test MAPE", "MAPE (%)", 1.0, "min", "{:.1f}"),
    "time": MetricSpec("time", "total_s", "Run time", "Run time (minutes)", 1.0 / 60.0, "min", "{:.2f}"),
    "rmse": MetricSpec("rmse", None, "Test RMSE", "RMSE", 1.0, "min", "{:.1f}"),
    "mae": MetricSpec("mae", None, "Test MAE", "MAE", 1.0, "min", "{:.1f}"),
    "within8": MetricSpec("within8", None, "Test share within 8% APE", "Within 8% APE (%)", 1.0, "max", "{:.1f}"),
}


def metric_specs(metrics: Iterable[str]) -> list[MetricSpec]:
    out = []
    for m in metrics:
        if m not in METRIC_SPECS:
            raise ConfigError(f"unknown report metric {m!r}; choose from: {', '.join(METRIC_SPECS)}")
        out.append(METRIC_SPECS[m])
    return list(dict.fromkeys(out))


# -- axis order -----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def registry_names(kind: str) -> tuple[str, ...] | None:
    """The registry order of architectures / weightings / decoders, or None if the registry cannot be imported
    (another module not ready, a missing optional dependency): the report then falls back to first appearance."""
    try:
        if kind == "architecture":
            from mtlbench.methods.architectures import ARCHITECTURES as reg
        elif kind == "weighting":
            from mtlbench.methods.weightings import WEIGHTINGS as reg
        elif kind == "decoder":
            from mtlbench.models.decoders import DECODERS as reg
        elif kind == "target_scaling":
            from mtlbench.config import TARGET_SCALINGS
            return tuple(TARGET_SCALINGS)
        else:
            return None
        return tuple(reg.names())
    except Exception:  # noqa: BLE001 — any import problem means "no registry order", never a failed report
        return None


def ordered(kind: str, present: Iterable[Any]) -> list[str]:
    """The values present, in registry order; names the registry lacks follow in order of first appearance."""
    seen = list(dict.fromkeys(str(v) for v in present if v is not None and not (isinstance(v, float) and np.isnan(v))))
    reg = registry_names(kind)
    if reg is None:
        return seen
    lower = {n.lower(): i for i, n in enumerate(reg)}
    base = {v: base_architecture(v).lower() if kind == "architecture" else v.lower() for v in seen}
    known = sorted((v for v in seen if base[v] in lower), key=lambda v: (lower[base[v]], natural_key(v)))
    return known + [v for v in seen if base[v] not in lower]


def natural_key(text: str) -> list[Any]:
    """Sort key that compares the numbers in a name as numbers: MTAL[rho=0.55] before MTAL[rho=0.9]."""
    return [float(part) if i % 2 else part for i, part in enumerate(re.split(r"(-?\d+(?:\.\d+)?)", text))]


@dataclass
class Axes:
    architectures: list[str]
    weightings: list[str]
    decoders: list[str]
    scalings: list[str]
    seeds: list[int]

    @property
    def expected(self) -> list[tuple[str, str, str, str]]:
        return list(itertools.product(self.architectures, self.weightings, self.decoders, self.scalings))


# -- loading --------------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """Merged tables of one or more results folders; every run_id once."""

    folders: list[Path]
    runs: pd.DataFrame
    epochs: pd.DataFrame
    weights: pd.DataFrame
    predictions: pd.DataFrame
    label_search: pd.DataFrame
    sharing: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    # runs of a spec's [ablation] settings (``setting`` set): kept out of ``runs``, so that every cell, FastCAR and
    # finding is the spec's own setting; the ablation table compares them with it
    ablation: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def mtl(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "mtl"]

    @property
    def fastcar(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "fastcar"]


def _read_folder(folder: Path) -> dict[str, pd.DataFrame]:
    if not folder.exists():
        raise MtlbenchError(f"results folder {folder} does not exist")
    if not folder.is_dir():
        raise MtlbenchError(f"results folder {folder} is not a folder")
    store = ResultsStore(folder, create=False)
    return {name: store.read(name) for name in TABLE_NAMES}


def load_results(folders: Iterable[Path | str]) -> Results:
    """Read and merge results folders. A run_id found in several folders is counted once: the ``ok`` record wins
    over diverged / failed ones, then the most recently finished, then the first folder given."""
    folders = [Path(f) for f in folders]
    if not folders:
        raise MtlbenchError("no results folder given")
    per_folder = []
    empty = []
    for i, folder in enumerate(folders):
        tables = _read_folder(folder)
        if tables["runs"].empty:
            empty.append(folder)
        for df in tables.values():
            df["source"] = str(folder)
            df["_order"] = i
        per_folder.append(tables)
    if len(empty) == len(folders):
        names = ", ".join(str(f) for f in empty)
        raise MtlbenchError(f"results folder {names} holds no runs (no cells/*/runs.parquet and no runs.parquet); "
                            f"run a sweep into it first")
    notes = [f"results folder {f} holds no runs; it was skipped" for f in empty]
    merged = {name: pd.concat([t[name] for t in per_folder if not t[name].empty] or [per_folder[0][name]],
                              ignore_index=True) for name in TABLE_NAMES}
    runs = merged["runs"]
    runs["status"] = runs["status"].fillna("failed")
    runs["_rank"] = runs["status"].map(STATUS_RANK).fillna(3)
    runs["_finished"] = pd.to_datetime(runs["finished_at"], utc=True, errors="coerce")
    runs = runs.sort_values(["_rank", "_finished", "_order"], ascending=[True, False, True], kind="stable",
                            na_position="last")
    if "setting" in runs:   # one run recorded in Table 1 in one folder and as an ablation setting in another
        labels = runs["setting"].fillna("").groupby(runs["run_id"]).nunique()
        if (labels > 1).any():
            notes.append(f"{int((labels > 1).sum())} run(s) are recorded under different ablation settings in "
                         f"different folders; each is shown once, under the setting of the record kept")
    n_before = len(runs)
    runs = runs.drop_duplicates("run_id", keep="first")
    if len(runs) < n_before:
        notes.append(f"{n_before - len(runs)} run record(s) appear in more than one folder (same run_id); "
                     f"each run is counted once")
    runs = runs.sort_values(["_order"], kind="stable").drop(columns=["_rank", "_finished"])
    keep = set(zip(runs["run_id"], runs["source"]))
    out: dict[str, pd.DataFrame] = {"runs": runs.reset_index(drop=True)}
    for name in TABLE_NAMES[1:]:
        df = merged[name]
        if not df.empty:
            mask = [(r, s) in keep for r, s in zip(df["run_id"], df["source"])]
            df = df[mask]
        out[name] = df.reset_index(drop=True)
    mtl = out["runs"]["kind"] == "mtl"
    out["runs"].loc[mtl, "target_scaling"] = out["runs"].loc[mtl, "target_scaling"].fillna("none")
    # A variant of an architecture ([arch_sweep], e.g. MTAL's rho) is an architecture of its own in the report.
    varied = out["runs"]["variant"].notna()
    out["runs"].loc[varied, "architecture"] = [shown_architecture(a, v) for a, v in
                                               zip(out["runs"].loc[varied, "architecture"],
                                                   out["runs"].loc[varied, "variant"])]
    if "setting" not in out["runs"]:
        out["runs"]["setting"] = None
    changed = out["runs"]["setting"].notna()
    ablation = out["runs"][changed].reset_index(drop=True)
    out["runs"] = out["runs"][~changed].reset_index(drop=True)
    for col, what in (("data_fingerprint", "data sets"), ("epochs", "epoch budgets")):
        # FastCAR may train for its own length ([fastcar.protocol]; the findings say so): budgets mix only among cells
        runs = out["runs"] if col != "epochs" else out["runs"][out["runs"]["kind"] == "mtl"]
        values = runs[col].dropna().unique()
        if len(values) > 1:
            notes.append(f"the runs mix {len(values)} {what} ({', '.join(map(str, values[:5]))}); cells and "
                         f"seeds are aggregated across them")
    return Results(folders=folders, notes=notes, ablation=ablation, **out)


# -- aggregation ----------------------------------------------------------------------------------------------------
def _finite(values: pd.Series) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype(float)
    return v[np.isfinite(v)]


def _stats(values: pd.Series) -> tuple[float, float, int]:
    v = _finite(values)
    n = int(len(v))
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if n > 1 else float("nan")), n


def _summarise(group: pd.DataFrame, specs: list[MetricSpec], selection: str) -> dict[str, Any]:
    counts = group["status"].value_counts()
    n_ok, n_failed, n_div = (int(counts.get(s, 0)) for s in ("ok", "failed", "diverged"))
    if n_ok:
        status = "ok"
    elif (group["status"] == "not_applicable").all():
        status = "not_applicable"
    else:
        status = "diverged" if n_div >= n_failed and n_div else "failed"
    bad = group[~group["status"].isin(("ok", "not_applicable"))]
    if status == "not_applicable":
        bad = group
    row: dict[str, Any] = {
        "status": status, "n_runs": len(group), "n_ok": n_ok, "n_failed": n_failed, "n_diverged": n_div,
        "seeds": ",".join(str(int(s)) for s in sorted(group["seed"].dropna().unique())),
        "message": "; ".join(dict.fromkeys(str(m) for m in bad["message"].dropna())) if len(bad) else "",
        "run_ids": ",".join(group["run_id"]),
    }
    ok = group[group["status"] == "ok"]
    # runs whose validation scores still swung at the end (mtlbench.stability); older records lack the column
    row["n_unstable"] = int((ok["unstable"] == True).sum()) if "unstable" in ok else 0  # noqa: E712 (nullable)
    for spec in specs:
        col = spec.source(selection)
        values = ok[col] * spec.scale if col in ok else pd.Series(dtype=float)
        mean, std, n = _stats(values)
        row[f"{spec.name}_mean"], row[f"{spec.name}_std"], row[f"{spec.name}_n"] = mean, std, n
        finite = _finite(values)   # the range over seeds, of the values the mean is taken over
        row[f"{spec.name}_min"], row[f"{spec.name}_max"] = finite.min(), finite.max()
    return row


def aggregate_cells(runs: pd.DataFrame, specs: list[MetricSpec], selection: str = "best") -> pd.DataFrame:
    """One row per grid cell: status, seed counts and per metric ``<m>_mean``, ``<m>_std``, ``<m>_n``, ``<m>_min``,
    ``<m>_max`` (over the seeds that finished ok)."""
    mtl = runs[runs["kind"] == "mtl"]
    cols = [*CELL_KEY, "status", "n_runs", "n_ok", "n_failed", "n_diverged", "n_unstable", "seeds", "message",
            "run_ids"] + \
        [f"{s.name}_{k}" for s in specs for k in ("mean", "std", "n", "min", "max")]
    if mtl.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, group in mtl.groupby(list(CELL_KEY), sort=False, dropna=False):
        rows.append({**dict(zip(CELL_KEY, key)), **_summarise(group, specs, selection)})
    return pd.DataFrame(rows, columns=cols)


def aggregate_fastcar(runs: pd.DataFrame, specs: list[MetricSpec], selection: str = "best") -> dict[str, Any] | None:
    fc = runs[runs["kind"] == "fastcar"]
    if fc.empty:
        return None
    return _summarise(fc, specs, selection)


#: the stability measure's columns (mtlbench.stability), in points
SPREADS = (("val_accuracy_spread", "val. accuracy spread"), ("val_mape_spread", "val. MAPE spread"))


def aggregate_ablation(results: Results, specs: list[MetricSpec], selection: str = "best") -> pd.DataFrame:
    """One row per run (FastCAR, or a grid cell) and setting of a spec's [ablation]: the spec's own setting first
    (``setting`` "spec"), then each change by name; test metrics and the stability measure as mean, sample std and n over
    seeds, and how many runs were unstable. Empty without ablation runs."""
    if results.ablation.empty:
        return pd.DataFrame()
    both = pd.concat([results.runs.assign(setting="spec"), results.ablation], ignore_index=True)
    both["run"] = [cell_name(None) if k == "fastcar" else cell_name(a, w, d, sc if sc not in (None, "none") else None)
                   for k, a, w, d, sc in zip(both["kind"], both["architecture"], both["weighting"], both["decoder"],
                                             both["target_scaling"])]
    both = both[both["run"].isin(set(both.loc[both["setting"] != "spec", "run"]))]
    rows = []
    for (run, setting), group in both.groupby(["run", "setting"], sort=False):
        row = {"run": run, "setting": setting, **_summarise(group, specs, selection)}
        ok = group[group["status"] == "ok"]
        for col, _ in SPREADS:
            row[f"{col}_mean"], row[f"{col}_std"], row[f"{col}_n"] = _stats(ok[col] if col in ok else pd.Series())
        rows.append(row)
    out = pd.DataFrame(rows)
    # the spec's own setting first, then the changes by name: the same order however the runs were recorded
    settings = {s: i for i, s in enumerate(["spec", *sorted(set(results.ablation["setting"]))])}
    runs = {r: i for i, r in enumerate(dict.fromkeys(sorted(out["run"], key=lambda r: r != cell_name(None))))}
    return out.sort_values(["run", "setting"], key=lambda c: c.map(settings if c.name == "setting" else runs),
                           kind="stable").reset_index(drop=True)


def axes_of(results: Results) -> Axes:
    mtl = results.mtl
    return Axes(architectures=ordered("architecture", mtl["architecture"]),
                weightings=ordered("weighting", mtl["weighting"]),
                decoders=ordered("decoder", mtl["decoder"]),
                scalings=ordered("target_scaling", mtl["target_scaling"]),
                seeds=sorted(int(s) for s in mtl["seed"].dropna().unique()))


# -- what is missing ------------------------------------------------------------------------------------------------
def _first_line(text: Any, limit: int = 200) -> str:
    s = " ".join(str(text).split()) if text is not None and not (isinstance(text, float) and np.isnan(text)) else ""
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _seed(v: Any) -> str:
    return str(int(v)) if v is not None and pd.notna(v) else "?"


def _listing(items: list[str], limit: int = 25) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; ... and {len(items) - limit} more" if len(items) > limit else "")


def _not_run(cells: pd.DataFrame, axes: Axes) -> list[tuple[str, str, str, str]]:
    present = set(zip(*(cells[k] for k in CELL_KEY)))
    return [c for c in axes.expected if c not in present]


def coverage_counts(cells: pd.DataFrame, axes: Axes, fastcar: dict[str, Any] | None) -> dict[str, int]:
    """Cells ``not run``, ``failed`` and ``diverged``: grid cells by their status over seeds (as in the ``grid:``
    line), and FastCAR as one cell when it ran and no run of it finished ok. Notes are not counted."""
    counts = {"not run": 0, "failed": 0, "diverged": 0}
    if not cells.empty:
        counts["not run"] = len(_not_run(cells, axes))
        for status in ("failed", "diverged"):
            counts[status] = int((cells["status"] == status).sum())
    if fastcar is not None and fastcar["status"] in counts:
        counts[fastcar["status"]] += 1
    return counts


def find_missing(results: Results, cells: pd.DataFrame, axes: Axes) -> list[str]:
    """Human-readable messages: grid coverage, cells not run, failed / diverged runs, incomplete seeds, FastCAR."""
    msgs: list[str] = list(results.notes)
    where = ", ".join(str(f) for f in results.folders)
    several_scalings = len(axes.scalings) > 1

    def name(a: str, w: str, d: str, s: str) -> str:
        return cell_name(a, w, d, s if several_scalings else None)

    fc = results.fastcar
    if fc.empty:
        msgs.append(f"no FastCAR run in {where}: the FastCAR column, colour-bar marks and figures are left out")
    else:
        for _, r in fc[fc["status"] != "ok"].iterrows():
            epoch = f", epoch {int(r['failed_epoch'])}" if pd.notna(r.get("failed_epoch")) else ""
            msgs.append(f"FastCAR {r['status']} (seed {_seed(r['seed'])}{epoch}): {_first_line(r['message'])}")
        if (fc["status"] != "ok").all():
            msgs.append("no FastCAR run finished ok: the FastCAR column is empty")

    if cells.empty:
        msgs.append(f"no MTL grid runs in {where}: the heatmaps, the accuracy-MAPE scatter and the MTL columns of "
                    f"the summary are skipped")
        return msgs

    expected = axes.expected
    not_run = _not_run(cells, axes)
    n_failed = int((cells["status"] == "failed").sum())
    n_div = int((cells["status"] == "diverged").sum())
    n_na = int((cells["status"] == "not_applicable").sum())

    def n(count: int, word: str) -> str:
        return f"{count} {word}{'' if count == 1 else 's'}"

    shape = " x ".join([n(len(axes.architectures), "architecture"), n(len(axes.weightings), "weighting"),
                        n(len(axes.decoders), "decoder")] +
                       ([n(len(axes.scalings), "target scaling")] if several_scalings else []))
    msgs.insert(len(results.notes), f"grid: {len(expected) - len(not_run)} of {len(expected)} cells run ({shape}); "
                                    f"{len(not_run)} not run, {n_failed} failed, {n_div} diverged"
                                    + (f", {n_na} not applicable" if n_na else ""))
    for a, w, d, s in not_run:
        msgs.append(f"not run: {name(a, w, d, s)}")
    mtl = results.mtl
    for _, r in mtl[~mtl["status"].isin(("ok", "not_applicable"))].iterrows():
        epoch = f", epoch {int(r['failed_epoch'])}" if pd.notna(r.get("failed_epoch")) else ""
        msgs.append(f"{r['status']}: {name(r['architecture'], r['weighting'], r['decoder'], r['target_scaling'])} "
                    f"(seed {_seed(r['seed'])}{epoch}): {_first_line(r['message'])}")
    if len(axes.seeds) > 1:
        short = []
        for _, c in cells.iterrows():
            have = {int(s) for s in str(c["seeds"]).split(",") if s}
            lack = [s for s in axes.seeds if s not in have]
            if lack:
                short.append(f"{name(c['architecture'], c['weighting'], c['decoder'], c['target_scaling'])} "
                             f"(no seed {', '.join(map(str, lack))})")
        if short:
            msgs.append(f"seeds incomplete: {len(short)} cell(s) lack some of the seeds {axes.seeds}: "
                        + _listing(short))
    for kind, have in (("architecture", axes.architectures), ("weighting", axes.weightings)):
        reg = registry_names(kind)
        if reg:
            ran = {base_architecture(h).lower() for h in have}   # MTAL[rho=0.4] is a variant of MTAL
            absent = [n for n in reg if n.lower() not in ran]
            if absent:
                msgs.append(f"{kind}s never run in these results ({len(absent)} of {len(reg)}): {', '.join(absent)}")
    return msgs


# -- run configuration / environment --------------------------------------------------------------------------------
ENV_FIELDS = ("device", "torch_version", "torchvision_version", "libmtl_version", "python_version",
              "mtlbench_version", "git_commit", "hostname", "concurrency")
PROTOCOL_FIELDS = ("dataset", "data_fingerprint", "num_classes", "n_train", "n_valid", "n_test", "epochs",
                   "batch_size", "img_size", "pretrained", "sweep")


def value_counts(runs: pd.DataFrame, fields: Iterable[str]) -> list[tuple[str, str]]:
    """(field, "value (n runs); other (m runs)") for each field, so mixed environments show up."""
    out = []
    for f in fields:
        if f not in runs:
            continue
        counts = runs[f].astype("string").fillna("-").value_counts()
        if len(counts) == 1:
            out.append((f, str(counts.index[0])))
        else:
            out.append((f, "; ".join(f"{v} ({n} runs)" for v, n in counts.items())))
    return out


def example_config(runs: pd.DataFrame) -> tuple[str, str]:
    """The config_json of one run (an ok MTL run if any), pretty-printed, and which run it is."""
    order = runs.assign(_k=(runs["kind"] != "mtl").astype(int) + (runs["status"] != "ok").astype(int) * 2)
    for _, r in order.sort_values("_k", kind="stable").iterrows():
        text = r.get("config_json")
        if isinstance(text, str) and text:
            try:
                return r["run_id"], json.dumps(json.loads(text), indent=2, sort_keys=True)
            except ValueError:
                return r["run_id"], text
    return "", ""
