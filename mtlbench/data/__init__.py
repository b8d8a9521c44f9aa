"""Data layer: tables of images with a class and a hardness target, readers, a synthetic stand-in,
the fetcher for the published set, a decoded-pixel cache and device-resident batches."""

from .cache import decode_images, default_cache_dir
from .device import IMAGENET_MEAN, IMAGENET_STD, DeviceData, SplitTensors
from .fetch import DEFAULT_URL, fetch, verify
from .sources import resolve_dataset, summarize
from .splits import stratified_split
from .steel import PUBLISHED_COLUMNS, PUBLISHED_SHEETS, read_published
from .synth import write_synthetic
from .table import SPLITS, ImageTable, read_table

__all__ = [
    "DEFAULT_URL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PUBLISHED_COLUMNS",
    "PUBLISHED_SHEETS",
    "SPLITS",
    "DeviceData",
    "ImageTable",
    "SplitTensors",
    "decode_images",
    "default_cache_dir",
    "fetch",
    "read_published",
    "read_table",
    "resolve_dataset",
    "stratified_split",
    "summarize",
    "verify",
    "write_synthetic",
]
