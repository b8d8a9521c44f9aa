"""TreeMTL's cost model measured on a built model: per-stage MACs and parameters of a ResNet trunk, and the cost of
a branch-point-k model or of any layout (``mtlbench.treemtl.layouts``), with the heads reported apart.

MACs are ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2 at batch 1, each stage measured on its actual input
shape at the given image side; like the paper's (Table 1) they count convolutions and linear layers only
(batch norm, ReLU, pooling and the residual additions are not counted). Parameters are exact counts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mtlbench.treemtl.estimate import Cost, layout_cost
from mtlbench.treemtl.layouts import Layout, is_valid

__all__ = ["STAGE_NAMES", "ModelCost", "StageCosts", "branch_layout", "head_cost", "layout_cost_of", "model_cost",
           "resnet18_stage_costs", "resnet_stages", "stage_costs", "tree_cost", "trunk_macs"]

#: The 5 branching blocks of a ResNet trunk (TreeMTL's blocks for ResNet: the stem, then one per residual layer).
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


def resnet_stages(encoder: nn.Module) -> list[nn.Module]:
    """The 5 stages of a ResNet trunk, sharing the trunk's modules: stem (conv1, bn1, relu, maxpool), layer1..4."""
    missing = [a for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
               if not hasattr(encoder, a)]
    if missing:
        raise ValueError(f"a ResNet-style encoder is needed; {type(encoder).__name__} lacks {missing}")
    stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool)
    return [stem, encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]


@dataclass(frozen=True)
class StageCosts:
    """Per-stage MACs and parameters of one trunk at ``img_size``, and its output feature map's shape (C, H, W)."""

    macs: tuple[float, ...]
    params: tuple[int, ...]
    img_size: int
    out_shape: tuple[int, ...]

    @property
    def total_macs(self) -> float:
        return sum(self.macs)

    @property
    def total_params(self) -> int:
        return sum(self.params)


def _macs(module: nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    with FlopCounterMode(display=False) as counter:
        y = module(x)
    return counter.get_total_flops() / 2, y


@contextmanager
def _measuring(module: nn.Module) -> Iterator[None]:
    """Eval mode (batch 1 through BatchNorm1d needs it) and no autograd for a measurement; restores the mode."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was)


def _default_trunk() -> nn.Module:
    from mtlbench.models.encoder import ResNet18Trunk

    return ResNet18Trunk()


def _input(module: nn.Module, img_size: int) -> torch.Tensor:
    p = next(module.parameters())
    return torch.zeros(1, 3, img_size, img_size, device=p.device, dtype=p.dtype)


def stage_costs(encoder: nn.Module | None = None, img_size: int = 224) -> StageCosts:
    """MACs and parameters of each stage of ``encoder`` (a fresh ResNet-18 trunk by default) at ``img_size`` px."""
    encoder = _default_trunk() if encoder is None else encoder
    stages = resnet_stages(encoder)
    macs = []
    with _measuring(encoder):
        x = _input(encoder, img_size)
        for stage in stages:
            m, x = _macs(stage, x)
            macs.append(m)
    params = tuple(sum(p.numel() for p in s.parameters()) for s in stages)
    return StageCosts(tuple(macs), params, img_size, tuple(x.shape[1:]))


@functools.lru_cache(maxsize=8)
def resnet18_stage_costs(img_size: int) -> StageCosts:
    """:func:`stage_costs` of a fresh ResNet-18 trunk, measured once per image side (runs record it). The trunk's
    initialisation draws from a forked RNG: a run's numbers must not depend on whether an earlier run in the same
    process measured this already."""
    with torch.random.fork_rng(devices=[]):
        return stage_costs(None, img_size)


def trunk_macs(encoder: nn.Module | None = None, img_size: int = 224) -> float:
    """MACs of one forward of the whole trunk (one count, no stage split): the check on :func:`stage_costs`."""
    encoder = _default_trunk() if encoder is None else encoder
    with _measuring(encoder):
        return _macs(encoder, _input(encoder, img_size))[0]


def branch_layout(k: int, n_tasks: int = 2, n_blocks: int = len(STAGE_NAMES)) -> Layout:
    """The layout of the branch-point-k model (TreeMTL's two-task "Tree-b" for 2 tasks): blocks 0..k-1 shared by
    every task, one group per task after; k = 0 is independent models, k = n_blocks hard parameter sharing."""
    if not 0 <= k <= n_blocks:
        raise ValueError(f"branch point must lie in [0, {n_blocks}], got {k}")
    shared = (tuple(range(n_tasks)),)
    alone = tuple((t,) for t in range(n_tasks))
    return tuple(shared if b < k else alone for b in range(n_blocks))


def layout_cost_of(layout: Layout, stages: StageCosts | None = None) -> Cost:
    """Backbone :class:`Cost` of any layout from the measured stage costs (ResNet-18 at 224 px by default)."""
    stages = stage_costs() if stages is None else stages
    if len(layout) != len(stages.macs):
        raise ValueError(f"layout has {len(layout)} blocks, the trunk {len(stages.macs)} stages")
    if not is_valid(layout, sum(len(g) for g in layout[0])):
        raise ValueError(f"invalid layout {layout}")
    return layout_cost(layout, stages.macs, stages.params)


def tree_cost(k: int, stages: StageCosts | None = None, n_tasks: int = 2) -> Cost:
    """Backbone :class:`Cost` of the branch-point-k model (``Tree-bk``) for ``n_tasks`` tasks."""
    stages = stage_costs() if stages is None else stages
    return layout_cost_of(branch_layout(k, n_tasks, len(stages.macs)), stages)


def head_cost(decoder: str, out_features: int, in_shape: Sequence[int]) -> tuple[float, int]:
    """(MACs, parameters) of one ``build_decoder(decoder, out_features)`` head reading a (C, H, W) feature map."""
    from mtlbench.models.decoders import build_decoder

    head = build_decoder(decoder, out_features)
    with _measuring(head):
        macs, _ = _macs(head, torch.zeros(1, *in_shape))
    return macs, sum(p.numel() for p in head.parameters())


@dataclass(frozen=True)
class ModelCost:
    """A tree model's cost: the backbone (layout cost, percentages against independent backbones) and the heads."""

    backbone: Cost
    heads_macs: float
    heads_params: int

    @property
    def macs(self) -> float:
        return self.backbone.macs + self.heads_macs

    @property
    def params(self) -> float:
        return self.backbone.params + self.heads_params


def model_cost(layout: Layout | int, decoder: str = "decoder1", out_features: Sequence[int] = (6, 1),
               stages: StageCosts | None = None) -> ModelCost:
    """Cost of a whole model: a layout (or a branch point k, one task per entry of ``out_features``) plus one
    ``decoder`` head per task with ``out_features[t]`` outputs (mtlbench's tasks: class logits, one value)."""
    stages = stage_costs() if stages is None else stages
    if isinstance(layout, int):
        layout = branch_layout(layout, len(out_features), len(stages.macs))
    if sum(len(g) for g in layout[0]) != len(out_features):
        raise ValueError(f"layout has {sum(len(g) for g in layout[0])} tasks, out_features {len(out_features)}")
    heads = [head_cost(decoder, n, stages.out_shape) for n in out_features]
    return ModelCost(layout_cost_of(layout, stages), sum(m for m, _ in heads), sum(p for _, p in heads))
