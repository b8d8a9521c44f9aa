"""Learning to Branch (LTB) for a ResNet encoder, written against LibMTL 1.1.5's ``AbsArchitecture``.

Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020 (arXiv:2006.01895).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataclasses import dataclass, field

from mtlbench.libmtl_compat import AbsArchitecture
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.registry import options_table
from mtlbench.treemtl.costs import resnet_stages

__all__ = ["LTB", "LTB_DEFAULTS"]

#: Constructor keyword arguments of :class:`LTB` and their defaults (the registry's defaults table). The defaults
#: train as LibMTL main's LTB does; mtlbench 0.1's behaviour is ``gumbel_hard = false, tau_schedule = "exponential",
#: warmup_fraction = 0``.
TAU_SCHEDULES = ("libmtl", "exponential")
EVAL_TREES = ("argmax", "sample")


@dataclass(frozen=True)
class LTBOptions:
    """LTB's options; see :class:`LTB`."""

    gumbel_hard: bool = True
    tau_schedule: str = field(default="libmtl", metadata={"choices": TAU_SCHEDULES})
    warmup_fraction: float = 0.01
    tau_init: float = 5.0
    tau_min: float = 0.1
    eval_tree: str = field(default="argmax", metadata={"choices": EVAL_TREES})


LTB_DEFAULTS: dict[str, Any] = options_table(LTBOptions)[0]

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class _BranchingResNet(nn.Module):
    """``task_num`` branches per stage; each branch of stage l > 0 reads a mix of the branches of stage l - 1.

    ``alpha[l - 1, j, i]`` is the logit of child j (stage l) choosing parent i (stage l - 1), initialised to ones as
    LibMTL does (uniform parent probabilities). In training every forward draws a Gumbel-softmax sample at
    temperature ``tau`` (one-hot with straight-through gradients when ``hard``); during the warm-up every child reads
    the plain sum of all parents instead. In evaluation: the argmax tree (``eval_tree = "argmax"``) or a fresh hard
    sample (``"sample"``, LibMTL's). Returns the list of the last stage's branch outputs: entry j is task j's
    feature map.
    """

    def __init__(self, encoders: list[nn.Module], tau: float, hard: bool, eval_tree: str) -> None:
        super().__init__()
        self.branch_num = len(encoders)
        per_encoder = [resnet_stages(e) for e in encoders]
        self.stages = nn.ModuleList([nn.ModuleList([stages[s] for stages in per_encoder])
                                     for s in range(len(_STAGES))])
        self.alpha = nn.Parameter(torch.ones(len(_STAGES) - 1, self.branch_num, self.branch_num))
        self.tau = float(tau)
        self.hard = bool(hard)
        self.eval_tree = eval_tree
        self.warmup = False

    def branch_weights(self) -> torch.Tensor:
        """[stages - 1, child, parent] mixing weights."""
        if self.training and self.warmup:
            return torch.ones_like(self.alpha)  # every parent with weight 1: the plain sum, no logit gradient
        if self.training or self.eval_tree == "sample":
            return F.gumbel_softmax(self.alpha, tau=self.tau, hard=self.hard or not self.training, dim=-1)
        # The argmax tree at evaluation: deterministic, so the validation score that picks the best epoch always
        # judges the same network, and one-hot on the device (no host synchronisation).
        return F.one_hot(self.alpha.argmax(dim=-1), self.branch_num).to(self.alpha.dtype)

    def tree(self) -> list[list[int]]:
        """The current argmax tree: ``tree()[l - 1][j]`` is the parent (stage l - 1) of branch j at stage l."""
        return self.alpha.argmax(dim=-1).tolist()

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        weights = self.branch_weights()
        outs = [branch(inputs) for branch in self.stages[0]]
        for s in range(1, len(self.stages)):
            parents = torch.stack(outs)  # [parent, batch, C, H, W]
            mixed = torch.einsum("jp,p...->j...", weights[s - 1].to(parents.dtype), parents)
            outs = [branch(mixed[j]) for j, branch in enumerate(self.stages[s])]
        return outs


@ARCHITECTURES.register(
    "LTB", options=LTBOptions, library="mtlbench",
    reference="Guo et al., Learning to Branch for Multi-Task Learning, ICML 2020",
    summary="per-task ResNet-18 stages with Gumbel-softmax learned branching; trains as LibMTL main does; evaluates "
            "the argmax tree where LibMTL samples a fresh one, so that the validation score picking the best epoch "
            "judges one fixed network (written here)")
class LTB(AbsArchitecture):
    r"""Learning to Branch (LTB): a tree-structured multi-task ResNet whose branching points are learned.

    Guo, Lee & Ulbricht, *Learning to Branch for Multi-Task Learning*, ICML 2020 (arXiv:2006.01895).

    The encoder is split into 5 stages (stem = conv1 + bn1 + relu + maxpool, layer1 ... layer4). Every stage has
    ``task_num`` branches, taken from ``task_num`` independent ``encoder_class()`` instances (memory: about
    ``task_num`` ResNet-18s). Stage 0 branches all read the input; branch j of stage l > 0 reads
    ``sum_i w[l, j, i] * out[l - 1, i]`` where ``w[l, j, :]`` is a Gumbel-softmax sample of the learnable logits
    ``alpha[l, j, :]`` (the paper's differentiable parent sampling). Branch j of the last stage feeds task j, so the
    encoder returns one feature map per task, as ``Cross_stitch`` does. All encoder parameters and the branching
    logits are shared parameters (``get_share_params``); weightings therefore see the logits' gradients too.

    Training follows LibMTL main's LTB (the paper's library) by default, at epoch ``e`` (0-based, ``model.epoch``)
    of ``E`` (``model.epochs``):

    - warm-up while ``e < E * warmup_fraction`` (LibMTL: ``E / 100``, i.e. the first epoch of any run shorter than
      100 epochs): every child reads the plain sum of the previous stage's branches (weights 1), the logits rest;
    - then hard (straight-through) Gumbel-softmax samples, one-hot in the forward pass, soft in the backward;
    - temperature ``tau(e) = (E / 20) / sqrt(e + 1)`` (``tau_schedule = "libmtl"``: 5 -> 0.5 over 100 epochs), or
      ``tau_init * (tau_min / tau_init) ** (e / (E - 1))`` (``"exponential"``: tau_init -> tau_min). Without
      ``model.epochs`` the temperature is ``tau_init`` and there is no warm-up.

    The one deliberate difference: evaluation uses the argmax tree (``eval_tree = "argmax"``), where LibMTL samples
    a fresh tree at every evaluation forward (``"sample"``). A sampled tree makes the validation score that picks
    the best epoch, and the test metrics, depend on the draw; the argmax tree is the network the search found.

    Args (constructor keywords, defaults in :data:`LTB_DEFAULTS`):
        gumbel_hard (bool, True): straight-through one-hot samples in training; False mixes all parents (soft).
        tau_schedule (str, "libmtl"): ``libmtl`` or ``exponential`` (above).
        warmup_fraction (float, 0.01): the warm-up's share of the epochs; 0 turns it off.
        tau_init (float, 5.0), tau_min (float, 0.1): the exponential schedule's ends (tau_init also applies when
            the number of epochs is unknown).
        eval_tree (str, "argmax"): ``argmax`` or ``sample`` (above).

    Simplifications: one optimiser updates weights and logits together (the paper may alternate them), and the
    search space has ``task_num`` nodes at every stage (as in LibMTL).
    """

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        if self.multi_input:
            raise ValueError("LTB does not support multiple-input MTL problems (multi_input must be False)")
        opts = {**LTB_DEFAULTS, **{k: v for k, v in kwargs.items() if k in LTB_DEFAULTS}}
        self.tau_init, self.tau_min = float(opts["tau_init"]), float(opts["tau_min"])
        self.tau_schedule, self.warmup_fraction = opts["tau_schedule"], float(opts["warmup_fraction"])
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"LTB tau_schedule must be one of {TAU_SCHEDULES}, got {self.tau_schedule!r}")
        if opts["eval_tree"] not in EVAL_TREES:
            raise ValueError(f"LTB eval_tree must be one of {EVAL_TREES}, got {opts['eval_tree']!r}")
        if not 0 < self.tau_min <= self.tau_init:
            raise ValueError(f"LTB needs 0 < tau_min <= tau_init, got tau_min={self.tau_min}, "
                             f"tau_init={self.tau_init}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"LTB warmup_fraction must lie in [0, 1], got {self.warmup_fraction}")
        encoders = [self.encoder_class() for _ in range(self.task_num)]
        self.encoder = _BranchingResNet(encoders, self.tau_init, bool(opts["gumbel_hard"]), opts["eval_tree"])

    def _epochs(self) -> tuple[int | None, int | None]:
        epoch, epochs = getattr(self, "epoch", None), getattr(self, "epochs", None)
        return (None, None) if epoch is None or not epochs else (int(epoch), int(epochs))

    def current_tau(self) -> float:
        """The temperature for the current epoch (see the class docstring)."""
        epoch, epochs = self._epochs()
        if epochs is None:
            return self.tau_init
        if self.tau_schedule == "libmtl":
            return (epochs / 20) / float(np.sqrt(epoch + 1))
        if epochs <= 1:
            return self.tau_init
        frac = min(max(epoch / (epochs - 1), 0.0), 1.0)
        return self.tau_init * (self.tau_min / self.tau_init) ** frac

    def in_warmup(self) -> bool:
        epoch, epochs = self._epochs()
        return epochs is not None and epoch < epochs * self.warmup_fraction

    def architecture_state(self) -> dict[str, Any]:
        """What the run records of the search: the argmax tree (see :meth:`_BranchingResNet.tree`)."""
        return {"tree": self.encoder.tree(), "stages": list(_STAGES)}

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        self.encoder.tau = self.current_tau()
        self.encoder.warmup = self.in_warmup()
        return super().forward(inputs, task_name)
