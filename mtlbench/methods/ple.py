"""Progressive Layered Extraction (PLE) for a ResNet encoder, written against LibMTL 1.1.5's ``AbsArchitecture``.

Tang, Liu, Zhao & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020: Customized Gate Control (CGC, LibMTL's ``CGC``) stacked into extraction
layers, with a shared gate carrying the shared path from one layer to the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.libmtl_compat import AbsArchitecture
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.registry import options_table
from mtlbench.treemtl.costs import STAGE_NAMES, resnet_stages

__all__ = ["PLE", "PLE_DEFAULTS", "PLEOptions"]


# LibMTL gives no default expert count (config.py: ``--num_experts`` has none); 1 shared + 1 per task is this
# project's CGC default, so PLE and CGC build the same three ResNet-18s and differ only in the layering.
@dataclass(frozen=True)
class PLEOptions:
    """PLE's options; see :class:`PLE`."""

    num_experts: list[int] = field(default_factory=lambda: [1, 1, 1])          # shared, then one count per task
    extraction_layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1])   # ResNet stages per layer
    shared_gate: bool = True   # the paper's shared path; False: LibMTL main's wiring (see PLE)


PLE_DEFAULTS: dict[str, Any] = options_table(PLEOptions)[0]


def _mix(outputs: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """``sum_e softmax(logits)[:, e] * outputs[e]``: a gate's per-example convex combination of expert outputs."""
    weights = F.softmax(logits, dim=-1)
    return torch.einsum("eb...,be->b...", torch.stack(outputs), weights.to(outputs[0].dtype))


class _ExtractionLayer(nn.Module):
    """One CGC layer: shared experts on the shared input, each task's experts on that task's input.

    Task t's gate (reading t's input) mixes [shared experts, t's experts]; the shared gate (reading the shared
    input; absent in the last layer) mixes [shared experts, every task's experts, in task order]. Without a shared
    input (``shared_gate = False``), each task runs the shared experts on its own input instead.
    """

    def __init__(self, shared: list[nn.Module], specific: dict[str, list[nn.Module]], in_features: int,
                 shared_gate: bool) -> None:
        super().__init__()
        self.shared = nn.ModuleList(shared)
        self.specific = nn.ModuleDict({t: nn.ModuleList(m) for t, m in specific.items()})
        self.task_gates = nn.ModuleDict({t: nn.Linear(in_features, len(shared) + len(m))
                                         for t, m in specific.items()})
        n_all = len(shared) + sum(len(m) for m in specific.values())
        self.shared_gate = nn.Linear(in_features, n_all) if shared_gate else None

    def forward(self, shared_in: torch.Tensor | None, task_in: dict[str, torch.Tensor], tasks: list[str]
                ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if shared_in is None:   # LibMTL main's wiring: each task runs the shared experts on its own input
            return None, {t: _mix([e(task_in[t]) for e in self.shared] + [e(task_in[t]) for e in self.specific[t]],
                                  self.task_gates[t](torch.flatten(task_in[t], 1))) for t in tasks}
        # The shared gate reads every task's experts, so below the last layer all tasks run whatever ``tasks`` asks.
        run = list(self.specific) if self.shared_gate is not None else tasks
        shared_out = [e(shared_in) for e in self.shared]
        task_out = {t: [e(task_in[t]) for e in self.specific[t]] for t in run}
        reps = {t: _mix(shared_out + task_out[t], self.task_gates[t](torch.flatten(task_in[t], 1))) for t in tasks}
        if self.shared_gate is None:
            return None, reps
        every = shared_out + [o for t in self.specific for o in task_out[t]]
        return _mix(every, self.shared_gate(torch.flatten(shared_in, 1))), reps


class _PLETrunk(nn.Module):
    """The extraction layers; ``forward`` returns each task's last-layer gate output (a feature map per task)."""

    def __init__(self, layers: list[_ExtractionLayer], task_name: list[str], shared_path: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.task_name = list(task_name)
        self.shared_path = shared_path

    def forward(self, inputs: torch.Tensor, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        tasks = list(self.task_name) if tasks is None else tasks
        shared, reps = (inputs if self.shared_path else None), {t: inputs for t in self.task_name}
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            shared, reps = layer(shared, reps, tasks if last or not self.shared_path else self.task_name)
        return reps


@ARCHITECTURES.register(
    "PLE", options=PLEOptions, library="mtlbench",
    reference="Tang et al., Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for "
              "Personalized Recommendations, RecSys 2020",
    summary="CGC stacked over the 5 ResNet-18 stages: shared + task-specific experts per layer, per-task gates and "
            "a shared gate feeding the next layer, as in the paper (LibMTL main has no shared gate: "
            "shared_gate = false; written here)")
class PLE(AbsArchitecture):
    r"""Progressive Layered Extraction (PLE): CGC layers stacked over the stages of a ResNet encoder.

    ``num_experts = [S, T_1, ..., T_n]`` builds ``S + sum T_t`` independent ``encoder_class()`` trunks; each is cut
    into the 5 ResNet stages (stem, layer1 ... layer4), and ``extraction_layers`` groups consecutive stages into
    extraction layers (default ``[1, 1, 1, 1, 1]``: one layer per stage, as LibMTL main's PLE; ``[5]``: one layer
    over the whole trunk, which is CGC). In layer l, shared expert e is stage group l of shared trunk e, and so on.

    Gates are softmax(linear) of their layer's input, flattened (as LibMTL's: hence ``img_size``, filled from the
    protocol). Layer l, as the paper defines PLE's extraction networks:

    - task t's experts read t's input, the shared experts read the shared input (layer 0: the image for all);
    - task t's gate, on t's input, mixes [shared experts, t's experts] into t's input of layer l + 1;
    - the shared gate, on the shared input, mixes [shared experts, all task experts] into the shared input of
      layer l + 1; the last layer has none. Task t's last-layer output is its decoder's input.

    Deviation from LibMTL main (``architecture/PLE.py``, ``_transform_resnet_PLE.forward``, lines 63-78): there is
    no shared gate there; each task runs the shared experts on its own path. We follow the paper by default;
    ``shared_gate = False`` is LibMTL main's wiring. With ``extraction_layers = [5]`` both are CGC exactly.

    Shared parameters (``get_share_params``, what gradient weightings combine): every shared expert and every
    shared gate: LibMTL main's set (``shared_layer``) plus the gates it lacks. Task experts and task gates are
    task-specific, like decoders, even though below the last layer the shared gate also passes task t's experts
    on to the other tasks; they get the plain sum of the task gradients. With ``rep_grad`` (GradDrop) each task's
    representation is its last-layer gate output (LibMTL main's choice), as in MMoE / CGC.
    """

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        if self.multi_input:
            raise ValueError("PLE does not support multiple-input MTL problems (multi_input must be False)")
        if "img_size" not in kwargs:
            raise ValueError("PLE needs img_size (its gates read the flattened input of every layer)")
        opts = {**PLE_DEFAULTS, **{k: v for k, v in kwargs.items() if k in PLE_DEFAULTS}}
        counts, groups = [int(n) for n in opts["num_experts"]], [int(n) for n in opts["extraction_layers"]]
        if len(counts) != 1 + self.task_num or min(counts) < 0:
            raise ValueError(f"PLE num_experts must be {1 + self.task_num} counts >= 0 (shared, then one per task), "
                             f"got {counts}")
        if any(counts[0] + n < 1 for n in counts[1:]):
            raise ValueError(f"PLE: every task needs at least one expert (shared or its own), got {counts}")
        if min(groups, default=0) < 1 or sum(groups) != len(STAGE_NAMES):
            raise ValueError(f"PLE extraction_layers must be positive stage counts summing to {len(STAGE_NAMES)}, "
                             f"got {groups}")
        self.num_experts = {"share": counts[0], **dict(zip(self.task_name, counts[1:]))}
        self.extraction_layers = groups
        self.img_size = [int(s) for s in kwargs["img_size"]]

        trunks = {k: [resnet_stages(self.encoder_class()) for _ in range(n)] for k, n in self.num_experts.items()}
        bounds = np.cumsum([0] + groups).tolist()
        blocks = {k: [[nn.Sequential(*stages[a:b]) for a, b in pairwise(bounds)] for stages in per]
                  for k, per in trunks.items()}   # blocks[k][expert][layer]
        sizes = self._gate_input_sizes(next(b for per in blocks.values() for b in per))
        layers = [_ExtractionLayer([b[i] for b in blocks["share"]],
                                   {t: [b[i] for b in blocks[t]] for t in self.task_name}, sizes[i],
                                   shared_gate=bool(opts["shared_gate"]) and i < len(groups) - 1 and counts[0] > 0)
                  for i in range(len(groups))]
        self.encoder = _PLETrunk(layers, self.task_name, shared_path=bool(opts["shared_gate"]))

    def _gate_input_sizes(self, blocks: list[nn.Module]) -> list[int]:
        """Per-example input size of each layer, from one expert's blocks run on a blank image (in eval mode, so
        batch norm's running statistics stay as built)."""
        x = torch.zeros(1, *self.img_size)
        sizes = []
        with torch.no_grad():
            for block in blocks:
                sizes.append(x[0].numel())
                training = block.training
                x = block.eval()(x)
                block.train(training)
        return sizes

    def get_share_params(self) -> Iterator[nn.Parameter]:
        for layer in self.encoder.layers:
            yield from layer.shared.parameters()
            if layer.shared_gate is not None:
                yield from layer.shared_gate.parameters()

    def zero_grad_share_params(self) -> None:
        for p in self.get_share_params():
            p.grad = None

    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        tasks = [t for t in self.task_name if task_name is None or t == task_name]
        reps = self.encoder(inputs, tasks)
        out = {}
        for task in tasks:
            out[task] = self.decoders[task](self._prepare_rep(reps[task], task, same_rep=False))
        return out
