"""read_table on users' own CSV / .xlsx / .parquet tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtlbench.data import SPLITS, read_table
from mtlbench.errors import DataError


def _images(folder: Path, count: int) -> list[str]:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img/im{i:03d}.png"
        Image.fromarray(np.full((8, 8, 3), i * 7 % 256, np.uint8)).save(folder / name)
        names.append(name)
    return names


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    names = _images(tmp_path, 21)
    classes = ["ferrite", "bainite", "martensite"] * 7
    df = pd.DataFrame(
        {
            "path": names,
            "label": classes,
            "target": np.linspace(100.0, 900.0, 21),
            "split": (["train"] * 5 + ["valid", "test"]) * 3,
        }
    )
    df.to_csv(tmp_path / "table.csv", index=False)
    return tmp_path


def test_csv_with_string_classes_and_split_column(table_dir: Path):
    table = read_table(table_dir / "table.csv")
    frame = table.frame
    assert list(frame.columns) == ["path", "relpath", "label", "target", "split"]
    assert frame["label"].dtype == np.int64 and frame["target"].dtype == np.float64
    assert table.class_names == ("bainite", "ferrite", "martensite")  # sorted unique values
    assert frame["label"].tolist()[:3] == [1, 0, 2]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])
    assert frame["relpath"].iloc[0] == "img/im000.png"
    assert table.name == "table" and table.num_classes == 3
    assert len(table.split("train")) == 15 and len(table.split("valid")) == 3
    assert table.split("test").index.tolist() == [0, 1, 2]
    stats = table.target_stats("train")
    assert set(stats) == {"min", "mean", "std", "max"} and stats["min"] == 100.0


@pytest.mark.parametrize("suffix", [".xlsx", ".parquet"])
def test_xlsx_and_parquet_without_split_column_get_a_seeded_split(table_dir: Path, suffix: str):
    df = pd.read_csv(table_dir / "table.csv").drop(columns=["split"])
    df["label"] = [0, 1, 2] * 7
    out = table_dir / f"t{suffix}"
    df.to_excel(out, index=False) if suffix == ".xlsx" else df.to_parquet(out, index=False)
    a = read_table(out, seed=1)
    b = read_table(out, seed=1)
    assert a.frame["split"].tolist() == b.frame["split"].tolist()
    assert set(a.frame["split"]) == set(SPLITS)
    for c in range(3):
        assert set(a.frame.loc[a.frame["label"] == c, "split"]) == set(SPLITS)
    assert a.class_names == ("0", "1", "2")


def test_custom_columns_root_and_split_col_none(table_dir: Path, tmp_path: Path):
    df = pd.read_csv(table_dir / "table.csv").rename(columns={"path": "file", "label": "kind", "target": "hv"})
    elsewhere = tmp_path / "sheets"
    elsewhere.mkdir()
    df.to_csv(elsewhere / "mine.csv", index=False)
    table = read_table(
        elsewhere / "mine.csv", image_col="file", class_col="kind", target_col="hv", split_col=None, root=table_dir, name="x"
    )
    assert table.name == "x" and len(table.frame) == 21
    assert table.root == table_dir.absolute()


def _expect(path: Path, *fragments: str, **kw):
    with pytest.raises(DataError) as info:
        read_table(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_errors_missing_file_and_bad_suffix(tmp_path: Path):
    _expect(tmp_path / "nope.csv", "nope.csv", "not found")
    (tmp_path / "t.json").write_text("{}")
    _expect(tmp_path / "t.json", "t.json", ".json")


def test_error_missing_columns_names_them_and_lists_found(table_dir: Path):
    df = pd.read_csv(table_dir / "table.csv").drop(columns=["target"])
    df.to_csv(table_dir / "bad.csv", index=False)
    _expect(table_dir / "bad.csv", "'target'", "found columns", "'path'", "'label'")


def test_error_unknown_split_value(table_dir: Path):
    df = pd.read_csv(table_dir / "table.csv")
    df.loc[4, "split"] = "holdout"
    df.to_csv(table_dir / "bad.csv", index=False)
    _expect(table_dir / "bad.csv", "'holdout'", "row 6", "'split'")


def test_error_non_numeric_target(table_dir: Path):
    df = pd.read_csv(table_dir / "table.csv")
    df["target"] = df["target"].astype(object)
    df.loc[2, "target"] = "hard"
    df.to_csv(table_dir / "bad.csv", index=False)
    _expect(table_dir / "bad.csv", "'target'", "'hard'", "row 4")


def test_error_nan_label_and_nan_target(table_dir: Path):
    df = pd.read_csv(table_dir / "table.csv")
    df.loc[3, "label"] = None
    df.to_csv(table_dir / "bad.csv", index=False)
    _expect(table_dir / "bad.csv", "'label'", "row 5", "empty")
    df = pd.read_csv(table_dir / "table.csv")
    df.loc[7, "target"] = np.nan
    df.to_csv(table_dir / "bad2.csv", index=False)
    _expect(table_dir / "bad2.csv", "'target'", "row 9", "empty")


def test_error_missing_images_names_first_and_count(table_dir: Path):
    (table_dir / "img" / "im004.png").unlink()
    (table_dir / "img" / "im009.png").unlink()
    _expect(table_dir / "table.csv", "im004.png", "2 of 21")


def test_error_empty_table(tmp_path: Path):
    pd.DataFrame({"path": [], "label": [], "target": []}).to_csv(tmp_path / "e.csv", index=False)
    _expect(tmp_path / "e.csv", "e.csv", "no rows")


def test_error_unreadable_table(tmp_path: Path):
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip at all")
    _expect(tmp_path / "broken.xlsx", "broken.xlsx")
