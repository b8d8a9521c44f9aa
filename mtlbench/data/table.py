"""The one in-memory description of an image data set, and a reader for users' own tables."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlbench.errors import DataError

from .checks import check_table
from .splits import stratified_split

SPLITS = ("train", "valid", "test")
COLUMNS = ("path", "relpath", "label", "target", "split")
TABLE_SUFFIXES = (".csv", ".xlsx", ".parquet")

# Spellings of split values accepted in users' tables (case and surrounding spaces ignored).
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "trainset": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "validset": "valid",
    "test": "test",
    "testing": "test",
    "testset": "test",
}


@dataclass(frozen=True, eq=False)
class ImageTable:
    """One row per image: ``path`` (absolute), ``relpath`` (as listed), ``label`` (int64 in 0..K-1),
    ``target`` (float64) and ``split`` (one of :data:`SPLITS`). ``warnings`` holds what the load-time checks
    warned about, as ``(check, message)`` pairs (:func:`mtlbench.data.checks.check_table`)."""

    name: str
    root: Path
    frame: pd.DataFrame
    class_names: tuple[str, ...]
    warnings: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.frame)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, in their original order, with a fresh 0..n-1 index."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    @cached_property
    def _fingerprint(self) -> str:
        rows = []
        for rel, path, label, target, split in zip(
            self.frame["relpath"], self.frame["path"], self.frame["label"], self.frame["target"], self.frame["split"]
        ):
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            rows.append((str(rel), int(size), int(label), repr(float(target)), str(split)))
        rows.sort()
        digest = hashlib.sha256()
        for row in rows:
            digest.update(("\x1f".join(map(str, row)) + "\x1e").encode())
        return digest.hexdigest()[:16]

    def fingerprint(self) -> str:
        """16 hex digits of a sha256 over the sorted (relpath, file size, label, target, split) rows.

        Modification times are left out, so a fresh copy of the same data has the same fingerprint."""
        return self._fingerprint

    def target_stats(self, split: str = "train") -> dict[str, float]:
        """``min``, ``mean``, ``std`` (population, ddof=0) and ``max`` of the targets of one split."""
        values = self.split(split)["target"].to_numpy(dtype=np.float64)
        if len(values) == 0:
            raise DataError(f"data set {self.name!r} has no images in split {split!r}")
        return {
            "min": float(values.min()),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "max": float(values.max()),
        }


def make_frame(paths: list[str], relpaths: list[str], labels: Any, targets: Any, splits: Any) -> pd.DataFrame:
    """Build a frame with exactly the :data:`COLUMNS` and their dtypes."""
    return pd.DataFrame(
        {
            "path": pd.Series([str(p) for p in paths], dtype=str),
            "relpath": pd.Series([str(p) for p in relpaths], dtype=str),
            "label": pd.Series(np.asarray(labels, dtype=np.int64), dtype=np.int64),
            "target": pd.Series(np.asarray(targets, dtype=np.float64), dtype=np.float64),
            "split": pd.Series([str(s) for s in splits], dtype=str),
        }
    )


def resolve_paths(root: Path, relpaths: list[str]) -> list[str]:
    """Absolute, normalised paths; listed absolute paths are kept, relative ones are joined to ``root``."""
    base = os.path.abspath(root)
    out = []
    for rel in relpaths:
        if os.sep == "/" and "\\" in rel and not os.path.exists(os.path.join(base, rel)):
            rel = rel.replace("\\", "/")  # a table written on Windows
        out.append(os.path.normpath(os.path.join(base, rel)))
    return out


def check_images_exist(paths: list[str], where: str) -> None:
    """DataError naming the first listed image that is missing and how many are missing."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{where}: image not found: {missing[0]} ({len(missing)} of {len(paths)} listed images missing)")


def _read_any(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"table file not found: {path}")
    if not path.is_file():
        raise DataError(f"table path is not a file: {path}")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".xlsx":
            return pd.read_excel(path, sheet_name=0)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as exc:  # OSError, parser errors of pandas / pyarrow / zipfile / openpyxl
        raise DataError(f"cannot read table {path}: {type(exc).__name__}: {exc}") from exc
    raise DataError(f"unsupported table file {path}: suffix {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    return False


def _class_key(value: Any) -> tuple[int, Any]:
    """Sort key that puts numbers in numeric order and strings in text order."""
    if isinstance(value, (bool, np.bool_)):
        return (1, str(value))
    if isinstance(value, (int, np.integer, float, np.floating)):
        return (0, float(value))
    return (1, str(value))


def _class_name(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value).strip()


def encode_classes(values: list[Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map sorted unique class values to 0..K-1; return the codes and the class names."""
    names = [_class_name(v) for v in values]
    first: dict[str, Any] = {}
    for name, value in zip(names, values):
        first.setdefault(name, value)
    ordered = sorted(first, key=lambda n: _class_key(first[n]))
    index = {n: i for i, n in enumerate(ordered)}
    return np.asarray([index[n] for n in names], dtype=np.int64), tuple(ordered)


def _row_number(i: int) -> int:
    """Spreadsheet/CSV row number of data row ``i`` (the header is row 1)."""
    return i + 2


def require_columns(df: pd.DataFrame, wanted: list[str] | tuple[str, ...], where: str) -> None:
    """One DataError naming every missing column and listing the columns found."""
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found columns: {', '.join(repr(c) for c in df.columns) or '(none)'}"
        )


def read_table(
    path: str | os.PathLike,
    *,
    image_col: str = "path",
    class_col: str = "label",
    target_col: str = "target",
    split_col: str | None = "split",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    name: str | None = None,
    allow_overlap: bool = False,
    batch_size: int | None = None,
) -> ImageTable:
    """Read a user's CSV, .xlsx or .parquet table of images.

    Relative image paths resolve against ``root`` (default: the table file's folder). Without a split
    column (absent from the file, or ``split_col=None``) a seeded class-stratified 5:1:1 split is made.
    Class values may be numbers or strings: their sorted unique values become labels 0..K-1 and their
    text the class names. Row numbers in messages count the header as row 1. The load-time checks
    (``allow_overlap``, ``batch_size``) are :func:`~mtlbench.data.checks.check_table`'s.
    """
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if not path.exists():
            raise DataError(f"table file not found: {path}")
        raise DataError(f"unsupported table file {path}: suffix {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    df = _read_any(path)
    df.columns = [str(c).strip() for c in df.columns]
    where = path.name

    require_columns(df, [image_col, class_col, target_col], where)
    if len(df) == 0:
        raise DataError(f"{where}: the table has no rows")

    # Images.
    relpaths = []
    for i, value in enumerate(df[image_col].tolist()):
        if _is_missing(value):
            raise DataError(f"{where}: column {image_col!r} row {_row_number(i)} is empty")
        relpaths.append(str(value).strip())

    # Classes.
    class_values = df[class_col].tolist()
    for i, value in enumerate(class_values):
        if _is_missing(value):
            raise DataError(f"{where}: column {class_col!r} row {_row_number(i)} is empty (NaN class)")
    labels, class_names = encode_classes(class_values)

    # Targets.
    raw_targets = df[target_col].tolist()
    targets = np.empty(len(raw_targets), dtype=np.float64)
    for i, value in enumerate(raw_targets):
        if _is_missing(value):
            raise DataError(f"{where}: column {target_col!r} row {_row_number(i)} is empty (NaN target)")
        if isinstance(value, (bool, np.bool_)):
            raise DataError(f"{where}: column {target_col!r} row {_row_number(i)} has non-numeric value {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DataError(f"{where}: column {target_col!r} row {_row_number(i)} has non-numeric value {value!r}") from None
        if not math.isfinite(number):
            raise DataError(f"{where}: column {target_col!r} row {_row_number(i)} has non-finite value {value!r}")
        targets[i] = number

    # Splits.
    if split_col is not None and split_col in df.columns:
        splits = []
        unknown: dict[str, int] = {}
        for i, value in enumerate(df[split_col].tolist()):
            key = "" if _is_missing(value) else str(value).strip().lower()
            mapped = _SPLIT_ALIASES.get(key)
            if mapped is None:
                unknown.setdefault(str(value), _row_number(i))
                splits.append("")
            else:
                splits.append(mapped)
        if unknown:
            shown = ", ".join(f"{v!r} (row {r})" for v, r in list(unknown.items())[:5])
            raise DataError(
                f"{where}: column {split_col!r} has unknown split value(s) {shown}; expected {', '.join(SPLITS)}"
            )
    else:
        splits = stratified_split(labels, (5, 1, 1), seed=seed).tolist()

    base = Path(root) if root is not None else path.parent
    paths = resolve_paths(base, relpaths)
    check_images_exist(paths, where)

    frame = make_frame(paths, relpaths, labels, targets, splits)
    return ImageTable(
        name=name if name is not None else path.stem,
        root=Path(os.path.abspath(base)),
        frame=frame,
        class_names=class_names,
        warnings=check_table(frame, class_names, where, allow_overlap=allow_overlap, batch_size=batch_size),
    )
