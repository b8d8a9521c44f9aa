"""DeviceData: splits resident as uint8, normalised/flipped batches drawn from a generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mtlbench.data import IMAGENET_MEAN, IMAGENET_STD, DeviceData, read_published, read_table, write_synthetic
from mtlbench.errors import DataWarning


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("device") / "syn", per_class=(4, 2, 1), image_size=16, seed=3)
    return read_published(root, name="tiny")


@pytest.fixture(scope="module")
def data(table, tmp_path_factory) -> DeviceData:
    return DeviceData.from_table(table, 16, "cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_splits_are_resident_with_the_right_dtypes(data: DeviceData, table):
    assert set(data.splits) == {"train", "valid", "test"}
    assert data.num_classes == 6 and data.side == 16 and data.device == torch.device("cpu")
    for name, n in (("train", 24), ("valid", 12), ("test", 6)):
        split = data.splits[name]
        assert split.images.dtype == torch.uint8 and split.images.shape == (n, 3, 16, 16)
        assert split.labels.dtype == torch.int64 and split.targets.dtype == torch.float32
        rows = table.split(name)
        assert split.labels.tolist() == rows["label"].tolist()
        assert np.allclose(split.targets.numpy(), rows["target"].to_numpy())


def test_batches_shapes_order_and_normalisation(data: DeviceData):
    assert data.num_batches("train", 10) == 3 and data.num_batches("train", 10, drop_last=True) == 2
    batches = list(data.batches("train", 10))
    assert [b[0].shape[0] for b in batches] == [10, 10, 4]
    x, labels, targets, index = batches[0]
    assert x.dtype == torch.float32 and x.shape == (10, 3, 16, 16)
    assert labels.dtype == torch.int64 and targets.dtype == torch.float32 and index.tolist() == list(range(10))
    split = data.splits["train"]
    assert torch.allclose(x, _normalise(split.images[:10]), atol=1e-5)
    assert len(list(data.batches("train", 10, drop_last=True))) == 2


def test_shuffle_covers_every_row_once_and_is_seeded(data: DeviceData):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b[3] for b in data.batches("train", 5, shuffle=True, generator=g)])

    order = run(0)
    assert sorted(order.tolist()) == list(range(24))
    assert torch.equal(order, run(0)) and not torch.equal(order, run(1))
    g = torch.Generator().manual_seed(0)
    for x, labels, targets, index in data.batches("train", 7, shuffle=True, generator=g):
        assert torch.equal(labels, data.splits["train"].labels[index])
        assert torch.equal(targets, data.splits["train"].targets[index])


def test_flips_are_deterministic_given_a_generator_and_are_flips(data: DeviceData):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [b[0] for b in data.batches("train", 24, flip=True, generator=g)][0]

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = _normalise(data.splits["train"].images)
    variants = [plain, plain.flip(3), plain.flip(2), plain.flip(2).flip(3)]
    which = [[torch.allclose(a[i], v[i], atol=1e-5) for v in variants].index(True) for i in range(24)]
    assert len(set(which)) > 1  # both flipped and unflipped images occur
    unflipped = [x for x, *_ in data.batches("train", 24, flip=False, generator=torch.Generator().manual_seed(5))][0]
    assert torch.allclose(unflipped, plain, atol=1e-5)


def test_channels_last_and_dtype(data: DeviceData):
    x, *_ = next(data.batches("valid", 4, channels_last=True, dtype=torch.bfloat16))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


def test_imagenet_mean_image_normalises_to_zero(tmp_path: Path):
    pixel = np.round(np.asarray(IMAGENET_MEAN) * 255).astype(np.uint8)
    names = []
    for i in range(3):
        name = f"mean{i}.png"
        Image.fromarray(np.broadcast_to(pixel, (8, 8, 3)).copy()).save(tmp_path / name)
        names.append(name)
    pd.DataFrame({"path": names, "label": [0, 0, 0], "target": [1.0, 2.0, 3.0], "split": ["train", "valid", "test"]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    # The same image in every split on purpose (and one class, so valid and test hold none unseen in training).
    with pytest.warns(DataWarning, match="allowed by allow_overlap"):
        table = read_table(tmp_path / "t.csv", allow_overlap=True)
    data = DeviceData.from_table(table, 8, "cpu", cache_dir=tmp_path / "cache")
    x, *_ = next(data.batches("train", 8))
    assert x.shape == (1, 3, 8, 8)
    assert x.abs().max() < 0.01
    assert abs(float(x.mean())) < 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_device(table, tmp_path: Path):
    data = DeviceData.from_table(table, 16, "cuda", cache_dir=tmp_path)
    assert data.splits["train"].images.is_cuda
    g = torch.Generator(device="cuda").manual_seed(0)
    x, labels, targets, index = next(data.batches("train", 8, shuffle=True, flip=True, generator=g))
    assert x.is_cuda and labels.is_cuda and x.shape == (8, 3, 16, 16)
    g_cpu = torch.Generator().manual_seed(0)
    x2, *_ = next(data.batches("train", 8, shuffle=True, flip=True, generator=g_cpu))
    assert x2.is_cuda



def _mappings_of(path_part: str) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and path_part in fields[-1]:
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_resident_data_is_the_shared_memory_map_on_cpu(tmp_path: Path):
    """The speed issue's memory target: the decoded set costs its uint8 size once. On a CPU device every split is a
    view of the memory-mapped cache file (file-backed pages, shared by every process and every load that maps it),
    not a private copy; batches only allocate their own float32 tensors."""
    root = write_synthetic(tmp_path / "syn", per_class=(4, 2, 2), image_size=32, seed=5)
    table = read_published(root, name="mem")
    loads = [DeviceData.from_table(table, 32, "cpu", cache_dir=tmp_path / "cache") for _ in range(2)]
    files = list((tmp_path / "cache" / "images").glob("*.u8"))
    assert len(files) == 1
    ranges = _mappings_of(str(files[0].resolve()))
    assert ranges, "the cache file is not memory-mapped"
    for d in loads:
        for name, split in d.splits.items():
            start = split.images.data_ptr()
            end = start + split.images.numel()
            assert any(lo <= start and end <= hi for lo, hi in ranges), f"split {name} is a private copy"
    assert sum(s.images.numel() for s in loads[0].splits.values()) == files[0].stat().st_size == 48 * 3 * 32 * 32
