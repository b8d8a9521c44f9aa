"""TreeMTL task-accuracy estimator, ranking score and cost model (paper Sec. 3.1, Eqs. 1-2; Tables 1-2).

Estimate: Δt̂_i(L) = mean over j != i of Δt_i in the two-task model (i, j) branching at b_ij = branch_block(L, i, j).
Weights: H_ij = SVDE of task i's sequence Δt_i(b = 1..B) in pair (i, j) (b = 0, the independent models, is 0 by
definition of Δt and carries no information); w_i = 1 - mean_j H_ij, normalised to sum 1 (Eq. 1 writes -mean H; the
constant shift keeps the weights positive before normalising). Score S(L) = Σ_i w_i Δt̂_i(L) (Eq. 2).
Cost: a block used by g groups is instantiated g times; percentages are relative to T independent backbones, the
"Ind. Models" reference row of Table 1 (HPS = -66.67 % for 3 tasks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mtlbench.treemtl.layouts import Layout, branch_block, enumerate_layouts, layout_key

# Deeplab-ResNet34 multiply-accumulates per block (stem, layer1..layer4), as used for NYUv2 in the paper.
RESNET34_STAGE_MACS = (118e6, 694e6, 873e6, 5.34e9, 10.28e9)


def svd_entropy(seq: Sequence[float], order: int = 3, delay: int = 1, normalize: bool = True) -> float:
    """SVD entropy (Li et al. 2008, as cited in the paper): singular values of the delay-embedding matrix, scaled
    to sum 1, Shannon entropy in bits, divided by log2(order) when ``normalize``. All-zero input gives 0."""
    x = np.asarray(seq, dtype=float)
    n = len(x) - (order - 1) * delay
    if n < 1:
        raise ValueError(f"sequence of length {len(x)} too short for order={order}, delay={delay}")
    emb = np.stack([x[k * delay: k * delay + n] for k in range(order)], axis=1)
    s = np.linalg.svd(emb, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 1e-12 * p.max()]
    h = float(-(p * np.log2(p)).sum())
    h = h if h > 0 else 0.0
    return h / math.log2(order) if normalize else h


@dataclass
class PairTable:
    """Two-task results: ``delta[(i, j)]`` (i < j) is a (B+1, 2) array, row b = models branching after b shared
    blocks; column 0 is Δt_i, column 1 is Δt_j."""

    n_tasks: int
    n_blocks: int
    delta: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def dt(self, i: int, j: int, b: int) -> float:
        """Δt of task i in the two-task model with task j branching at b."""
        if i < j:
            return float(self.delta[(i, j)][b, 0])
        return float(self.delta[(j, i)][b, 1])

    def sequence(self, i: int, j: int) -> np.ndarray:
        return np.array([self.dt(i, j, b) for b in range(self.n_blocks + 1)])


def task_weights(table: PairTable, order: int = 3) -> np.ndarray:
    """Eq. 1 with w_i = 1 - mean_j SVDE(Δt_i(1..B) | i, j), normalised to sum 1."""
    t = table.n_tasks
    w = np.array([1.0 - np.mean([svd_entropy(table.sequence(i, j)[1:], order=order) for j in range(t) if j != i])
                  for i in range(t)])
    return w / w.sum()


def estimate(layout: Layout, table: PairTable) -> np.ndarray:
    """Δt̂_i(L): average of task i's accuracy over its associated two-task models (Sec. 3.1, Fig. 2)."""
    t = table.n_tasks
    return np.array([np.mean([table.dt(i, j, branch_block(layout, i, j)) for j in range(t) if j != i])
                     for i in range(t)])


def score(layout: Layout, table: PairTable, weights: np.ndarray | None = None) -> float:
    """Ranking score S(L) = Σ_i w_i Δt̂_i(L) (Eq. 2)."""
    w = task_weights(table) if weights is None else weights
    return float(np.dot(w, estimate(layout, table)))


def resnet34_stage_params() -> tuple[int, ...]:
    """Parameters of ResNet-34's stem (conv1 + bn1) and layer1..layer4, counted from torchvision's model."""
    from torchvision.models import resnet34

    m = resnet34(weights=None)
    count = lambda *mods: sum(p.numel() for mod in mods for p in mod.parameters())
    return (count(m.conv1, m.bn1), count(m.layer1), count(m.layer2), count(m.layer3), count(m.layer4))


@dataclass(frozen=True)
class Cost:
    macs: float
    params: float
    macs_pct: float     # change vs. T independent backbones, in %
    params_pct: float


def layout_cost(layout: Layout, block_macs: Sequence[float], block_params: Sequence[float]) -> Cost:
    """Backbone MACs / parameters of a layout: Σ_blocks (#groups at the block) × block cost; percentages against
    T independent backbones (Table 1's "Ind. Models")."""
    t = sum(len(g) for g in layout[0])
    macs = sum(len(part) * c for part, c in zip(layout, block_macs, strict=True))
    params = sum(len(part) * c for part, c in zip(layout, block_params, strict=True))
    ref_m, ref_p = t * sum(block_macs), t * sum(block_params)
    pct = lambda x, ref: 100 * (x - ref) / ref if ref else float("nan")
    return Cost(macs, params, pct(macs, ref_m), pct(params, ref_p))


@dataclass(frozen=True)
class Recommendation:
    layout: Layout
    key: str
    score: float
    estimate: tuple[float, ...]
    cost: Cost | None


def recommend(table: PairTable, k: int = 5, *, block_macs: Sequence[float] | None = None,
              block_params: Sequence[float] | None = None, n_backbones: float | None = None,
              max_macs: float | None = None, max_params: float | None = None,
              layouts: Sequence[Layout] | None = None) -> list[Recommendation]:
    """Top-k layouts by S among those within budget: ``n_backbones`` C keeps MACs(L) <= C x one backbone's MACs
    (Table 2's "Com. Budget"); ``max_macs``/``max_params`` are absolute caps. Ties keep enumeration order."""
    if (n_backbones is not None or max_macs is not None) and block_macs is None:
        raise ValueError("a MACs budget needs block_macs")
    if max_params is not None and block_params is None:
        raise ValueError("a parameter budget needs block_params")
    w = task_weights(table)
    cands = enumerate_layouts(table.n_tasks, table.n_blocks) if layouts is None else layouts
    out = []
    for lay in cands:
        cost = None
        if block_macs is not None:
            cost = layout_cost(lay, block_macs, block_params if block_params is not None else [0.0] * len(lay))
            if n_backbones is not None and cost.macs > n_backbones * sum(block_macs) * (1 + 1e-12):
                continue
            if max_macs is not None and cost.macs > max_macs:
                continue
            if max_params is not None and cost.params > max_params:
                continue
        est = estimate(lay, table)
        out.append(Recommendation(lay, layout_key(lay), float(np.dot(w, est)), tuple(est), cost))
    out.sort(key=lambda r: -r.score)
    return out[:k]
