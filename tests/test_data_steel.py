"""read_published on the real sheets, on a synthetic set, and on every kind of broken input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlbench.data import PUBLISHED_COLUMNS, ImageTable, read_published, write_synthetic
from mtlbench.errors import DataError

from conftest import SHARED_STEEL as REAL, needs_real


@needs_real
def test_real_sheets():
    table = read_published(REAL)
    frame = table.frame
    assert table.name == "advanced-steel-property"
    assert list(frame.columns) == ["path", "relpath", "label", "target", "split"]
    assert len(frame) == 4536
    assert [len(table.split(s)) for s in ("train", "valid", "test")] == [3240, 648, 648]
    assert table.num_classes == 6 and table.class_names == ("0", "1", "2", "3", "4", "5")
    assert frame["target"].min() == 179 and frame["target"].max() == 1146
    assert frame["label"].dtype == np.int64 and frame["target"].dtype == np.float64
    # Balanced: 540 / 108 / 108 per class.
    counts = frame.groupby(["split", "label"]).size()
    assert set(counts.loc["train"]) == {540} and set(counts.loc["valid"]) == {108} and set(counts.loc["test"]) == {108}
    # .tif for classes 0 and 4, .jpg otherwise; relpaths as listed in the sheets.
    ext = frame["relpath"].str.rsplit(".", n=1).str[1]
    assert set(ext[frame["label"].isin([0, 4])]) == {"tif"}
    assert set(ext[~frame["label"].isin([0, 4])]) == {"jpg"}
    assert frame["relpath"].iloc[0].startswith("trainset/0/")
    assert frame["path"].iloc[0] == str(REAL / frame["relpath"].iloc[0])
    # Class means of the train split match the published statistics.
    means = table.split("train").groupby("label")["target"].mean().round().tolist()
    assert means == [212, 416, 551, 714, 865, 970]
    assert len(table.fingerprint()) == 16


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("steel") / "syn", per_class=(4, 2, 2), image_size=16, seed=0)


@pytest.fixture
def copy(synthetic: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic, tmp_path / "copy"))


def test_synthetic_set_reads_like_the_real_one(synthetic: Path, tmp_path: Path):
    table = read_published(synthetic, name="syn")
    assert isinstance(table, ImageTable)
    assert [len(table.split(s)) for s in ("train", "valid", "test")] == [24, 12, 12]
    assert table.class_names == tuple(str(c) for c in range(6))
    assert set(table.frame["label"]) == set(range(6))
    # A fresh copy of the same data has the same fingerprint (no mtimes).
    moved = Path(shutil.copytree(synthetic, tmp_path / "elsewhere"))
    assert read_published(moved).fingerprint() == table.fingerprint()


def _rewrite(folder: Path, sheet: str, change) -> None:
    path = folder / f"{sheet}.xlsx"
    df = pd.read_excel(path, dtype=object)
    df = change(df)
    df.to_excel(path, index=False)


def _expect(folder: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        read_published(folder)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_folder(tmp_path: Path):
    _expect(tmp_path / "absent", "absent", "not found")


def test_missing_sheet(copy: Path):
    (copy / "validset.xlsx").unlink()
    _expect(copy, "validset.xlsx")


def test_missing_column(copy: Path):
    _rewrite(copy, "testset", lambda df: df.drop(columns=["regression label (property hardness)"]))
    _expect(copy, "testset.xlsx", "regression label (property hardness)", "missing")


def test_extra_column(copy: Path):
    _rewrite(copy, "trainset", lambda df: df.assign(notes="x"))
    _expect(copy, "trainset.xlsx", "'notes'")


def test_non_numeric_label_names_sheet_column_row_value(copy: Path):
    def change(df):
        df.loc[3, "class label (object)"] = "pearlite"
        return df

    _rewrite(copy, "validset", change)
    _expect(copy, "validset.xlsx", "class label (object)", "row 5", "'pearlite'")


def test_fractional_label_is_wrong_type(copy: Path):
    def change(df):
        df.loc[0, "class label (object)"] = 2.5
        return df

    _rewrite(copy, "trainset", change)
    _expect(copy, "trainset.xlsx", "class label (object)", "row 2", "2.5")


def test_non_numeric_hardness(copy: Path):
    def change(df):
        df.loc[1, "regression label (property hardness)"] = "soft"
        return df

    _rewrite(copy, "testset", change)
    _expect(copy, "testset.xlsx", "regression label (property hardness)", "row 3", "'soft'")


def test_missing_image(copy: Path):
    victim = sorted((copy / "trainset" / "3").iterdir())[1]
    victim.unlink()
    _expect(copy, victim.name, "1 of 48")


def test_columns_are_the_published_ones():
    assert PUBLISHED_COLUMNS == (
        "Directory",
        "Filename",
        "Full path",
        "class label (object)",
        "regression label (property hardness)",
    )
