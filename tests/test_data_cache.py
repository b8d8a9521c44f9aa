"""decode_images: decode once, memory-map afterwards, new data -> new file, broken images -> DataError."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mtlbench.data import ImageTable, decode_images, default_cache_dir, read_published, write_synthetic
from mtlbench.errors import DataError

from conftest import SHARED_STEEL as REAL, needs_real


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("cache") / "syn", per_class=(3, 1, 1), image_size=24, seed=2)


@pytest.fixture
def data(synthetic: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic, tmp_path / "data"))


def _files(cache: Path) -> list[str]:
    folder = cache / "images"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_decode_then_memory_map(data: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    table = read_published(data)
    first = decode_images(table, 24, cache)
    assert first.dtype == torch.uint8 and first.shape == (30, 3, 24, 24)
    # Pixels equal PIL's RGB decode, in frame order.
    for i in (0, 7, 29):
        expected = np.asarray(Image.open(table.frame["path"].iloc[i]).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(first[i].numpy(), expected)
    fp = table.fingerprint()
    assert _files(cache) == [f"{fp}-24px.json", f"{fp}-24px.u8"]
    meta = json.loads((cache / "images" / f"{fp}-24px.json").read_text())
    assert meta["shape"] == [30, 3, 24, 24]
    raw = cache / "images" / f"{fp}-24px.u8"
    stamp = raw.stat().st_mtime_ns

    # Break every image without changing its size: a decode would now fail, the cache must not decode.
    # Each gets its own filler byte: equal files in two splits would be refused as leakage.
    for i, path in enumerate(table.frame["path"]):
        size = os.path.getsize(path)
        Path(path).write_bytes(bytes([i + 1]) * size)
    fresh = read_published(data)
    assert fresh.fingerprint() == fp
    second = decode_images(fresh, 24, cache)
    assert torch.equal(first, second)
    assert raw.stat().st_mtime_ns == stamp


def test_other_side_and_changed_data_get_new_files(data: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    table = read_published(data)
    small = decode_images(table, 12, cache)
    assert small.shape == (30, 3, 12, 12)
    full = decode_images(table, 24, cache)
    # Antialiased bilinear downscale: close to a 2x2 box average of the full-size pixels.
    box = full.float().view(30, 3, 12, 2, 12, 2).mean(dim=(3, 5))
    assert (small.float() - box).abs().mean() < 12

    path = data / "trainset.xlsx"
    df = pd.read_excel(path)
    df.loc[0, "regression label (property hardness)"] += 1
    df.to_excel(path, index=False)
    changed = read_published(data)
    assert changed.fingerprint() != table.fingerprint()
    again = decode_images(changed, 24, cache)
    assert torch.equal(again, full)  # same pixels, stored under the new fingerprint
    assert len([n for n in _files(cache) if n.endswith(".u8")]) == 3


def test_corrupt_image_names_the_file_and_leaves_no_cache_file(data: Path, tmp_path: Path):
    table = read_published(data)
    victim = Path(table.frame["path"].iloc[5])
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        decode_images(read_published(data), 24, cache)
    assert str(victim) in str(info.value) and "\n" not in str(info.value)
    assert _files(cache) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_garbage_tif_is_a_data_error(data: Path, tmp_path: Path):
    table = read_published(data)
    victim = Path(table.frame.loc[table.frame["label"] == 4, "path"].iloc[0])
    victim.write_bytes(b"II*\0garbage-garbage-garbage")
    with pytest.raises(DataError, match=victim.name):
        decode_images(read_published(data), 24, tmp_path / "cache")


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MTLBENCH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mtlbench"


@needs_real
def test_real_tif_and_jpg_decode_to_rgb(tmp_path: Path):
    full = read_published(REAL)
    rows = full.frame.groupby("label", sort=True).head(1).reset_index(drop=True)
    table = ImageTable(name="real-sample", root=full.root, frame=rows, class_names=full.class_names)
    native = decode_images(table, 224, tmp_path)
    assert native.shape == (6, 3, 224, 224)
    for i, path in enumerate(rows["path"]):
        assert np.array_equal(native[i].numpy(), np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))
    small = decode_images(table, 32, tmp_path)
    assert small.shape == (6, 3, 32, 32)
    assert (small.float().mean() - native.float().mean()).abs() < 3


def test_interrupted_decode_keeps_the_previous_file_and_leaves_no_temporary(data: Path, tmp_path: Path, monkeypatch):
    cache = tmp_path / "cache"
    table = read_published(data)
    decode_images(table, 24, cache)
    raw = cache / "images" / f"{table.fingerprint()}-24px.u8"
    raw.write_bytes(b"stale")  # wrong size: the next call decodes again
    calls = []

    def failing(path: str, side: int) -> np.ndarray:
        calls.append(path)
        if len(calls) > 3:
            raise RuntimeError("interrupted")
        return np.zeros((3, side, side), np.uint8)

    monkeypatch.setattr("mtlbench.data.cache.decode_one", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        decode_images(table, 24, cache)
    assert raw.read_bytes() == b"stale"
    assert _files(cache) == [raw.with_suffix(".json").name, raw.name]


def test_unwritable_cache_decodes_into_memory(data: Path, tmp_path: Path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    pixels = decode_images(read_published(data), 24, blocker)
    assert pixels.shape == (30, 3, 24, 24) and blocker.read_text().startswith("a file")
