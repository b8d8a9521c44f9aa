"""How steady a run's validation scores were at its end: the spread of validation accuracy and MAPE over its last
epochs, and whether that spread makes its best-epoch figure mostly a matter of which epoch happened to land well.

A single run's test figure is taken at its best validation epoch; when validation accuracy swings by 20-30 points
from one epoch to the next (seen on FastCAR at 64 px on the steel data), that figure says little about the method.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

#: Epochs looked at: a third of the run, at least 2 (a spread needs two), at most 5.
MAX_WINDOW = 5
#: A run is "unstable" when, over that window, validation accuracy spans more than this many points, or validation
#: MAPE more than this many points: swings of that size exceed what the seed spread of a steady method shows.
UNSTABLE_ACCURACY_POINTS = 10.0
UNSTABLE_MAPE_POINTS = 10.0


def window(epochs: int) -> int:
    """The number of final epochs the spread is taken over (0 when the run is too short for one)."""
    return 0 if epochs < 2 else min(MAX_WINDOW, max(2, math.ceil(epochs / 3)))


def _spread(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) - min(finite) if len(finite) >= 2 else None


def stability(epochs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``runs`` columns for a run's epoch records (dicts with ``epoch``, ``val_accuracy``, ``val_mape``):
    ``stability_epochs``, ``val_accuracy_spread`` and ``val_mape_spread`` (max - min over the window, in points)
    and ``unstable`` (None when the run is too short to tell)."""
    rows = sorted(epochs, key=lambda e: e["epoch"])
    k = window(len(rows))
    if not k:
        return {"stability_epochs": None, "val_accuracy_spread": None, "val_mape_spread": None, "unstable": None}
    last = rows[-k:]
    acc = _spread([r.get("val_accuracy") for r in last])
    mape = _spread([r.get("val_mape") for r in last])
    unstable = None if acc is None and mape is None else bool(
        (acc is not None and acc > UNSTABLE_ACCURACY_POINTS) or (mape is not None and mape > UNSTABLE_MAPE_POINTS))
    return {"stability_epochs": k, "val_accuracy_spread": acc, "val_mape_spread": mape, "unstable": unstable}
