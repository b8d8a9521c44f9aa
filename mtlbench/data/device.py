"""Whole splits resident on the training device as uint8; batches normalised (and flipped) there."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mtlbench.errors import ConfigError, DataError

from .cache import decode_images
from .table import SPLITS, ImageTable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SplitTensors:
    images: torch.Tensor  # uint8 [n, 3, s, s] on the device
    labels: torch.Tensor  # int64 [n]
    targets: torch.Tensor  # float32 [n]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DeviceData:
    """The decoded images of every split, moved to ``device`` once.

    ``batches`` yields ``(x, labels, targets, index)``: ``x`` float [b, 3, s, s] normalised with the
    ImageNet mean/std on the device, ``index`` the row numbers of the batch within its split (the
    index of ``table.split(name)``).
    """

    def __init__(
        self,
        splits: dict[str, SplitTensors],
        num_classes: int,
        side: int,
        device: torch.device | str,
        class_names: tuple[str, ...] = (),
        name: str = "",
    ) -> None:
        self.splits = splits
        self.num_classes = int(num_classes)
        self.side = int(side)
        self.device = torch.device(device)
        self.class_names = tuple(class_names)
        self.name = name
        self._scale: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_table(
        cls,
        table: ImageTable,
        side: int,
        device: torch.device | str,
        cache_dir: str | os.PathLike | None = None,
    ) -> "DeviceData":
        device = torch.device(device)
        pixels = decode_images(table, side, cache_dir)
        split_col = np.asarray(table.frame["split"], dtype=object)
        labels_all = torch.tensor(np.array(table.frame["label"], dtype=np.int64))
        targets_all = torch.tensor(np.array(table.frame["target"], dtype=np.float32))
        splits: dict[str, SplitTensors] = {}
        for name in SPLITS:
            found = np.flatnonzero(split_col == name)
            rows = torch.from_numpy(found.astype(np.int64))
            if len(found) and found[-1] - found[0] + 1 == len(found):
                # Contiguous rows (the published layout): a view, so a CPU "device" keeps the memory map.
                images = pixels[int(found[0]) : int(found[-1]) + 1]
            else:
                images = pixels.index_select(0, rows)
            splits[name] = SplitTensors(
                images=images.to(device),
                labels=labels_all.index_select(0, rows).to(device),
                targets=targets_all.index_select(0, rows).to(device),
            )
        return cls(splits, table.num_classes, side, device, table.class_names, table.name)

    def _get(self, split: str) -> SplitTensors:
        try:
            return self.splits[split]
        except KeyError:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(self.splits)}") from None

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        if batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        n = len(self._get(split))
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias) so that ``x = uint8 * scale + bias`` equals ``(uint8 / 255 - mean) / std``."""
        if torch.float32 not in self._scale:
            mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
            self._scale[torch.float32] = (1.0 / (255.0 * std), -mean / std)
        return self._scale[torch.float32]

    def normalise(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale, bias = self._affine()
        x = images.to(torch.float32).mul_(scale).add_(bias)
        return x if dtype == torch.float32 else x.to(dtype)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        flip: bool = False,
        channels_last: bool = False,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, labels, targets, index)`` batches of one split.

        ``shuffle`` permutes the rows and ``flip`` applies independent random horizontal and vertical
        flips per image, both drawn from ``generator`` (the global generator when None) so a seeded
        generator gives the same batches."""
        data = self._get(split)
        count = self.num_batches(split, batch_size, drop_last)
        n = len(data)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if shuffle:
            order = torch.randperm(n, generator=generator, device=gen_device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for b in range(count):
            index = order[b * batch_size : (b + 1) * batch_size]
            images = data.images.index_select(0, index)
            if flip and len(index):
                bits = torch.randint(0, 2, (len(index), 2), generator=generator, device=gen_device).to(self.device).bool()
                # ``images`` is a fresh copy (index_select), so flipping the chosen rows in place is safe.
                horizontal = bits[:, 0].nonzero().view(-1)
                if len(horizontal):
                    images[horizontal] = images.index_select(0, horizontal).flip(3)
                vertical = bits[:, 1].nonzero().view(-1)
                if len(vertical):
                    images[vertical] = images.index_select(0, vertical).flip(2)
            x = self.normalise(images, dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, data.labels.index_select(0, index), data.targets.index_select(0, index), index
