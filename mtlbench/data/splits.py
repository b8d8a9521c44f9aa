"""Seeded, class-stratified train/valid/test assignment for tables that carry no split column."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtlbench.errors import ConfigError

SPLIT_NAMES = ("train", "valid", "test")


def _split_counts(n: int, ratios: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding of ``n * ratios / sum(ratios)``.

    When ``n`` is at least the number of splits with a positive ratio, every such split gets at
    least one item (taken from the split that holds the most)."""
    share = ratios / ratios.sum()
    ideal = n * share
    counts = np.floor(ideal).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        # Ties broken by larger ratio, then by split order: deterministic.
        order = sorted(range(len(ratios)), key=lambda i: (-(ideal[i] - counts[i]), -share[i], i))
        for i in order[:rest]:
            counts[i] += 1
    positive = np.flatnonzero(ratios > 0)
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = int(np.argmax(counts))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def stratified_split(labels: np.ndarray | Sequence, ratios: Sequence[float] = (5, 1, 1), seed: int = 0) -> np.ndarray:
    """Assign every item to ``"train"``, ``"valid"`` or ``"test"``, class by class.

    Each class is shuffled with a generator seeded by ``seed`` and cut by ``ratios`` with per-class
    largest-remainder rounding, so every class with at least 3 items (and positive ratios) appears in
    every split. The result depends only on ``labels``, ``ratios`` and ``seed``.

    Returns a string array of the same length as ``labels``.
    """
    ratios_arr = np.asarray(ratios, dtype=np.float64)
    if ratios_arr.shape != (3,) or not np.all(np.isfinite(ratios_arr)) or np.any(ratios_arr < 0) or ratios_arr.sum() <= 0:
        raise ConfigError(f"split ratios must be three non-negative numbers with a positive sum, got {tuple(ratios)!r}")
    labels_arr = np.asarray(labels)
    if labels_arr.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {labels_arr.shape}")
    out = np.empty(len(labels_arr), dtype="<U5")
    if len(labels_arr) == 0:
        return out
    if labels_arr.dtype == object:
        labels_arr = labels_arr.astype(str)
    _, codes = np.unique(labels_arr, return_inverse=True)
    codes = codes.reshape(-1)
    rng = np.random.default_rng(seed)
    names = np.asarray(SPLIT_NAMES)
    for code in range(int(codes.max()) + 1):
        members = np.flatnonzero(codes == code)
        if len(members) == 0:
            continue
        members = members[rng.permutation(len(members))]
        counts = _split_counts(len(members), ratios_arr)
        out[members] = np.repeat(names, counts)
    return out
