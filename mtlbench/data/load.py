"""The one way a data set is loaded for runs: a :class:`DataRef` names it (source, table options, image side, cache
folder), :func:`load_data` reads the table and, given a device, decodes its images there."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from mtlbench.data.device import DeviceData
from mtlbench.data.sources import resolve_dataset
from mtlbench.data.table import ImageTable
from mtlbench.errors import DataWarning


@dataclass(frozen=True)
class DataRef:
    """What a process needs to load the same data: the source, table options, image side and cache folder.
    Picklable, so it travels to worker processes."""

    source: str
    options: dict[str, Any] = field(default_factory=dict)
    side: int = 224
    cache_dir: str | None = None

    @staticmethod
    def from_spec_data(data: dict[str, Any], side: int, cache_dir: str | None = None) -> "DataRef":
        """A sweep spec's ``[data]`` table: ``source`` plus the table options."""
        return DataRef(source=str(data.get("source", "default")),
                       options={k: v for k, v in data.items() if k != "source"}, side=side, cache_dir=cache_dir)


def load_data(ref: DataRef, device: torch.device | None = None, *, batch_size: int | None = None,
              show_warnings: bool = True) -> tuple[ImageTable, DeviceData | None]:
    """The table of ``ref`` (checked; ``batch_size`` adds the small-class check) and, with a ``device``, its images
    decoded (or memory-mapped from the cache) there. ``show_warnings=False`` in workers: the driver loaded the same
    data and showed its warnings once."""
    with warnings.catch_warnings():
        if not show_warnings:
            warnings.simplefilter("ignore", DataWarning)
        table = resolve_dataset(ref.source, cache_dir=ref.cache_dir, table_options=ref.options or None,
                                batch_size=batch_size)
    if device is None:
        return table, None
    return table, DeviceData.from_table(table, ref.side, device, cache_dir=ref.cache_dir)
