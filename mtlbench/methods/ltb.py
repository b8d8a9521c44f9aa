"""Learning to Branch (LTB) for a ResNet encoder, written against LibMTL 1.1.5's ``AbsArchitecture``.

Guo, Lee & Ulbricht, "Learning to Branch for Multi-Task Learning", ICML 2020 (arXiv:2006.01895).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.libmtl_compat import AbsArchitecture

__all__ = ["LTB", "LTB_DEFAULTS"]

#: Constructor keyword arguments of :class:`LTB` and their defaults (the registry's defaults table).
LTB_DEFAULTS: dict[str, Any] = {"tau_init": 5.0, "tau_min": 0.1, "gumbel_hard": False}

_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _resnet_stages(encoder: nn.Module) -> list[nn.Module]:
    """The 5 stages of a ResNet trunk: stem (conv1, bn1, relu, maxpool), layer1 ... layer4."""
    missing = [a for a in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
               if not hasattr(encoder, a)]
    if missing:
        raise ValueError(f"LTB needs a ResNet-style encoder; {type(encoder).__name__} lacks {missing}")
    stem = nn.Sequential(encoder.conv1, encoder.bn1, encoder.relu, encoder.maxpool)
    return [stem, encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]


class _BranchingResNet(nn.Module):
    """``task_num`` branches per stage; each branch of stage l > 0 reads a mix of the branches of stage l - 1.

    ``alpha[l - 1, j, i]`` is the logit of child j (stage l) choosing parent i (stage l - 1). Training mixes the
    parents with a Gumbel-softmax sample at temperature ``tau`` (a fresh sample every forward); eval uses the
    one-hot argmax, i.e. the deterministic tree the search has found. Returns the list of the last stage's
    branch outputs: entry j is task j's feature map.
    """

    def __init__(self, encoders: list[nn.Module], tau: float, hard: bool) -> None:
        super().__init__()
        self.branch_num = len(encoders)
        per_encoder = [_resnet_stages(e) for e in encoders]
        self.stages = nn.ModuleList([nn.ModuleList([stages[s] for stages in per_encoder])
                                     for s in range(len(_STAGES))])
        # Uniform initial branching probabilities: the search starts without preference (zero logits).
        self.alpha = nn.Parameter(torch.zeros(len(_STAGES) - 1, self.branch_num, self.branch_num))
        self.tau = float(tau)
        self.hard = bool(hard)

    def branch_weights(self) -> torch.Tensor:
        """[stages - 1, child, parent] mixing weights (rows sum to one)."""
        if self.training:
            return F.gumbel_softmax(self.alpha, tau=self.tau, hard=self.hard, dim=-1)
        # Hard tree at evaluation, no sampling: deterministic, and no host synchronisation (one-hot on device).
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


class LTB(AbsArchitecture):
    r"""Learning to Branch (LTB): a tree-structured multi-task ResNet whose branching points are learned.

    Guo, Lee & Ulbricht, *Learning to Branch for Multi-Task Learning*, ICML 2020 (arXiv:2006.01895).

    The encoder is split into 5 stages (stem = conv1 + bn1 + relu + maxpool, layer1 ... layer4). Every stage has
    ``task_num`` branches, taken from ``task_num`` independent ``encoder_class()`` instances (memory: about
    ``task_num`` ResNet-18s). Stage 0 branches all read the input; branch j of stage l > 0 reads
    ``sum_i w[l, j, i] * out[l - 1, i]`` where ``w[l, j, :]`` is a Gumbel-softmax sample of the learnable logits
    ``alpha[l, j, :]`` (the paper's differentiable parent sampling). Branch j of the last stage feeds task j, so the
    encoder returns one feature map per task, as ``Cross_stitch`` does. In eval mode each child takes its argmax
    parent: a deterministic tree (branches that nobody selects are computed but unused).

    All encoder parameters and the branching logits are shared parameters (``get_share_params``); weightings
    therefore see the logits' gradients too.

    Temperature schedule: ``tau(e) = tau_init * (tau_min / tau_init) ** (e / (E - 1))`` at epoch ``e`` (0-based,
    ``model.epoch``) of ``E`` (``model.epochs``): exponential decay from ``tau_init`` at the first epoch to
    ``tau_min`` at the last. Without ``model.epochs`` (or with ``E <= 1``) the temperature stays at ``tau_init``.

    Args (constructor keywords, defaults in :data:`LTB_DEFAULTS`):
        tau_init (float, 5.0): initial Gumbel-softmax temperature.
        tau_min (float, 0.1): final temperature (reached at the last epoch).
        gumbel_hard (bool, False): straight-through hard samples in training (one-hot forward, soft gradient);
            by default the soft relaxation is used, mixing all parents.

    The paper anneals the Gumbel-softmax temperature while training branching logits and weights; the values
    above are this implementation's defaults, not numbers taken from the paper. Simplifications: one optimiser
    updates weights and logits together (the paper may alternate them), and the search space has ``task_num``
    nodes at every stage.
    """

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        if self.multi_input:
            raise ValueError("LTB does not support multiple-input MTL problems (multi_input must be False)")
        opts = {**LTB_DEFAULTS, **kwargs}
        self.tau_init, self.tau_min = float(opts["tau_init"]), float(opts["tau_min"])
        if not 0 < self.tau_min <= self.tau_init:
            raise ValueError(f"LTB needs 0 < tau_min <= tau_init, got tau_min={self.tau_min}, "
                             f"tau_init={self.tau_init}")
        encoders = [self.encoder_class() for _ in range(self.task_num)]
        self.encoder = _BranchingResNet(encoders, self.tau_init, bool(opts["gumbel_hard"]))

    def current_tau(self) -> float:
        """The temperature for the current epoch (see the class docstring)."""
        epoch, epochs = getattr(self, "epoch", None), getattr(self, "epochs", None)
        if epoch is None or not epochs or epochs <= 1:
            return self.tau_init
        frac = min(max(float(epoch) / (epochs - 1), 0.0), 1.0)
        return self.tau_init * (self.tau_min / self.tau_init) ** frac

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        self.encoder.tau = self.current_tau()
        return super().forward(inputs, task_name)
