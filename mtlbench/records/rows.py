"""Typed rows of the record tables, checked against :mod:`mtlbench.records.schema` as they are built.

A run builds its ``runs`` row inside the cell, so a misspelt column or a value of the wrong type fails the
cell's own test at the line that sets it, not the driver's Parquet write after the training.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from mtlbench.records.schema import TABLES

_PYTHON_TYPES: list[tuple[Any, tuple[type, ...]]] = [
    (pa.types.is_boolean, (bool, np.bool_)),
    (pa.types.is_integer, (int, np.integer)),
    (pa.types.is_floating, (int, float, np.integer, np.floating)),
    (pa.types.is_string, (str,)),
    (pa.types.is_timestamp, (datetime,)),
]


def _accepts(arrow_type: pa.DataType, value: Any) -> bool:
    if value is None:
        return True
    for test, types in _PYTHON_TYPES:
        if test(arrow_type):
            # bool is an int to Python, never a number to a record
            return isinstance(value, types) and not (isinstance(value, (bool, np.bool_))
                                                     and not pa.types.is_boolean(arrow_type))
    return True


class Row(dict):
    """A dict that refuses keys the table has no column for, and values its column cannot hold."""

    table: str = ""

    def __init__(self, table: str, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        super().__init__()
        if table not in TABLES:
            raise KeyError(f"no record table {table!r}; tables: {', '.join(TABLES)}")
        self.table = table
        self._types = {f.name: f.type for f in TABLES[table]}
        self.update(values or {}, **more)

    def __setitem__(self, key: str, value: Any) -> None:
        kind = self._types.get(key)
        if kind is None:
            raise KeyError(f"table {self.table!r} has no column {key!r}")
        if isinstance(value, float) and math.isnan(value) and not pa.types.is_floating(kind):
            value = None
        if not _accepts(kind, value):
            raise TypeError(f"{self.table}.{key} is {kind}; got {type(value).__name__} {value!r}")
        super().__setitem__(key, value)

    def update(self, values: Mapping[str, Any] | Iterable[tuple[str, Any]] = (), **more: Any) -> None:  # type: ignore[override]
        for key, value in dict(values, **more).items():
            self[key] = value

    def __reduce__(self) -> tuple[Any, ...]:
        # Rows travel to the driver from worker processes; the default dict-subclass pickle would set items before
        # the column types exist.
        return (Row, (self.table, dict(self)))

    def setdefault(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]


def rows(table: str, items: Iterable[Mapping[str, Any]]) -> list[Row]:
    """Each mapping as a checked row of ``table``."""
    return [Row(table, item) for item in items]
