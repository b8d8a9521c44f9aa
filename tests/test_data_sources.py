"""resolve_dataset specs and the summary table behind `mtlbench data info`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlbench.data import read_published, resolve_dataset, summarize, write_synthetic
from mtlbench.errors import DataError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("sources") / "syn", per_class=(3, 1, 1), image_size=16, seed=5)


def test_default_is_generated_once_into_the_cache(tmp_path: Path):
    table = resolve_dataset("default", cache_dir=tmp_path)
    folder = tmp_path / "datasets" / "default-synthetic-v2"
    assert (folder / "trainset.xlsx").is_file()
    assert [len(table.split(s)) for s in ("train", "valid", "test")] == [240, 48, 48]
    assert table.num_classes == 6 and table.name == "synthetic-64px-seed0"
    stamp = (folder / "trainset.xlsx").stat().st_mtime_ns
    again = resolve_dataset("default", cache_dir=tmp_path)
    assert (folder / "trainset.xlsx").stat().st_mtime_ns == stamp
    assert again.fingerprint() == table.fingerprint()
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == ["default-synthetic-v2"]


def test_steel_missing_tells_to_fetch(tmp_path: Path):
    with pytest.raises(DataError, match="mtlbench data fetch"):
        resolve_dataset("steel", cache_dir=tmp_path)


def test_steel_present(synthetic: Path, tmp_path: Path):
    shutil.copytree(synthetic, tmp_path / "datasets" / "advanced-steel-property")
    table = resolve_dataset("steel", cache_dir=tmp_path)
    assert table.name == "advanced-steel-property" and len(table.frame) == 30


def test_folder_and_table_specs(synthetic: Path, tmp_path: Path):
    table = resolve_dataset(synthetic, cache_dir=tmp_path)
    assert table.name == "syn" and len(table.frame) == 30
    frame = table.frame.assign(kind=lambda f: "c" + f["label"].astype(str))
    frame[["path", "kind", "target"]].to_parquet(tmp_path / "mine.parquet")
    own = resolve_dataset(str(tmp_path / "mine.parquet"), table_options={"class_col": "kind", "seed": 1})
    assert own.class_names == tuple(f"c{i}" for i in range(6)) and set(own.frame["split"]) == {"train", "valid", "test"}


def test_unknown_specs(tmp_path: Path):
    with pytest.raises(DataError, match="'nonsense'"):
        resolve_dataset("nonsense", cache_dir=tmp_path)
    with pytest.raises(DataError, match="gone.csv"):
        resolve_dataset(tmp_path / "gone.csv", cache_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt"):
        resolve_dataset(tmp_path / "notes.txt", cache_dir=tmp_path)
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(DataError, match="trainset.xlsx"):
        resolve_dataset(empty, cache_dir=tmp_path)


def test_summarize(synthetic: Path):
    table = read_published(synthetic)
    summary = summarize(table)
    assert list(summary.columns) == ["split", "class", "label", "count", "target_min", "target_mean", "target_max"]
    assert len(summary) == 3 * (6 + 1)
    totals = summary[summary["class"] == "all"].set_index("split")["count"]
    assert totals.to_dict() == {"train": 18, "valid": 6, "test": 6}
    row = summary[(summary["split"] == "train") & (summary["class"] == "2")].iloc[0]
    part = table.split("train")
    values = part.loc[part["label"] == 2, "target"]
    assert row["count"] == 3 and row["target_min"] == values.min() and np.isclose(row["target_mean"], values.mean())
    assert isinstance(summary, pd.DataFrame)
