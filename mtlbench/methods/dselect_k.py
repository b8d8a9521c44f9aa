"""DSelect-k for a shared set of encoder experts, written against LibMTL 1.1.5's ``AbsArchitecture``.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong & Chi, "DSelect-k: Differentiable Selection in the
Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.libmtl_compat import AbsArchitecture
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.registry import options_table

__all__ = ["DSELECT_K_DEFAULTS", "DSelectKGate", "DSelectKOptions", "DSelect_k", "smooth_step"]

#: Weight of the selectors' entropy in the gate regulariser (LibMTL main's fixed value, DSelect_k.py line 52).
ENTROPY_REG = 1e-6
#: Added inside the entropy's logarithm, as LibMTL main does (line 52), so a saturated selector has a finite log.
LOG_EPS = 1e-6


# num_nonzeros and kgamma: LibMTL main's config.py defaults (lines 54, 55). num_experts has no default there
# (line 52); 3 keeps this project's MMoE default, so DSelect-k and MMoE mix the same three ResNet-18s.
@dataclass(frozen=True)
class DSelectKOptions:
    """DSelect-k's options; see :class:`DSelect_k`."""

    num_experts: list[int] = field(default_factory=lambda: [3])   # shared experts
    num_nonzeros: int = 2                                          # k: selectors per task gate
    kgamma: float = 1.0                                            # gamma: width of the smooth-step's cubic part


DSELECT_K_DEFAULTS: dict[str, Any] = options_table(DSelectKOptions)[0]


def smooth_step(t: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """The paper's smooth-step: 0 for ``t <= -gamma/2``, 1 for ``t >= gamma/2``, and between them the cubic
    ``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2`` (continuously differentiable, derivative 0 at both ends)."""
    cubic = -2.0 / gamma ** 3 * t ** 3 + 1.5 / gamma * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class DSelectKGate(nn.Module):
    """A per-example DSelect-k gate over ``num_experts`` experts with ``k`` selectors.

    Selector j has ``ceil(log2 m)`` smooth-step bits of a linear map of the input; its weight on expert i is the
    product over bits b of ``S(z_jb)`` where bit b of i's binary code is 1, else ``1 - S(z_jb)``: a distribution
    over all ``2^bits`` codes, one-hot once every bit saturates. Expert weights are the selectors' outputs mixed by
    ``softmax`` of a second linear map of the input. Returns ``(expert weights [B, m], selector outputs [B, k, m])``.
    """

    def __init__(self, in_features: int, num_experts: int, k: int, gamma: float) -> None:
        super().__init__()
        self.num_experts, self.k, self.gamma = num_experts, k, float(gamma)
        self.num_bits = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
        self.z_logits = nn.Linear(in_features, k * self.num_bits)
        self.w_logits = nn.Linear(in_features, k)
        # LibMTL main's initialisation (DSelect_k.py lines 35-38): bits start near the cubic's centre (S ~ 1/2,
        # every expert equally weighted), selector weights near uniform.
        with torch.no_grad():
            for p in self.z_logits.parameters():
                p.uniform_(-self.gamma / 100, self.gamma / 100)
            for p in self.w_logits.parameters():
                p.uniform_(-0.05, 0.05)
        codes = [[(i >> (self.num_bits - 1 - b)) & 1 for b in range(self.num_bits)] for i in range(num_experts)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool).reshape(num_experts, self.num_bits),
                             persistent=False)

    @property
    def power_of_2(self) -> bool:
        return self.num_experts == 2 ** self.num_bits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.flatten(x, 1).float()   # float32 gates: the products of bits and the entropy's log under autocast
        bits = smooth_step(self.z_logits(x).float().reshape(-1, self.k, 1, self.num_bits), self.gamma)
        selectors = torch.where(self.codes, bits, 1 - bits).prod(-1)           # [B, k, m]
        weights = F.softmax(self.w_logits(x).float(), dim=-1)                 # [B, k]
        return torch.einsum("bj,bjm->bm", weights, selectors), selectors

    def regularizer(self, selectors: torch.Tensor) -> torch.Tensor:
        """The paper's gate penalty on a batch: ``ENTROPY_REG`` times the selectors' entropy (towards one-hot
        selectors), plus, when m is not a power of 2, ``sum 1 / (selector mass on real experts)`` (against selecting a
        code with no expert, as the authors' code and LibMTL main do), both summed over the batch and selectors
        (LibMTL main lines 51-54)."""
        loss = -ENTROPY_REG * (selectors * torch.log(selectors + LOG_EPS)).sum()
        if not self.power_of_2:
            loss = loss + (1.0 / selectors.sum(-1)).sum()
        return loss


@ARCHITECTURES.register(
    "DSelect-k", options=DSelectKOptions, library="mtlbench",
    reference="Hazimeh et al., DSelect-k: Differentiable Selection in the Mixture of Experts with Applications to "
              "Multi-Task Learning, NeurIPS 2021",
    summary="shared ResNet-18 experts, each task mixing k of them by a per-example DSelect-k gate (smooth-step "
            "binary selectors) on the input; gate regulariser applied in training (written here)")
class DSelect_k(AbsArchitecture):
    r"""DSelect-k: MMoE whose per-task softmax gates are DSelect-k gates (:class:`DSelectKGate`).

    ``num_experts = [m]`` independent ``encoder_class()`` trunks are the experts (LibMTL main subclasses its MMoE).
    Task t's representation is ``sum_i a_t(x)_i * expert_i(x)``, with ``a_t`` the gate of t on the flattened image
    (``img_size`` is filled from the protocol). ``a_t`` is convex (non-negative, sums to 1) when m is a power of 2;
    otherwise its mass on the unused codes is lost until the regulariser pushes it back.

    Options (LibMTL main's names and defaults): ``num_experts`` [3], ``num_nonzeros`` k = 2, ``kgamma`` 1.0.

    Shared parameters (``get_share_params``): the experts, as LibMTL's MMoE; gates are task-specific. With
    ``rep_grad`` (GradDrop) each task's representation is its gate's mixture.

    Regulariser: in a training forward with gradients on, the gate penalty (:meth:`DSelectKGate.regularizer`) of
    every task's gate is back-propagated at once, as LibMTL main does (it touches only the gates, so this equals
    adding it to the loss whatever the weighting); the value is kept in ``gate_regularizer``. Set
    ``regularizer_in_forward = False`` for a learner that adds ``gate_regularizer`` (then with its graph) to the
    loss itself. Deviations from LibMTL main, following the paper: the smooth-step uses ``kgamma`` (LibMTL main calls
    it with the default gamma = 1, line 65), and every task's gate is regularised (LibMTL main: only the last
    task's, line 75).
    """

    regularizer_in_forward: bool = True

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        if "img_size" not in kwargs:
            raise ValueError("DSelect-k needs img_size (its gates read the flattened input)")
        opts = {**DSELECT_K_DEFAULTS, **{k: v for k, v in kwargs.items() if k in DSELECT_K_DEFAULTS}}
        if len(opts["num_experts"]) != 1 or int(opts["num_experts"][0]) < 2:
            raise ValueError(f"DSelect-k num_experts must be one count >= 2, got {opts['num_experts']}")
        self.num_experts = int(opts["num_experts"][0])
        self.num_nonzeros = int(opts["num_nonzeros"])
        self.kgamma = float(opts["kgamma"])
        if self.num_nonzeros < 1:
            raise ValueError(f"DSelect-k num_nonzeros must be >= 1, got {self.num_nonzeros}")
        if not self.kgamma > 0:
            raise ValueError(f"DSelect-k kgamma must be > 0, got {self.kgamma}")
        self.img_size = [int(s) for s in kwargs["img_size"]]
        in_features = int(np.prod(self.img_size))
        self.experts_shared = nn.ModuleList([self.encoder_class() for _ in range(self.num_experts)])
        self.gates = nn.ModuleDict({t: DSelectKGate(in_features, self.num_experts, self.num_nonzeros, self.kgamma)
                                    for t in self.task_name})
        self.gate_regularizer: torch.Tensor | None = None

    def get_share_params(self):
        return self.experts_shared.parameters()

    def zero_grad_share_params(self) -> None:
        for p in self.get_share_params():
            p.grad = None

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        experts = torch.stack([e(inputs) for e in self.experts_shared])   # [m, B, ...]
        out, penalty = {}, []
        for task in self.task_name:
            if task_name is not None and task != task_name:
                continue
            weights, selectors = self.gates[task](inputs)
            rep = torch.einsum("bm,mb...->b...", weights.to(experts.dtype), experts)
            out[task] = self.decoders[task](self._prepare_rep(rep, task, same_rep=False))
            penalty.append(self.gates[task].regularizer(selectors))
        self.gate_regularizer = None
        if self.training and penalty:
            reg = torch.stack(penalty).sum()
            if self.regularizer_in_forward and reg.requires_grad:
                reg.backward(retain_graph=True)   # the gates' graph is still needed by the task losses
                reg = reg.detach()
            self.gate_regularizer = reg
        return out
