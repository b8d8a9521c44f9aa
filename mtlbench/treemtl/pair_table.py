"""Read TreeMTL's two-task results spreadsheet (e.g. NYUv2_2task_metrics_resnet_1129_val_acc.xlsx): one row per
branch point b = 0..B, columns "(i, j)-0" / "(i, j)-1" holding Δt of task i / task j (paper Sec. 3.1)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mtlbench.treemtl.estimate import PairTable

_COL = re.compile(r"^\((\d+),\s*(\d+)\)-([01])$")


def read_pair_table(path: str | Path, sheet: int | str = 0) -> PairTable:
    import pandas as pd

    df = pd.read_excel(path, sheet_name=sheet)
    df = df.sort_values("branch") if "branch" in df.columns else df
    n_blocks = len(df) - 1
    cols: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for col in df.columns:
        m = _COL.match(str(col).strip())
        if m:
            i, j, side = map(int, m.groups())
            cols.setdefault((min(i, j), max(i, j)), {})[side if i < j else 1 - side] = df[col].to_numpy(float)
    if not cols:
        raise ValueError(f"{path}: no '(i, j)-0' columns")
    n_tasks = 1 + max(max(p) for p in cols)
    delta = {}
    for pair, sides in cols.items():
        if set(sides) != {0, 1}:
            raise ValueError(f"{path}: pair {pair} lacks one side")
        delta[pair] = np.stack([sides[0], sides[1]], axis=1)
    missing = [(i, j) for i in range(n_tasks) for j in range(i + 1, n_tasks) if (i, j) not in delta]
    if missing:
        raise ValueError(f"{path}: missing pairs {missing}")
    return PairTable(n_tasks, n_blocks, delta)
