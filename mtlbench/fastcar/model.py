"""FastCAR's model: a single-task ResNet-18 regressor (FastCAR paper, sec. 3 and 4.1)."""

from __future__ import annotations

import torch
from torch import nn

from mtlbench.models.encoder import EncoderFactory


class Regressor(nn.Module):
    """The torchvision ResNet-18 with a one-output fc: it predicts the hybrid label."""

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder = EncoderFactory(pretrained)()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.encoder.feature_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.encoder(x)), 1)).squeeze(1)
