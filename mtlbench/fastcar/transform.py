"""FastCAR's invertible label transformation (FastCAR paper, sec. 3, step 1).

Class ``k`` gets a constant ``c_k`` so that the shifted class ranges ``[min_k + c_k, max_k + c_k]`` are disjoint,
stacked in class order with ``gap`` hardness units between consecutive ranges (``c_0 = 0``). The hybrid label is
``y + c_k - centre`` with ``centre = (max + min) / 2`` of all shifted labels, i.e. centred about zero by the global
max and min. The constants and the centre are stored; the inverse assigns a prediction to the class whose shifted
range is nearest (distance 0 inside a range; a value in a gap goes to the nearer range) and subtracts that class's
constant. With ``scale`` (the ``unit`` label scale), hybrid labels are divided by it: half the span of the shifted
labels puts them in [-1, 1]; the inverse multiplies it back first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np


@dataclass(frozen=True)
class LabelTransform:
    """Fitted constants: ``lows``/``highs`` are the class ranges of the fitting targets before shifting."""

    constants: tuple[float, ...]
    lows: tuple[float, ...]
    highs: tuple[float, ...]
    centre: float
    gap: float
    scale: float = 1.0

    @property
    def span(self) -> float:
        """Half the width of the shifted labels' range: the ``unit`` scale."""
        return (self.highs[-1] + self.constants[-1] - self.lows[0] - self.constants[0]) / 2.0

    @property
    def num_classes(self) -> int:
        return len(self.constants)

    @staticmethod
    def fit(labels: np.ndarray, targets: np.ndarray, num_classes: int, gap: float,
            label_scale: str = "raw") -> "LabelTransform":
        """Fit on training labels. A class absent from ``labels`` gets an empty range of width 0 at its
        predecessor's end, so classes stay ordered and every constant is defined. ``label_scale`` "unit" divides
        the hybrid labels by half their span."""
        if gap <= 0:
            raise ValueError("gap must be > 0 so that shifted class ranges stay disjoint")
        labels = np.asarray(labels, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.float64)
        lows, highs, constants = [], [], []
        prev_end: float | None = None
        for k in range(num_classes):
            mask = labels == k
            if mask.any():
                lo, hi = float(targets[mask].min()), float(targets[mask].max())
            else:
                lo = hi = float(targets.min()) if prev_end is None else prev_end
            c = 0.0 if prev_end is None else prev_end + gap - lo
            lows.append(lo)
            highs.append(hi)
            constants.append(c)
            prev_end = hi + c
        shifted_lo = lows[0] + constants[0]
        shifted_hi = highs[-1] + constants[-1]
        raw = LabelTransform(tuple(constants), tuple(lows), tuple(highs), (shifted_lo + shifted_hi) / 2.0, float(gap))
        if label_scale == "raw":
            return raw
        if label_scale != "unit":
            raise ValueError(f"label_scale must be raw or unit, got {label_scale!r}")
        return replace(raw, scale=raw.span if raw.span > 0 else 1.0)

    def ranges(self) -> np.ndarray:
        """Shifted, centred class ranges [K, 2] in hybrid-label space (scaled)."""
        c = np.asarray(self.constants)
        raw = np.stack([np.asarray(self.lows) + c - self.centre, np.asarray(self.highs) + c - self.centre], axis=1)
        return raw / self.scale

    def forward(self, labels: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """(class, target) -> hybrid label."""
        c = np.asarray(self.constants)[np.asarray(labels, dtype=np.int64)]
        return (np.asarray(targets, dtype=np.float64) + c - self.centre) / self.scale

    def inverse(self, hybrid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """hybrid prediction -> (class, target): nearest shifted range, then minus its constant."""
        h = np.asarray(hybrid, dtype=np.float64).reshape(-1, 1)
        r = self.ranges()
        dist = np.maximum(r[None, :, 0] - h, 0.0) + np.maximum(h - r[None, :, 1], 0.0)
        cls = np.argmin(dist, axis=1)  # ties (only at equal distance to two ranges) go to the lower class
        target = h[:, 0] * self.scale + self.centre - np.asarray(self.constants)[cls]
        return cls, target

    def to_dict(self) -> dict:
        return asdict(self)
