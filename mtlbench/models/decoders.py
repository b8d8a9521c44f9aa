"""The paper's two decoder heads (FastCAR paper, section 4.1), built from a feature map.

Decoder-1: adaptive average pooling -> fc 512 + BatchNorm1d + ReLU + Dropout(0.5) -> fc out.
Decoder-2: two conv blocks (conv + BatchNorm2d + ReLU), channels doubling (512 -> 1024 -> 2048), each halving the
feature map (7x7 -> 4x4 -> 2x2 at 224 px) -> pooling -> one more fc block -> Decoder-1's fc 512 block -> fc out.

Where the paper is silent we chose, and say so here:
- conv blocks are 3x3, stride 2, padding 1: the only common kernel that takes 7x7 to 4x4 and 4x4 to 2x2;
- Decoder-2's extra fc (after pooling) maps 2048 -> 512 with BatchNorm1d + ReLU, no dropout (the paper lists
  dropout only for Decoder-1's block, which follows it unchanged);
- the output layer is a plain Linear: ``num_classes`` logits for classification, one value for regression.
"""

from __future__ import annotations

from torch import nn

from mtlbench.models.encoder import FEATURE_DIM
from mtlbench.registry import Registry

DECODERS: Registry = Registry("decoder")


def _fc_block(n_in: int, n_out: int, dropout: float | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return layers


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@DECODERS.register("decoder1", reference="FastCAR paper, sec. 4.1 (Decoder-1)",
                   defaults={"hidden": 512, "dropout": 0.5},
                   summary="pool -> fc 512 + BN + ReLU + dropout 0.5 -> fc out")
def decoder1(out_features: int, in_channels: int = FEATURE_DIM, hidden: int = 512, dropout: float = 0.5) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_fc_block(in_channels, hidden, dropout),
                         nn.Linear(hidden, out_features))


@DECODERS.register("decoder2", reference="FastCAR paper, sec. 4.1 (Decoder-2)",
                   defaults={"hidden": 512, "dropout": 0.5},
                   summary="2 x (conv 3x3/2 + BN + ReLU, channels x2) -> pool -> fc -> Decoder-1 head")
def decoder2(out_features: int, in_channels: int = FEATURE_DIM, hidden: int = 512, dropout: float = 0.5) -> nn.Module:
    c1, c2 = 2 * in_channels, 4 * in_channels
    return nn.Sequential(*_conv_block(in_channels, c1), *_conv_block(c1, c2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *_fc_block(c2, hidden, None), *_fc_block(hidden, hidden, dropout),
                         nn.Linear(hidden, out_features))


def build_decoder(name: str, out_features: int, **overrides: object) -> nn.Module:
    entry = DECODERS.entry(name)
    return entry.obj(out_features, **{**entry.defaults, **overrides})
