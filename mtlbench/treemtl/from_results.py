"""TreeMTL's pair table from mtlbench's own results, the layouts ranked under a compute budget, a sweep spec for
the missing two-task models, and the verification of the top layouts by training them.

mtlbench has two tasks, ``cls`` (task 0) and ``reg`` (task 1), so there is one pair and B + 1 = 6 two-task models
(paper Sec. 3.1), the registered architectures ``Tree-b0`` .. ``Tree-b4`` and ``HPS`` (= branch point 5):

- each metric of a run is the mean of its LAST 3 validation evaluations (``epochs`` table; never a test metric);
- Δt_i(b) of one run = mean over task i's metrics of sign × (m − m̄₀) / |m̄₀| × 100, where m̄₀ is the metric's
  mean over the seeds of the b = 0 model (independent trunks) and sign is +1 when higher is better, −1 when lower
  is (so Δt > 0 is always an improvement). The pair table's Δt_i(b) is the mean over seeds of the runs' Δt (the
  relative improvement of the seed-averaged metric); std / min / max over seeds are kept for display. At b = 0 the
  mean is 0 by construction and the spread is the baseline's seed noise;
- only runs whose status is ``ok`` count; every (architecture, seed) over the seeds seen lacking one is reported.

Runs the verification trains are recorded with the sweep name :data:`VERIFY_SWEEP` and kept out of the pair table.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlbench.config import TARGET_SCALINGS, TrainingProtocol
from mtlbench.errors import ConfigError
from mtlbench.treemtl.estimate import (
    PairTable,
    estimate,
    layout_cost,
    svd_entropy,
    task_weights,
)
from mtlbench.treemtl.layouts import Layout, branch_block, enumerate_layouts, layout_key
from mtlbench.treemtl.tables import TASKS

N_COARSE = 5                     # stem, layer1 .. layer4
N_FINE = 9                       # stem + 8 basic blocks
COARSE_ARCHITECTURES = ("Tree-b0", "Tree-b1", "Tree-b2", "Tree-b3", "Tree-b4", "HPS")   # index = branch point
LAST_EVALS = 3
VERIFY_SWEEP = "treemtl-verify"
#: Seeds of a plan when the folders hold no run of the pair at all.
DEFAULT_SEEDS = (0,)
BLOCKS = ("coarse", "fine")


# -- metrics --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    name: str
    column: str      # an ``epochs`` column
    sign: int        # +1: higher is better, -1: lower is better

    @property
    def label(self) -> str:
        return f"{self.name}{'+' if self.sign > 0 else '-'}"


TASK_METRICS: dict[str, dict[str, Metric]] = {
    "cls": {"accuracy": Metric("accuracy", "val_accuracy", +1)},
    "reg": {"mae": Metric("mae", "val_mae", -1), "mape": Metric("mape", "val_mape", -1),
            "mse": Metric("mse", "val_mse", -1)},
}
DEFAULT_METRICS = {"cls": ("accuracy",), "reg": ("mae", "mape")}


def parse_metrics(cls: str | Sequence[str] | None = None, reg: str | Sequence[str] | None = None
                  ) -> dict[str, tuple[Metric, ...]]:
    """Each task's metrics from names (a comma-separated string or a list); None keeps the default."""
    out = {}
    for task, given in (("cls", cls), ("reg", reg)):
        names = DEFAULT_METRICS[task] if given is None else \
            [n.strip().lower() for n in (given.split(",") if isinstance(given, str) else given) if n.strip()]
        if not names:
            raise ConfigError(f"--{task}-metrics is empty; choose from: {', '.join(TASK_METRICS[task])}")
        for n in names:
            if n not in TASK_METRICS[task]:
                raise ConfigError(f"--{task}-metrics: unknown metric {n!r} for task {task}; choose from: "
                                  f"{', '.join(TASK_METRICS[task])}")
        out[task] = tuple(TASK_METRICS[task][n] for n in dict.fromkeys(names))
    return out


# -- selecting the pair's runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MissingCell:
    architecture: str
    branch_point: int
    seed: int
    status: str          # "not run", or the recorded status: failed | diverged | not_applicable
    message: str = ""

    def describe(self) -> str:
        why = "" if self.status == "not run" else f": {self.status}" + (f" ({self.message})" if self.message else "")
        return f"{self.architecture} (b = {self.branch_point}) seed {self.seed}{why or ': not run'}"


@dataclass
class Selection:
    """The pair's runs of one weighting / decoder / target scaling, merged over results folders."""

    folders: list[Path]
    weighting: str
    decoder: str
    target_scaling: str
    runs: pd.DataFrame                 # every run of the 6 architectures (any status), verification runs excluded
    epochs: pd.DataFrame               # their epochs
    verify_runs: pd.DataFrame          # runs of earlier verifications (sweep == VERIFY_SWEEP)
    seeds: tuple[int, ...]
    missing: list[MissingCell]
    protocol: TrainingProtocol
    protocol_source: str               # where the protocol came from, one line
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "ok"]

    @property
    def label(self) -> str:
        return f"{self.weighting}/{self.decoder}" + (f"/{self.target_scaling}" if self.target_scaling != "none" else "")

    def ok_points(self) -> list[int]:
        """Branch points with at least one ok run."""
        have = set(self.ok["architecture"])
        return [b for b, a in enumerate(COARSE_ARCHITECTURES) if a in have]


def canonical_name(kind: str, name: str) -> str:
    """A weighting or decoder name as its registry spells it; an unknown one is a ConfigError naming the choices."""
    if kind == "weighting":
        import mtlbench.methods  # noqa: F401  (fills the registries)
        from mtlbench.methods.registry import WEIGHTINGS as reg
    else:
        from mtlbench.models.decoders import DECODERS as reg
    return reg.canonical(name)


def _protocol_of(runs: pd.DataFrame) -> tuple[TrainingProtocol, str] | None:
    """The most common protocol in the runs' config_json, and a line saying so; None when none has one."""
    protos: Counter[str] = Counter()
    for text in runs["config_json"].dropna():
        try:
            p = json.loads(text).get("protocol")
        except (ValueError, AttributeError):
            continue
        if isinstance(p, dict):
            protos[json.dumps(p, sort_keys=True)] += 1
    if not protos:
        return None
    known = {f.name for f in fields(TrainingProtocol)}
    text, n = protos.most_common(1)[0]
    proto = TrainingProtocol(**{k: v for k, v in json.loads(text).items() if k in known})
    more = f" ({len(protos)} protocols differ among them: the most common is used)" if len(protos) > 1 else ""
    return proto, f"the protocol of {n} of {sum(protos.values())} existing runs{more}"


def _holds_no_runs(folder: Path) -> bool:
    """No such folder yet, or a results folder without a run (planning starts from nothing)."""
    from mtlbench.records.store import ResultsStore

    if not folder.exists():
        return True
    return folder.is_dir() and ResultsStore(folder, create=False).read("runs").empty


def select_runs(folders: Sequence[Path | str], weighting: str = "EW", decoder: str = "decoder1",
                target_scaling: str = "none", *, allow_empty: bool = False) -> Selection:
    """Read and merge the results folders and pick the pair's runs. ``allow_empty`` (planning): no run of the pair
    is fine, the plan then asks for every cell; otherwise it is a ConfigError naming what the folders hold."""
    from mtlbench.report.data import load_results

    weighting = canonical_name("weighting", weighting)
    decoder = canonical_name("decoder", decoder)
    if target_scaling not in TARGET_SCALINGS:
        raise ConfigError(f"unknown target scaling {target_scaling!r}; choose one of: {', '.join(TARGET_SCALINGS)}")
    paths = [Path(f) for f in folders]
    if allow_empty and paths and all(_holds_no_runs(f) for f in paths):
        from mtlbench.records.schema import empty

        runs, epochs = empty("runs").to_pandas(), empty("epochs").to_pandas()
        notes = [f"{', '.join(map(str, paths))}: no runs yet (or no such folder): every cell is planned"]
        where = ", ".join(str(f) for f in paths)
    else:
        results = load_results(paths)
        runs, epochs, notes = results.runs, results.epochs, list(results.notes)
        where = ", ".join(str(f) for f in results.folders)
    arch_of = {a.lower(): a for a in COARSE_ARCHITECTURES}
    mtl = runs[runs["kind"] == "mtl"].copy()
    mtl["architecture"] = [arch_of.get(str(a).lower(), a) for a in mtl["architecture"]]
    pair = mtl[mtl["architecture"].isin(COARSE_ARCHITECTURES)]
    chosen = pair[(pair["weighting"].str.lower() == weighting.lower()) & (pair["decoder"].str.lower() == decoder.lower())
                  & (pair["target_scaling"].fillna("none") == target_scaling)]
    is_verify = chosen["sweep"] == VERIFY_SWEEP
    verify_runs, chosen = chosen[is_verify], chosen[~is_verify]
    if chosen.empty and not allow_empty:
        combos = sorted({f"{w}/{d}" + (f"/{s}" if s != "none" else "") for w, d, s in
                         zip(pair["weighting"], pair["decoder"], pair["target_scaling"].fillna("none"))})
        have = f"they hold the pair models for: {', '.join(combos)}" if combos else \
            "they hold no run of the pair models (Tree-b0 .. Tree-b4, HPS)"
        raise ConfigError(f"no run of {weighting}/{decoder} (target scaling {target_scaling}) of the pair models in "
                          f"{where}; {have}; `mtlbench recommend ... --plan` writes the sweep spec to run them")
    seeds = tuple(sorted({int(s) for s in chosen["seed"].dropna()})) or DEFAULT_SEEDS
    missing = []
    for b, arch in enumerate(COARSE_ARCHITECTURES):
        for seed in seeds:
            rows = chosen[(chosen["architecture"] == arch) & (chosen["seed"] == seed)]
            if (rows["status"] == "ok").any():
                continue
            if rows.empty:
                missing.append(MissingCell(arch, b, seed, "not run"))
            else:
                r = rows.iloc[0]
                msg = " ".join(str(r["message"]).split())[:160] if isinstance(r.get("message"), str) else ""
                missing.append(MissingCell(arch, b, seed, str(r["status"]), msg))
    found = _protocol_of(chosen) or _protocol_of(mtl)
    if found is None:
        proto = TrainingProtocol()
        source = "no run records a protocol: mtlbench's default protocol (paper: 100 epochs, batch 32, 224 px)"
    else:
        proto, source = found
    return Selection(folders=paths, weighting=weighting, decoder=decoder, target_scaling=target_scaling,
                     runs=chosen.reset_index(drop=True),
                     epochs=epochs[epochs["run_id"].isin(set(chosen["run_id"]))].reset_index(drop=True),
                     verify_runs=verify_runs.reset_index(drop=True), seeds=seeds, missing=missing,
                     protocol=proto, protocol_source=source, notes=notes)


# -- the pair table -------------------------------------------------------------------------------------------------
def run_metrics(epochs: pd.DataFrame, run_ids: Sequence[str], metrics: dict[str, tuple[Metric, ...]]
                ) -> pd.DataFrame:
    """One row per run: each metric's mean over the run's last :data:`LAST_EVALS` validation evaluations (the
    epochs rows with the highest epoch numbers). A metric null in any of them is a ConfigError naming the column
    (records written before ``val_mae`` existed have it null)."""
    cols = list(dict.fromkeys(m.column for ms in metrics.values() for m in ms))
    by_run = {rid: g.sort_values("epoch") for rid, g in epochs.groupby("run_id", sort=False)}
    rows, lacking = [], {c: [] for c in cols}
    for rid in run_ids:
        tail = by_run.get(rid, epochs.iloc[:0]).tail(LAST_EVALS)
        row: dict[str, Any] = {"run_id": rid, "n_evals": len(tail)}
        for c in cols:
            v = pd.to_numeric(tail[c], errors="coerce") if c in tail else pd.Series(dtype=float)
            if tail.empty or v.isna().any():
                lacking[c].append(rid)
                row[c] = float("nan")
            else:
                row[c] = float(v.mean())
        rows.append(row)
    for c, rids in lacking.items():
        if not rids:
            continue
        hint = ("records written before the column existed; rerun those runs with this mtlbench or leave the "
                "metric out (--reg-metrics mape)") if c == "val_mae" else "leave the metric out or rerun those runs"
        if len(rids) == len(run_ids):
            raise ConfigError(f"epochs.{c} is null in every selected run ({len(rids)} runs): {hint}")
        raise ConfigError(f"epochs.{c} is null in the last {LAST_EVALS} validation evaluations of {len(rids)} of "
                          f"{len(run_ids)} selected runs (e.g. {', '.join(rids[:3])}): {hint}")
    return pd.DataFrame(rows)


def delta_t(values: dict[str, float], baseline: dict[str, float], metrics: Sequence[Metric]) -> float:
    """Δt of one task: mean over its metrics of sign × (m − m̄₀) / |m̄₀| × 100."""
    return float(np.mean([m.sign * (values[m.column] - baseline[m.column]) / abs(baseline[m.column]) * 100
                          for m in metrics]))


@dataclass
class PairResult:
    selection: Selection
    metrics: dict[str, tuple[Metric, ...]]
    baseline: dict[str, float]           # epochs column -> mean over the b = 0 seeds
    per_run: pd.DataFrame                # run_id, architecture, branch_point, seed, metric columns, dt_cls, dt_reg
    rows: list[dict]                     # the pair_table rows (tables.PAIR_TABLE)
    table: PairTable                     # NaN at branch points without an ok run

    @property
    def missing_points(self) -> list[int]:
        return [b for b in range(N_COARSE + 1) if np.isnan(self.table.delta[(0, 1)][b]).any()]

    def metric_label(self, task: str) -> str:
        return ",".join(m.label for m in self.metrics[task])


def build_pair_table(sel: Selection, metrics: dict[str, tuple[Metric, ...]] | None = None) -> PairResult:
    """Δt of both tasks at every branch point, averaged over seeds (see the module docstring)."""
    metrics = metrics or parse_metrics()
    ok = sel.ok
    base_runs = ok[ok["architecture"] == COARSE_ARCHITECTURES[0]]
    where = ", ".join(str(f) for f in sel.folders)
    if base_runs.empty:
        b0 = sel.runs[sel.runs["architecture"] == COARSE_ARCHITECTURES[0]]
        if not b0.empty and (b0["status"] == "not_applicable").all():
            raise ConfigError(f"Tree-b0 is not applicable with weighting {sel.weighting} (it shares no parameters to "
                              f"combine gradients of), so {sel.label} has no b = 0 model to compare with; build the "
                              f"pair table with a loss weighting such as EW")
        why = "; ".join(c.describe() for c in sel.missing if c.branch_point == 0)
        raise ConfigError(f"no Tree-b0 run (b = 0, independent trunks) finished ok for {sel.label} in {where}: Δt "
                          f"has nothing to compare to ({why}); `mtlbench recommend ... --plan` writes the sweep spec")
    per = run_metrics(sel.epochs, list(ok["run_id"]), metrics)
    per = ok[["run_id", "architecture", "seed"]].merge(per, on="run_id")
    per["branch_point"] = [COARSE_ARCHITECTURES.index(a) for a in per["architecture"]]
    base = per[per["branch_point"] == 0]
    baseline = {c: float(base[c].mean()) for ms in metrics.values() for c in (m.column for m in ms)}
    for c, v in baseline.items():
        if not math.isfinite(v) or v == 0:
            raise ConfigError(f"the b = 0 (Tree-b0) mean of epochs.{c} is {v}: a relative improvement over it is "
                              f"undefined; leave that metric out")
    for task in TASKS:
        per[f"dt_{task}"] = [delta_t(dict(r), baseline, metrics[task]) for _, r in per.iterrows()]
    delta = np.full((N_COARSE + 1, 2), np.nan)
    rows = []
    for b, arch in enumerate(COARSE_ARCHITECTURES):
        at = per[per["branch_point"] == b]
        for i, task in enumerate(TASKS):
            v = at[f"dt_{task}"].to_numpy(float)
            n = len(v)
            if n:
                delta[b, i] = v.mean()
            rows.append({"weighting": sel.weighting, "decoder": sel.decoder, "target_scaling": sel.target_scaling,
                         "task": task, "partner": TASKS[1 - i], "branch_point": b, "architecture": arch,
                         "metrics": ",".join(m.label for m in metrics[task]),
                         "dt_mean": float(v.mean()) if n else None,
                         "dt_std": float(v.std(ddof=1)) if n > 1 else None,
                         "dt_min": float(v.min()) if n else None, "dt_max": float(v.max()) if n else None,
                         "n_seeds": n, "seeds": ",".join(str(int(s)) for s in sorted(at["seed"]))})
    return PairResult(sel, metrics, baseline, per.reset_index(drop=True), rows,
                      PairTable(n_tasks=2, n_blocks=N_COARSE, delta={(0, 1): delta}))


# -- ranking under a budget -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """At most one of: ``backbones`` C (MACs <= C x one trunk's MACs, Table 2's "Com. Budget"), ``gmacs`` G (MACs
    <= G x 1e9) or ``mparams`` P (parameters <= P x 1e6); none: every layout fits. Backbone only (heads apart)."""

    backbones: float | None = None
    gmacs: float | None = None
    mparams: float | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if len(given) > 1:
            raise ConfigError(f"give one budget, not {len(given)}: "
                              + ", ".join(f"--{'budget-backbones' if k == 'backbones' else 'max-' + k} {v:g}"
                                          for k, v in given.items()))
        for k, v in given.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"the {k} budget must be a positive number, got {v!r}")

    @property
    def label(self) -> str:
        if self.backbones is not None:
            return f"MACs <= {self.backbones:g} backbones"
        if self.gmacs is not None:
            return f"MACs <= {self.gmacs:g} G"
        if self.mparams is not None:
            return f"params <= {self.mparams:g} M"
        return "none"

    def fits(self, macs: float, params: float, one_backbone_macs: float) -> bool:
        tol = 1 + 1e-9
        if self.backbones is not None:
            return macs <= self.backbones * one_backbone_macs * tol
        if self.gmacs is not None:
            return macs <= self.gmacs * 1e9 * tol
        if self.mparams is not None:
            return params <= self.mparams * 1e6 * tol
        return True


@dataclass(frozen=True)
class RankedLayout:
    rank: int
    layout: Layout
    key: str
    architecture: str | None
    estimate: tuple[float, ...]
    score: float
    macs: float
    params: float
    macs_pct: float
    params_pct: float
    fits: bool
    recommended: bool


@dataclass
class Ranking:
    weights: np.ndarray
    svde: np.ndarray
    budget: Budget
    blocks: str
    top_k: int
    img_size: int
    one_backbone_macs: float
    one_backbone_params: float
    layouts: list[RankedLayout]          # every layout down to the top_k-th one that fits, by score

    @property
    def recommended(self) -> list[RankedLayout]:
        return [r for r in self.layouts if r.recommended]


def block_costs(img_size: int, blocks: str = "coarse") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-block MACs and parameters of mtlbench's ResNet-18 trunk at ``img_size`` px, measured on the model by
    :func:`mtlbench.treemtl.costs.stage_costs` (imported here, lazily: it builds a model with torch)."""
    if blocks != "coarse":
        raise ConfigError(f"costs are measured per ResNet stage (coarse blocks); got blocks={blocks!r}")
    from mtlbench.treemtl.costs import stage_costs

    stages = stage_costs(img_size=img_size)
    return tuple(float(m) for m in stages.macs), tuple(float(p) for p in stages.params)


def architecture_of(layout: Layout) -> str | None:
    """The registered two-task model of a 2-task layout with coarse blocks (Tree-bk, or HPS for b = 5)."""
    if len(layout) != N_COARSE or sum(len(g) for g in layout[0]) != 2:
        return None
    return COARSE_ARCHITECTURES[branch_block(layout, 0, 1)]


def rank_layouts(pair: PairResult, *, budget: Budget | None = None, top_k: int = 3, blocks: str = "coarse",
                 costs: tuple[Sequence[float], Sequence[float]] | None = None) -> Ranking:
    """Every layout scored by S (Eq. 2) with the SVDE task weights (Eq. 1), ranked, costed and checked against the
    budget; the ``top_k`` best that fit are recommended. ``costs`` (per-block MACs, params) defaults to the trunk
    measured at the runs' image side."""
    budget = budget or Budget()
    if blocks not in BLOCKS:
        raise ConfigError(f"--blocks must be one of {', '.join(BLOCKS)}, got {blocks!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k must be a positive integer, got {top_k!r}")
    table = pair.table
    if blocks == "fine" and table.n_blocks != N_FINE:
        raise ConfigError(f"--blocks fine needs a pair table with {N_FINE + 1} branch points (stem + 8 basic "
                          f"blocks); this one has the {table.n_blocks + 1} coarse ones (Tree-b0 .. Tree-b4, HPS): "
                          f"use --blocks coarse")
    gaps = pair.missing_points
    if gaps:
        names = ", ".join(f"{COARSE_ARCHITECTURES[b]} (b = {b})" for b in gaps)
        raise ConfigError(f"the pair table of {pair.selection.label} has no ok run of {names}: layouts branching "
                          f"there cannot be estimated; `mtlbench recommend ... --plan` writes the sweep spec")
    svde = np.array([svd_entropy(table.sequence(i, 1 - i)[1:]) for i in range(2)])
    w = task_weights(table)
    if not np.isfinite(w).all():   # both sequences maximally irregular: no task is more reliable than the other
        w = np.full(2, 0.5)
    img_size = pair.selection.protocol.img_size
    macs_b, params_b = costs if costs is not None else block_costs(img_size, "coarse")
    scored = []
    for lay in enumerate_layouts(table.n_tasks, table.n_blocks):
        est = estimate(lay, table)
        cost = layout_cost(lay, macs_b, params_b)
        scored.append((lay, tuple(float(e) for e in est), float(np.dot(w, est)), cost))
    scored.sort(key=lambda s: -s[2])   # stable: ties keep enumeration order
    out, n_rec = [], 0
    for rank, (lay, est, s, cost) in enumerate(scored, 1):
        if n_rec >= top_k:
            break
        fits = budget.fits(cost.macs, cost.params, sum(macs_b))
        n_rec += fits
        out.append(RankedLayout(rank, lay, layout_key(lay), architecture_of(lay), est, s, cost.macs, cost.params,
                                cost.macs_pct, cost.params_pct, fits, fits))
    return Ranking(w, svde, budget, blocks, top_k, img_size, float(sum(macs_b)), float(sum(params_b)), out)


# -- rows of the written tables -------------------------------------------------------------------------------------
def weight_rows(pair: PairResult, ranking: Ranking) -> list[dict]:
    s = pair.selection
    return [{"weighting": s.weighting, "decoder": s.decoder, "target_scaling": s.target_scaling, "task": t,
             "svde": float(ranking.svde[i]), "weight": float(ranking.weights[i])} for i, t in enumerate(TASKS)]


def recommendation_rows(pair: PairResult, ranking: Ranking, verification: Verification | None = None) -> list[dict]:
    s = pair.selection
    rows = []
    for r in ranking.layouts:
        row = {"weighting": s.weighting, "decoder": s.decoder, "target_scaling": s.target_scaling,
               "blocks": ranking.blocks, "rank": r.rank, "layout_key": r.key, "architecture": r.architecture,
               **{f"dt_hat_{t}": r.estimate[i] for i, t in enumerate(TASKS)}, "score": r.score, "macs": r.macs,
               "params": r.params, "macs_pct": r.macs_pct, "params_pct": r.params_pct,
               "budget": ranking.budget.label, "fits": r.fits, "recommended": r.recommended}
        v = verification.results.get(r.key) if verification is not None else None
        if v is not None:
            row.update({"verified_run_id": v.run_id, "verified_seed": verification.seed,
                        "verified_status": v.status, "trained_score": v.score,
                        **{f"trained_dt_{t}": (v.dt[i] if v.dt else None) for i, t in enumerate(TASKS)}})
        rows.append(row)
    return rows


def write_tables(out: Path | str, pair: PairResult, ranking: Ranking | None = None,
                 verification: Verification | None = None) -> list[Path]:
    """``pair_table``, and with a ranking ``task_weights`` and ``recommendations``, into ``<out>/treemtl/``."""
    from mtlbench.treemtl.tables import write_table

    paths = [write_table(out, "pair_table", pair.rows)]
    if ranking is not None:
        paths.append(write_table(out, "task_weights", weight_rows(pair, ranking)))
        paths.append(write_table(out, "recommendations", recommendation_rows(pair, ranking, verification)))
    return paths


# -- planning the missing cells -------------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def plan_name(sel: Selection) -> str:
    raw = f"treemtl-pairs-{sel.weighting}-{sel.decoder}" + (f"-{sel.target_scaling}" if sel.target_scaling != "none"
                                                             else "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def plan_spec_text(sel: Selection, data: str = "default") -> str | None:
    """A sweep spec (TOML, :func:`mtlbench.sweep.spec.parse_spec` format) for the pair's missing cells: the
    architectures lacking a seed x the seeds lacking somewhere (the sweep skips the cells already finished); None
    when nothing is missing."""
    if not sel.missing:
        return None
    archs = [a for a in COARSE_ARCHITECTURES if any(c.architecture == a for c in sel.missing)]
    seeds = sorted({c.seed for c in sel.missing})
    recorded = [c for c in sel.missing if c.status != "not run"]
    proto = {k: v for k, v in asdict(sel.protocol).items() if v is not None}
    lines = [(f"# TreeMTL pair sweep for {sel.label}: the two-task models still missing "
              f"(written by `mtlbench recommend --plan`)."),
             f"# protocol: {sel.protocol_source}.",
             *(f"# missing: {c.describe()}" for c in sel.missing)]
    if recorded:
        lines.append("# cells recorded as failed or diverged run again only with `mtlbench sweep ... --retry-failed`;"
                     " not_applicable ones never train")
    lines += [f"name = {_toml_value(plan_name(sel))}",
              f"description = {_toml_value(f'TreeMTL two-task models (Tree-b0..Tree-b4, HPS) for {sel.label}')}",
              "", "[data]", f"source = {_toml_value(data)}", "", "[protocol]",
              *(f"{k} = {_toml_value(v)}" for k, v in proto.items()), "", "[axes]",
              f"architectures = {_toml_value(archs)}", f"weightings = {_toml_value([sel.weighting])}",
              f"decoders = {_toml_value([sel.decoder])}", f"target_scaling = {_toml_value([sel.target_scaling])}",
              f"seeds = {_toml_value(seeds)}", "", "[fastcar]", "enabled = false", ""]
    return "\n".join(lines)


def write_plan(sel: Selection, out: Path | str, data: str = "default") -> Path | None:
    """Write :func:`plan_spec_text` to ``<out>/treemtl/plan.toml`` atomically; None when nothing is missing."""
    from mtlbench.atomic import write_text_atomic
    from mtlbench.treemtl.tables import SUBDIR

    text = plan_spec_text(sel, data)
    if text is None:
        return None
    path = Path(out) / SUBDIR / "plan.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


# -- verification ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    run_id: str
    status: str
    dt: tuple[float, ...] | None
    score: float | None


@dataclass
class Verification:
    seed: int
    results: dict[str, Trained]          # layout key -> its trained run
    spearman: float | None
    pearson: float | None
    n: int                               # layouts with a trained score
    notes: list[str] = field(default_factory=list)


def verify_seed(sel: Selection) -> int:
    """The seed the verification trains with: one past every seed of the pair table (so reruns reuse it)."""
    return max(sel.seeds) + 1


def verification_spec(pair: PairResult, ranking: Ranking, data: str = "default", device: str | None = None):
    from dataclasses import replace

    import mtlbench.methods  # noqa: F401
    from mtlbench.methods.registry import ARCHITECTURES
    from mtlbench.sweep.spec import SweepSpec

    sel = pair.selection
    archs = [r.architecture for r in ranking.recommended]
    if any(a is None for a in archs):
        raise ConfigError("--verify trains two-task coarse layouts only (Tree-b0 .. Tree-b4, HPS)")
    absent = [a for a in archs if a not in ARCHITECTURES]
    if absent:
        raise ConfigError(f"--verify: architecture(s) {', '.join(absent)} are not registered in this mtlbench")
    proto = sel.protocol if device is None else replace(sel.protocol, device=device)
    return SweepSpec(name=VERIFY_SWEEP, data={"source": data}, protocol=proto, architectures=tuple(archs),
                     weightings=(sel.weighting,), decoders=(sel.decoder,), target_scaling=(sel.target_scaling,),
                     seeds=(verify_seed(sel),), fastcar=None,
                     description=f"TreeMTL: train the top-{ranking.top_k} layouts of {sel.label} with an unused seed")


def correlations(pred: list[float], trained: list[float]) -> tuple[float | None, float | None, list[str]]:
    notes = []
    n = len(pred)
    if n < 2:
        return None, None, [f"{n} layout(s) with a trained score: no correlation (needs 2 or more; use --top-k)"]
    if len(set(pred)) < 2 or len(set(trained)) < 2:
        return None, None, ["the predicted or the trained scores are all equal: the correlations are undefined"]
    from scipy.stats import pearsonr, spearmanr

    sp = float(spearmanr(pred, trained).statistic)
    pe = float(pearsonr(pred, trained).statistic)
    if n == 2:
        notes.append("only 2 layouts: a correlation of 2 points is always +1 or -1")
    return sp, pe, notes


def verify(pair: PairResult, ranking: Ranking, folder: Path | str, *, data: str = "default",
           cache_dir: str | None = None, device: str | None = None, ui=None) -> Verification:
    """Train the recommended layouts (their Tree-bk models) once more, with :func:`verify_seed`, into ``folder``
    through the sweep driver; their trained Δt against the pair table's b = 0 baseline, the trained score with the
    same task weights, and the Spearman and Pearson correlations of predicted and trained scores."""
    from mtlbench.data.load import DataRef, load_data
    from mtlbench.records.store import ResultsStore
    from mtlbench.sweep.runner import run_sweep

    sel = pair.selection
    spec = verification_spec(pair, ranking, data, device)
    fps = {str(f) for f in sel.ok["data_fingerprint"].dropna()}
    if fps:
        table, _ = load_data(DataRef.from_spec_data(spec.data, spec.protocol.img_size, cache_dir), show_warnings=False)
        if table.fingerprint() not in fps:
            raise ConfigError(f"--verify: data {data!r} (fingerprint {table.fingerprint()}) is not the data of the "
                              f"pair table's runs ({', '.join(sorted(fps))}); pass their data set with --data")
    outcome = run_sweep(spec, Path(folder), cache_dir=cache_dir, ui=ui)
    store = ResultsStore(folder, create=False)
    runs = store.read("runs").set_index("run_id")
    epochs = store.read("epochs")
    by_arch = {c.config.architecture: c.run_id for c in outcome.plan.cells}
    results: dict[str, Trained] = {}
    pred, got = [], []
    notes = []
    w = ranking.weights
    for r in ranking.recommended:
        rid = by_arch[r.architecture]
        status = str(runs.loc[rid, "status"]) if rid in runs.index else "missing"
        dt = score = None
        if status == "ok":
            vals = run_metrics(epochs, [rid], pair.metrics).iloc[0].to_dict()
            dt = tuple(delta_t(vals, pair.baseline, pair.metrics[t]) for t in TASKS)
            score = float(np.dot(w, dt))
            pred.append(r.score)
            got.append(score)
        else:
            notes.append(f"{r.architecture} seed {spec.seeds[0]}: {status}; left out of the correlations")
        results[r.key] = Trained(rid, status, dt, score)
    sp, pe, more = correlations(pred, got)
    return Verification(spec.seeds[0], results, sp, pe, len(pred), notes + more)


__all__ = [
    "BLOCKS",
    "COARSE_ARCHITECTURES",
    "DEFAULT_METRICS",
    "LAST_EVALS",
    "TASK_METRICS",
    "VERIFY_SWEEP",
    "Budget",
    "Metric",
    "MissingCell",
    "PairResult",
    "RankedLayout",
    "Ranking",
    "Selection",
    "Verification",
    "block_costs",
    "build_pair_table",
    "delta_t",
    "parse_metrics",
    "plan_spec_text",
    "rank_layouts",
    "recommendation_rows",
    "run_metrics",
    "select_runs",
    "verification_spec",
    "verify",
    "verify_seed",
    "write_plan",
    "write_tables",
]
