"""Build one MTL grid cell's model the way LibMTL's Trainer composes it: architecture x weighting, ResNet-18
encoder, one decoder per task (``cls``: class logits, ``reg``: one value)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlbench.libmtl_compat import compose
from mtlbench.methods.architectures import ARCHITECTURES
from mtlbench.methods.weightings import WEIGHTINGS, backward_kwargs
from mtlbench.models.decoders import DECODERS, build_decoder
from mtlbench.models.encoder import EncoderFactory

TASKS = ("cls", "reg")


@dataclass
class CellModel:
    """One grid cell's composed LibMTL model, the keywords its weighting's ``backward`` takes, and what it records."""

    module: nn.Module
    backward_kwargs: dict[str, Any]
    hparams: dict[str, Any]   # everything the defaults table contributed, recorded with the run
    samples: int = 1          # independent batches the weighting takes per step (MoDo, SDMGrad: 3)


def build_mtl_model(architecture: str, weighting: str, decoder: str, *, num_classes: int, img_size: int,
                    device: torch.device, pretrained: bool = False, arch_args: dict | None = None,
                    weight_args: dict | None = None) -> CellModel:
    arch = ARCHITECTURES.entry(architecture)
    weight = WEIGHTINGS.entry(weighting)
    dec = DECODERS.entry(decoder)
    kwargs, rep_grad = backward_kwargs(weight.name, weight_args)
    arch_kwargs = {**arch.defaults, **(arch_args or {}), "img_size": [3, img_size, img_size]}
    decoders = nn.ModuleDict({"cls": build_decoder(dec.name, num_classes), "reg": build_decoder(dec.name, 1)})
    cls = compose(arch.obj, weight.obj)
    module = cls(task_name=list(TASKS), encoder_class=EncoderFactory(pretrained), decoders=decoders,
                 rep_grad=rep_grad, multi_input=False, device=device, **arch_kwargs).to(device)
    samples = int(weight.trait("samples", 1))
    hparams = {"architecture": {k: v for k, v in arch_kwargs.items()}, "weighting": dict(kwargs),
               "rep_grad": rep_grad, "decoder": dict(dec.defaults), "samples_per_step": samples}
    return CellModel(module, kwargs, hparams, samples)

