"""Reader for the published "Advanced Steel Property" layout.

``<root>/trainset.xlsx``, ``validset.xlsx`` and ``testset.xlsx`` each hold one sheet with the columns
:data:`PUBLISHED_COLUMNS`; images live at ``<root>/<Full path>`` (e.g. ``trainset/0/xyz.tif``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlbench.errors import DataError

from .checks import check_table
from .table import ImageTable, check_images_exist, make_frame, require_columns, resolve_paths

COL_DIRECTORY = "Directory"
COL_FILENAME = "Filename"
COL_PATH = "Full path"
COL_CLASS = "class label (object)"
COL_TARGET = "regression label (property hardness)"
PUBLISHED_COLUMNS = (COL_DIRECTORY, COL_FILENAME, COL_PATH, COL_CLASS, COL_TARGET)

# sheet file stem -> split name, in split order
PUBLISHED_SHEETS = {"trainset": "train", "validset": "valid", "testset": "test"}


def _row(i: int) -> int:
    """Excel row number of data row ``i`` (the header is row 1)."""
    return i + 2


def _as_int(value: Any) -> int | None:
    """An integral class label, or None when the value is not one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return int(f) if math.isfinite(f) and f.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, np.integer, float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _is_empty(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def read_sheet(path: Path) -> pd.DataFrame:
    """The first worksheet of one published .xlsx file, with its columns checked."""
    try:
        df = pd.read_excel(path, sheet_name=0, dtype=object)
    except Exception as exc:  # zipfile.BadZipFile, openpyxl errors, OSError ...
        raise DataError(f"cannot read sheet {path}: {type(exc).__name__}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    require_columns(df, PUBLISHED_COLUMNS, f"sheet {path.name}")
    extra = [c for c in df.columns if c not in PUBLISHED_COLUMNS]
    if extra:
        raise DataError(
            f"sheet {path.name}: unexpected column(s) {', '.join(repr(c) for c in extra)}; "
            f"expected exactly {', '.join(repr(c) for c in PUBLISHED_COLUMNS)}"
        )
    if len(df) == 0:
        raise DataError(f"sheet {path.name}: has no rows")
    return df


def read_published(root: str | os.PathLike, name: str = "advanced-steel-property", *, allow_overlap: bool = False,
                   batch_size: int | None = None) -> ImageTable:
    """Read a data set in the published layout with its own predefined splits
    (trainset -> train, validset -> valid, testset -> test). Class names are the label values as text.
    The load-time checks (``allow_overlap``, ``batch_size``) are :func:`~mtlbench.data.checks.check_table`'s."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data set folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data set path is not a folder: {root}")

    relpaths: list[str] = []
    raw_labels: list[int] = []
    targets: list[float] = []
    splits: list[str] = []
    for stem, split in PUBLISHED_SHEETS.items():
        sheet = root / f"{stem}.xlsx"
        if not sheet.is_file():
            raise DataError(f"{root}: missing sheet {sheet.name}")
        df = read_sheet(sheet)
        for i, (rel, label, target) in enumerate(zip(df[COL_PATH].tolist(), df[COL_CLASS].tolist(), df[COL_TARGET].tolist())):
            if _is_empty(rel):
                raise DataError(f"sheet {sheet.name}: column {COL_PATH!r} row {_row(i)} is empty")
            if _is_empty(label):
                raise DataError(f"sheet {sheet.name}: column {COL_CLASS!r} row {_row(i)} is empty")
            code = _as_int(label)
            if code is None or code < 0:
                raise DataError(
                    f"sheet {sheet.name}: column {COL_CLASS!r} row {_row(i)} has value {label!r}, "
                    f"expected a non-negative integer class label"
                )
            if _is_empty(target):
                raise DataError(f"sheet {sheet.name}: column {COL_TARGET!r} row {_row(i)} is empty")
            value = _as_float(target)
            if value is None:
                raise DataError(
                    f"sheet {sheet.name}: column {COL_TARGET!r} row {_row(i)} has value {target!r}, expected a number"
                )
            relpaths.append(str(rel).strip())
            raw_labels.append(code)
            targets.append(value)
            splits.append(split)

    unique = sorted(set(raw_labels))
    index = {v: i for i, v in enumerate(unique)}
    labels = np.asarray([index[v] for v in raw_labels], dtype=np.int64)
    paths = resolve_paths(root, relpaths)
    check_images_exist(paths, str(root))
    frame = make_frame(paths, relpaths, labels, targets, splits)
    class_names = tuple(str(v) for v in unique)
    return ImageTable(
        name=name,
        root=Path(os.path.abspath(root)),
        frame=frame,
        class_names=class_names,
        warnings=check_table(frame, class_names, str(root), allow_overlap=allow_overlap, batch_size=batch_size),
    )
