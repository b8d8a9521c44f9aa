"""The synthetic stand-in: layout, determinism, distinct textures, learnable hardness."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtlbench.data import PUBLISHED_COLUMNS, read_published, write_synthetic
from mtlbench.errors import ConfigError, DataError


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _grey(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).mean(-1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "a", per_class=(16, 8, 8), image_size=64, seed=0)


def test_layout_matches_the_published_one(synthetic: Path):
    for stem in ("trainset", "validset", "testset"):
        df = pd.read_excel(synthetic / f"{stem}.xlsx")
        assert tuple(df.columns) == PUBLISHED_COLUMNS
        assert (df["Directory"] + "/" + df["Filename"] == df["Full path"]).all()
        assert df["Directory"].str.startswith(f"{stem}/").all()
        assert df["class label (object)"].dtype == np.int64
    table = read_published(synthetic)
    frame = table.frame
    ext = frame["relpath"].str.rsplit(".", n=1).str[1]
    assert set(ext[frame["label"].isin([0, 4])]) == {"tif"} and set(ext[~frame["label"].isin([0, 4])]) == {"jpg"}
    with Image.open(frame["path"].iloc[0]) as image:
        assert image.size == (64, 64) and image.format == "TIFF" and image.info.get("compression") == "tiff_lzw"
    with Image.open(frame.loc[frame["label"] == 1, "path"].iloc[0]) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
    assert [len(table.split(s)) for s in ("train", "valid", "test")] == [96, 48, 48]


def test_hardness_follows_the_real_class_statistics(synthetic: Path):
    train = read_published(synthetic).split("train")
    means = train.groupby("label")["target"].mean()
    for c, (mu, sd) in enumerate([(212, 16), (416, 12), (551, 10), (714, 15), (865, 27), (970, 57)]):
        assert abs(means[c] - mu) < 3 * sd / np.sqrt(16) + 1
    assert (train["target"] == train["target"].round()).all()  # integers, like the real sheets


def test_same_seed_same_bytes_other_seed_other_data(synthetic: Path, tmp_path: Path):
    again = write_synthetic(tmp_path / "b", per_class=(16, 8, 8), image_size=64, seed=0)
    assert _digest(again) == _digest(synthetic)
    a, b = read_published(synthetic).frame, read_published(again).frame
    assert a["label"].tolist() == b["label"].tolist() and a["target"].tolist() == b["target"].tolist()
    other = write_synthetic(tmp_path / "c", per_class=(16, 8, 8), image_size=64, seed=1)
    c = read_published(other).frame
    assert a["target"].tolist() != c["target"].tolist()
    assert not np.array_equal(_grey(a["path"].iloc[0]), _grey(c["path"].iloc[0]))


def _texture_features(grey: np.ndarray) -> np.ndarray:
    """Contrast-free, rotation-free texture description: radial power bands, anisotropy, skewness."""
    s = grey.shape[0]
    z = (grey - grey.mean()) / (grey.std() + 1e-9)
    power = np.abs(np.fft.fft2(z)) ** 2
    fy, fx = np.fft.fftfreq(s)[:, None] * s, np.fft.fftfreq(s)[None, :] * s
    radius, angle = np.hypot(fx, fy), np.mod(np.arctan2(fy, fx), np.pi)
    edges = [0.5, 2, 4, 8, 12, 18, 32]
    bands = np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    ring = (radius >= 2) & (radius < 24)
    sectors = np.sort([power[ring & (angle >= k * np.pi / 8) & (angle < (k + 1) * np.pi / 8)].sum() for k in range(8)])
    return np.concatenate([bands / bands.sum(), sectors[[0, -1]] / sectors.sum(), [(z**3).mean()]])


def test_class_textures_are_distinguishable(synthetic: Path):
    frame = read_published(synthetic).frame
    feats = np.array([_texture_features(_grey(p)) for p in frame["path"]])
    labels = frame["label"].to_numpy()
    train = (frame["split"] == "train").to_numpy()
    mu, sd = feats[train].mean(0), feats[train].std(0) + 1e-9
    z = (feats - mu) / sd
    centroids = np.array([z[train & (labels == c)].mean(0) for c in range(6)])
    # Every pair of classes has clearly separated mean texture features.
    gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    assert gaps[~np.eye(6, dtype=bool)].min() > 1.0
    predicted = np.argmin(((z[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == labels[~train]).mean() >= 0.85


def test_hardness_is_learnable_beyond_the_class_mean(synthetic: Path):
    frame = read_published(synthetic).frame
    contrast = np.array([_grey(p).std() for p in frame["path"]])
    for c in range(6):
        rows = (frame["label"] == c).to_numpy()
        r = np.corrcoef(contrast[rows], frame["target"].to_numpy()[rows])[0, 1]
        assert r > 0.9, (c, r)


def test_options_are_checked(tmp_path: Path, synthetic: Path):
    with pytest.raises(ConfigError):
        write_synthetic(tmp_path / "x", per_class=(4, 0, 1))
    with pytest.raises(ConfigError):
        write_synthetic(tmp_path / "x", image_size=4)
    with pytest.raises(DataError, match="not empty"):
        write_synthetic(synthetic, per_class=(1, 1, 1))
    assert not (tmp_path / "x").exists()


def test_overwrite_and_other_class_counts(tmp_path: Path):
    out = write_synthetic(tmp_path / "o", per_class=(1, 1, 1), image_size=16, num_classes=3)
    assert read_published(out).class_names == ("0", "1", "2")
    write_synthetic(out, per_class=(2, 1, 1), image_size=16, num_classes=8, overwrite=True)
    table = read_published(out)
    assert table.num_classes == 8 and len(table.split("train")) == 16
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # no temporary folders left behind


def test_failure_midway_leaves_no_partial_folder(tmp_path: Path, monkeypatch):
    import mtlbench.data.synth as synth

    write_sheet = synth._write_sheet

    def failing(path: Path, rows: list[tuple]) -> None:
        if path.name == "validset.xlsx":
            raise RuntimeError("interrupted")
        write_sheet(path, rows)

    out = write_synthetic(tmp_path / "o", per_class=(1, 1, 1), image_size=16, num_classes=2)
    before = _digest(out)
    monkeypatch.setattr(synth, "_write_sheet", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_synthetic(tmp_path / "new", per_class=(1, 1, 1), image_size=16)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_synthetic(out, per_class=(2, 1, 1), image_size=16, overwrite=True)
    assert _digest(out) == before  # the previous data set is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
