"""Tree-structured branching at a fixed point (``Tree-b0`` ... ``Tree-b4``) for a ResNet encoder, written against
LibMTL 1.1.5's ``AbsArchitecture``.

Zhang, Liu & Guan, "A Tree-Structured Multi-Task Model Recommender", AutoML-Conf 2022; paper
text: shared/papers/treemtl-recommender.txt. ``Tree-bk`` is the two-task model of the recommender's pair table that
branches after k shared blocks (Sec. 3.1); ``Tree-b5`` is hard parameter sharing, LibMTL's ``HPS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlbench.libmtl_compat import AbsArchitecture
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.treemtl.costs import STAGE_NAMES, resnet_stages

__all__ = ["Tree", "TreeOptions", "TREE_ARCHITECTURES"]

N_STAGES = len(STAGE_NAMES)
REFERENCE = "Zhang, Liu & Guan, A Tree-Structured Multi-Task Model Recommender, AutoML-Conf 2022"


@dataclass(frozen=True)
class TreeOptions:
    """The Tree-bk architectures take no options: the branch point is in the name."""


class _TreeTrunk(nn.Module):
    """Stages ``0 .. k-1`` once (``shared``), stages ``k .. 4`` once per task (``branches[t]``).

    ``forward`` returns one feature map per task (a list, as LTB and Cross-stitch do); with k = 5 there are no
    branches and it returns the shared feature map itself, as HPS's encoder does.
    """

    def __init__(self, encoders: list[nn.Module], k: int) -> None:
        super().__init__()
        self.branch_point = k
        self.shared = nn.Sequential(*resnet_stages(encoders[0])[:k])
        self.branches = nn.ModuleList([nn.Sequential(*resnet_stages(e)[k:]) for e in encoders] if k < N_STAGES
                                      else [])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        rep = self.shared(inputs)
        return [branch(rep) for branch in self.branches] if self.branches else rep


class Tree(AbsArchitecture):
    r"""Tree-bk: the ResNet trunk's first k stages shared by every task, a private copy of the rest per task.

    Stages: stem (conv1 + bn1 + relu + maxpool), layer1 ... layer4; k = 0 gives independent trunks, k = 5 HPS.
    Every copy is its own ``encoder_class()`` instance, so it is initialised as the encoder factory initialises a
    trunk (ImageNet weights in every copy when pretrained).

    The shared parameters (``get_share_params``, what gradient weightings combine) are exactly the shared stages;
    each task's stages are task-specific like its decoder, trained by its own loss only. With ``rep_grad``
    (GradDrop) the representation is the shared stages' output, the input of the first branched stage: each task's
    branch reads a detached copy, and the combined gradient flows back into the shared stages. Tree-b0 shares
    nothing, so it has no parameters or representation for a gradient weighting (registry trait ``shared=False``).

    ``branch_point`` (a constructor keyword, 0..5) overrides the class's; the registered ``Tree-bk`` fix it.
    """

    branch_point: int = N_STAGES

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, branch_point: int | None = None, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        k = self.branch_point if branch_point is None else int(branch_point)
        if not 0 <= k <= N_STAGES:
            raise ValueError(f"Tree branch point must lie in [0, {N_STAGES}], got {k}")
        if k == 0 and rep_grad:
            raise ValueError("Tree-b0 shares no stage, so it has no shared representation for rep_grad")
        self.branch_point = k
        # One trunk per task (one for k = 5); the shared stages come from the first, whose later stages are task 0's.
        encoders = [self.encoder_class() for _ in range(self.task_num if k < N_STAGES else 1)]
        self.encoder = _TreeTrunk(encoders, k)

    def get_share_params(self):
        return self.encoder.shared.parameters()

    def zero_grad_share_params(self) -> None:
        self.encoder.shared.zero_grad()

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        # AbsArchitecture.forward would take the per-task outputs as the representation; here it is the shared
        # stages' output, so rep_grad's detach point sits before the branches.
        rep = self.encoder.shared(inputs)
        out = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None and task != task_name:
                continue
            h = self._prepare_rep(rep, task, same_rep=False) if self.branch_point > 0 else rep
            if self.encoder.branches:
                h = self.encoder.branches[tn](h)
            out[task] = self.decoders[task](h)
        return out


def _register(k: int) -> type:
    name = f"Tree-b{k}"
    doc = (f"{name}: {', '.join(STAGE_NAMES[:k])} shared, {', '.join(STAGE_NAMES[k:])} one copy per task "
           f"(TreeMTL's two-task Tree-b{k})." if k else
           f"{name}: one independent ResNet trunk per task, nothing shared (TreeMTL's two-task Tree-b0).")
    cls = type(f"Tree_b{k}", (Tree,), {"branch_point": k, "__doc__": doc, "__module__": __name__})
    shared = ", ".join(STAGE_NAMES[:k])
    ARCHITECTURES.add(name, cls, options=TreeOptions, library="mtlbench", reference=REFERENCE, shared=k > 0,
                      branch_point=k,
                      summary=(f"ResNet-18 {shared} shared, the rest one copy per task (TreeMTL's branch point "
                               f"{k}; written here)") if k else
                              "one ResNet-18 per task, nothing shared (TreeMTL's branch point 0; written here)")
    globals()[cls.__name__] = cls  # a module attribute, so the class pickles by name
    return cls


#: The registered classes, by branch point 0..4 (5 is LibMTL's HPS).
TREE_ARCHITECTURES: tuple[type, ...] = tuple(_register(k) for k in range(N_STAGES))
