"""The Parquet tables ``mtlbench recommend`` writes into ``<out>/treemtl/``, their schemas in one place.

- ``pair_table``: one row per task, partner task and branch point b (0 = independent trunks ... 5 = HPS): Δt of
  the task (% improvement over its b = 0 model, averaged over the task's metrics, each signed by its direction)
  as mean, sample std (null with one seed), min and max over seeds, and the number of seeds.
- ``task_weights``: one row per task: the mean SVD entropy of its Δt sequence over b = 1..B and its normalised
  weight (paper Eq. 1).
- ``recommendations``: the ranked layouts (all layouts down to the k-th that fits the budget): the estimates
  Δt̂ per task, the score S (Eq. 2), backbone MACs / parameters and their % change against independent trunks, the
  budget, whether the layout fits and is recommended, and, after ``--verify``, the verifying run and its trained
  Δt and score (null unless verified).

Each file is written atomically (:func:`mtlbench.atomic.atomic_path`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtlbench.atomic import atomic_path

TASKS = ("cls", "reg")
SUBDIR = "treemtl"

_CONTEXT = [pa.field("weighting", pa.string(), nullable=False), pa.field("decoder", pa.string(), nullable=False),
            pa.field("target_scaling", pa.string(), nullable=False)]

PAIR_TABLE = pa.schema([
    *_CONTEXT,
    pa.field("task", pa.string(), nullable=False),              # cls | reg
    pa.field("partner", pa.string(), nullable=False),           # the other task of the two-task model
    pa.field("branch_point", pa.int64(), nullable=False),       # shared blocks: 0 = independent, 5 = HPS
    pa.field("architecture", pa.string(), nullable=False),      # Tree-b0 .. Tree-b4, HPS
    pa.field("metrics", pa.string(), nullable=False),           # e.g. "mae-,mape-" (sign: + higher is better)
    pa.field("dt_mean", pa.float64()),                          # %; null when no seed finished ok
    pa.field("dt_std", pa.float64()),                           # sample std over seeds (null with < 2 seeds)
    pa.field("dt_min", pa.float64()),
    pa.field("dt_max", pa.float64()),
    pa.field("n_seeds", pa.int64(), nullable=False),
    pa.field("seeds", pa.string(), nullable=False),             # e.g. "0,1,2"
])

TASK_WEIGHTS = pa.schema([
    *_CONTEXT,
    pa.field("task", pa.string(), nullable=False),
    pa.field("svde", pa.float64()),                             # mean over partners of SVDE(Δt(1..B))
    pa.field("weight", pa.float64()),                           # normalised: the weights sum to 1
])

RECOMMENDATIONS = pa.schema([
    *_CONTEXT,
    pa.field("blocks", pa.string(), nullable=False),            # coarse | fine
    pa.field("rank", pa.int64(), nullable=False),               # by score over all layouts, 1 = best
    pa.field("layout_key", pa.string(), nullable=False),        # mtlbench.treemtl.layouts.layout_key
    pa.field("architecture", pa.string()),                      # the registered model of the layout (2 tasks)
    *[pa.field(f"dt_hat_{t}", pa.float64()) for t in TASKS],    # estimated Δt per task, %
    pa.field("score", pa.float64()),                            # S = Σ w_i Δt̂_i
    pa.field("macs", pa.float64()),                             # backbone MACs at the runs' image side
    pa.field("params", pa.float64()),                           # backbone parameters
    pa.field("macs_pct", pa.float64()),                         # % change vs independent trunks
    pa.field("params_pct", pa.float64()),
    pa.field("budget", pa.string(), nullable=False),            # e.g. "MACs <= 1.5 backbones", "none"
    pa.field("fits", pa.bool_(), nullable=False),
    pa.field("recommended", pa.bool_(), nullable=False),        # among the top-k layouts that fit
    pa.field("verified_run_id", pa.string()),                   # --verify: the run that trained this layout
    pa.field("verified_seed", pa.int64()),
    pa.field("verified_status", pa.string()),
    *[pa.field(f"trained_dt_{t}", pa.float64()) for t in TASKS],
    pa.field("trained_score", pa.float64()),
])

SCHEMAS: dict[str, pa.Schema] = {"pair_table": PAIR_TABLE, "task_weights": TASK_WEIGHTS,
                                 "recommendations": RECOMMENDATIONS}


def to_arrow(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) as a table of exactly ``name``'s schema; a missing key is null, an unknown key an error."""
    schema = SCHEMAS[name]
    known = set(schema.names)
    for row in rows:
        extra = set(row) - known
        if extra:
            raise KeyError(f"{name}: unknown column(s) {sorted(extra)}")
    return pa.Table.from_pylist([{k: _clean(row.get(k)) for k in schema.names} for row in rows], schema=schema)


def _clean(value):
    """NaN as null (a spread of one seed, an unverified layout)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def path_of(out: Path | str, name: str) -> Path:
    return Path(out) / SUBDIR / f"{name}.parquet"


def write_table(out: Path | str, name: str, rows: list[dict]) -> Path:
    """Write ``<out>/treemtl/<name>.parquet`` atomically; returns its path."""
    path = path_of(out, name)
    table = to_arrow(name, rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(out: Path | str, name: str) -> pd.DataFrame:
    return pq.read_table(path_of(out, name), schema=SCHEMAS[name]).to_pandas()
