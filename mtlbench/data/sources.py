"""Turn a data set spec from the command line into an ImageTable, and summarise a table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mtlbench.errors import DataError

from .cache import default_cache_dir
from .steel import PUBLISHED_SHEETS, read_published
from .synth import write_synthetic
from .table import SPLITS, TABLE_SUFFIXES, ImageTable, read_table

DEFAULT_SPEC = "default"
STEEL_SPEC = "steel"
DEFAULT_FOLDER = "default-synthetic-v2"   # v2: classes differ in level and tint too
DEFAULT_NAME = "synthetic-64px-seed0"
DEFAULT_OPTIONS = {"per_class": (40, 8, 8), "image_size": 64, "seed": 0, "num_classes": 6}
STEEL_FOLDER = "advanced-steel-property"
STEEL_NAME = "advanced-steel-property"


def datasets_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "datasets"


def _complete(folder: Path) -> bool:
    return all((folder / f"{stem}.xlsx").is_file() for stem in PUBLISHED_SHEETS)


def ensure_default(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded default data set folder, generated (atomically) on first use."""
    folder = datasets_dir(cache_dir) / DEFAULT_FOLDER
    if _complete(folder):
        return folder
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)  # leftover of an older layout; regenerate
    try:
        write_synthetic(folder, **DEFAULT_OPTIONS)
    except (DataError, OSError):
        if not _complete(folder):  # another process may have won the race
            raise
    return folder


def resolve_dataset(
    spec: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    table_options: dict | None = None,
    allow_overlap: bool = False,
    batch_size: int | None = None,
) -> ImageTable:
    """``"default"`` (embedded synthetic set), ``"steel"`` (the fetched published set), a folder in the
    published layout, or a .csv/.xlsx/.parquet table (read with ``read_table(**table_options)``).

    ``allow_overlap`` (also taken from ``table_options``, where a spec's ``[data]`` puts it, for every kind of
    source) and ``batch_size`` go to the load-time checks of :mod:`mtlbench.data.checks`."""
    text = str(spec)
    options = dict(table_options or {})
    checks = {"allow_overlap": options.pop("allow_overlap", False) or allow_overlap, "batch_size": batch_size}
    if text == DEFAULT_SPEC:
        return read_published(ensure_default(cache_dir), name=DEFAULT_NAME, **checks)
    if text == STEEL_SPEC:
        folder = datasets_dir(cache_dir) / STEEL_FOLDER
        if not folder.is_dir():
            raise DataError(f"the steel data set is not downloaded (looked in {folder}); run `mtlbench data fetch` first")
        return read_published(folder, name=STEEL_NAME, **checks)
    path = Path(text).expanduser()
    if path.is_dir():
        return read_published(path, name=path.resolve().name, **checks)
    if path.suffix.lower() in TABLE_SUFFIXES:
        if not path.exists():
            raise DataError(f"table file not found: {path}")
        return read_table(path, **options, **checks)
    if path.exists():
        raise DataError(
            f"unsupported data set file {path}: use a folder in the published layout or a {', '.join(TABLE_SUFFIXES)} table"
        )
    raise DataError(
        f"unknown data set {text!r}: not 'default', 'steel', an existing folder or a {'/'.join(TABLE_SUFFIXES)} file"
    )


def summarize(table: ImageTable) -> pd.DataFrame:
    """Per split: one row per class (count, target min/mean/max) then an ``all`` row with the totals."""
    frame = table.frame
    rows = []
    for split in SPLITS:
        part = frame[frame["split"] == split]
        for label, name in enumerate(table.class_names):
            values = part.loc[part["label"] == label, "target"].to_numpy(dtype=np.float64)
            rows.append(_summary_row(split, name, label, values))
        rows.append(_summary_row(split, "all", -1, part["target"].to_numpy(dtype=np.float64)))
    out = pd.DataFrame(rows, columns=["split", "class", "label", "count", "target_min", "target_mean", "target_max"])
    return out.astype({"label": np.int64, "count": np.int64})


def _summary_row(split: str, name: str, label: int, values: np.ndarray) -> dict:
    empty = len(values) == 0
    return {
        "split": split,
        "class": name,
        "label": label,
        "count": len(values),
        "target_min": np.nan if empty else float(values.min()),
        "target_mean": np.nan if empty else float(values.mean()),
        "target_max": np.nan if empty else float(values.max()),
    }
