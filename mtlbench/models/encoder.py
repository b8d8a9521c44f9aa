"""ResNet-18 trunk (conv1 ... layer4, feature map out) with the attribute names LibMTL's ResNet-based
architectures read: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ... ``layer4`` and ``feature_dim``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from mtlbench.errors import ConfigError

FEATURE_DIM = 512


def torch_cache_checkpoint(weights: ResNet18_Weights = ResNet18_Weights.IMAGENET1K_V1) -> Path:
    """Where torch.hub keeps torchvision's ImageNet checkpoint (respects ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_imagenet_state(allow_download: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's ResNet-18 ImageNet weights from the local torch cache, downloading them if allowed.

    Raises a :class:`ConfigError` naming the cache path when they are neither cached nor downloadable: a run asked
    for pretrained weights never silently falls back to random ones.
    """
    weights = ResNet18_Weights.IMAGENET1K_V1
    path = torch_cache_checkpoint(weights)
    if not path.exists():
        if not allow_download:
            raise ConfigError(f"pretrained ResNet-18 weights not found at {path}; copy {os.path.basename(path)} "
                              f"there (from {weights.url}) or run without --pretrained")
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # no network, proxy, hash mismatch...
            raise ConfigError(f"pretrained ResNet-18 weights are not in the torch cache ({path}) and could not be "
                              f"downloaded ({type(exc).__name__}); place {os.path.basename(path)} there from "
                              f"{weights.url} or run without --pretrained") from None
    return torch.load(path, map_location="cpu", weights_only=True)


class ResNet18Trunk(nn.Module):
    """torchvision ResNet-18 without ``avgpool`` and ``fc``: images in, a 512-channel feature map out."""

    feature_dim = FEATURE_DIM

    def __init__(self, pretrained: bool = False, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        net = resnet18(weights=None)
        if pretrained:
            net.load_state_dict(state_dict if state_dict is not None else load_imagenet_state())
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class EncoderFactory:
    """A picklable zero-argument encoder constructor, as LibMTL's ``encoder_class`` must be.

    The ImageNet state is read once and shared by every expert / task copy an architecture builds.
    """

    def __init__(self, pretrained: bool = False) -> None:
        self.pretrained = pretrained
        self._state = load_imagenet_state() if pretrained else None

    def __call__(self) -> ResNet18Trunk:
        return ResNet18Trunk(self.pretrained, self._state)
