"""Load-time data checks, the same for the published layout and users' tables: classes the training split lacks,
images listed twice, images in two splits (by path or content), classes smaller than a batch; and the CLI."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli, small_spec
from mtlbench.data import read_published, read_table, resolve_dataset, write_synthetic
from mtlbench.errors import ConfigError, DataError, DataWarning

PATH, LABEL = "Full path", "class label (object)"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """3 classes x (3, 2, 2) images of 16 px, in the published layout."""
    return write_synthetic(tmp_path_factory.mktemp("checks") / "syn", per_class=(3, 2, 2), image_size=16, seed=0,
                           num_classes=3)


@pytest.fixture
def copy(synthetic: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic, tmp_path / "copy"))


def _rewrite(folder: Path, sheet: str, change) -> None:
    path = folder / f"{sheet}.xlsx"
    change(pd.read_excel(path, dtype=object)).to_excel(path, index=False)


def _append_rows(folder: Path, sheet: str, rows: pd.DataFrame) -> None:
    _rewrite(folder, sheet, lambda df: pd.concat([df, rows], ignore_index=True))


def _train_rows(folder: Path, idx: list[int]) -> pd.DataFrame:
    return pd.read_excel(folder / "trainset.xlsx", dtype=object).iloc[idx]


def _error(load, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _quiet(load):
    """Load with any DataWarning turned into an error: a clean set warns about nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        return load()


# -- the published layout -----------------------------------------------------------------------------------------
def test_clean_set_passes_without_warnings(synthetic: Path):
    table = _quiet(lambda: read_published(synthetic, batch_size=3))
    assert table.warnings == ()


def test_class_missing_from_training_is_an_error_naming_class_and_split(copy: Path):
    def relabel(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[0, LABEL] = 7   # the training sheet has classes 0-2 only
        return df

    _rewrite(copy, "testset", relabel)
    _error(lambda: read_published(copy), "class '7' in the test split (1 image)", "not in the training split")
    _rewrite(copy, "validset", relabel)
    _error(lambda: read_published(copy), "class '7' in the valid split (1 image)", "class '7' in the test split")


def test_image_listed_twice_in_a_split_is_a_counted_warning(copy: Path):
    rows = _train_rows(copy, [0, 1, 2, 3, 4, 5, 6, 0])   # 7 images twice, one of them three times
    _append_rows(copy, "trainset", rows)
    with pytest.warns(DataWarning) as caught:
        table = read_published(copy)
    [message] = [str(w.message) for w in caught]
    first = rows[PATH].iloc[0]
    assert "7 images listed more than once in the train split (8 extra rows)" in message, message
    assert f"'{first}' (3x)" in message and "... and 2 more" in message, message
    assert [check for check, _ in table.warnings] == ["duplicates"]


def test_same_path_in_two_splits_is_an_error_unless_allowed(copy: Path):
    rows = _train_rows(copy, [1])
    _append_rows(copy, "testset", rows)
    name = rows[PATH].iloc[0]
    _error(lambda: read_published(copy), "1 image in more than one split", f"'{name}' is listed in the train and "
           "test splits", "--allow-overlap")
    with pytest.warns(DataWarning, match=f"allowed by allow_overlap: '{name}' is listed in the train and test"):
        table = read_published(copy, allow_overlap=True)
    assert [check for check, _ in table.warnings] == ["overlap"]


def test_same_content_in_two_splits_is_an_error_naming_the_pair(copy: Path):
    train = _train_rows(copy, [0])[PATH].iloc[0]
    dup = "testset/0/renamed_copy.tif"
    shutil.copyfile(copy / train, copy / dup)

    def point_at_copy(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[0, PATH] = dup
        return df

    _rewrite(copy, "testset", point_at_copy)
    _error(lambda: read_published(copy), f"'{train}' (train) and '{dup}' (test) have the same content")
    with pytest.warns(DataWarning, match="same content"):
        read_published(copy, allow_overlap=True)


def test_class_smaller_than_a_batch_is_a_warning(synthetic: Path):
    with pytest.warns(DataWarning) as caught:
        table = read_published(synthetic, batch_size=4)
    [message] = [str(w.message) for w in caught]
    assert "3 classes with fewer training images than a batch of 4: '0' (3 images), '1' (3 images)" in message
    assert [check for check, _ in table.warnings] == ["batch"]


def test_spec_data_option_reaches_the_published_reader(copy: Path, tmp_path: Path):
    _append_rows(copy, "validset", _train_rows(copy, [2]))
    _error(lambda: resolve_dataset(copy, cache_dir=tmp_path), "in more than one split")
    with pytest.warns(DataWarning, match="allowed by allow_overlap"):
        resolve_dataset(copy, cache_dir=tmp_path, table_options={"allow_overlap": True})
    with pytest.raises(ConfigError, match="allow_overlap must be true or false, got 'yes'"):
        resolve_dataset(copy, cache_dir=tmp_path, table_options={"allow_overlap": "yes"})


# -- users' tables ------------------------------------------------------------------------------------------------
@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    """15 distinct images of 3 classes: 3 per class in the train split, 1 in valid and 1 in test."""
    (tmp_path / "img").mkdir()
    names = []
    for i in range(15):
        name = f"img/im{i:02d}.png"
        Image.fromarray(np.full((8, 8, 3), i * 11, np.uint8)).save(tmp_path / name)
        names.append(name)
    pd.DataFrame({"path": names, "label": ["a", "b", "c"] * 5, "target": np.linspace(1.0, 15.0, 15),
                  "split": ["train"] * 9 + ["valid"] * 3 + ["test"] * 3}).to_csv(tmp_path / "t.csv", index=False)
    return tmp_path


def test_table_clean(table_dir: Path):
    assert _quiet(lambda: read_table(table_dir / "t.csv", batch_size=3)).warnings == ()


def test_table_class_missing_from_training(table_dir: Path):
    path = table_dir / "t.csv"
    df = pd.read_csv(path)
    df.loc[14, "label"] = "austenite"   # a test row
    df.to_csv(path, index=False)
    _error(lambda: read_table(path), "t.csv: class 'austenite' in the test split (1 image)", "not in the training")


def test_table_duplicate_row_and_small_class(table_dir: Path):
    path = table_dir / "t.csv"
    df = pd.read_csv(path)
    pd.concat([df, df.iloc[[4]]]).to_csv(path, index=False)
    with pytest.warns(DataWarning) as caught:
        table = read_table(path, batch_size=4)
    messages = [str(w.message) for w in caught]
    assert "t.csv: 1 image listed more than once in the train split (1 extra row): 'img/im04.png' (2x)" in messages
    assert "t.csv: 2 classes with fewer training images than a batch of 4: 'a' (3 images), 'c' (3 images)" in messages
    assert [check for check, _ in table.warnings] == ["duplicates", "batch"]


def test_table_same_content_in_two_splits(table_dir: Path):
    shutil.copyfile(table_dir / "img/im00.png", table_dir / "img/im13.png")   # a test image = a train image
    _error(lambda: read_table(table_dir / "t.csv"), "'img/im00.png' (train) and 'img/im13.png' (test) have the "
           "same content")
    with pytest.warns(DataWarning, match="allowed by allow_overlap"):
        read_table(table_dir / "t.csv", allow_overlap=True)


# -- the command line ---------------------------------------------------------------------------------------------
def _broken(copy: Path) -> Path:
    """A copy with a duplicated training row (class 0: 4 rows) and a training image also in the test split."""
    _append_rows(copy, "trainset", _train_rows(copy, [0]))
    _append_rows(copy, "testset", _train_rows(copy, [3]))
    return copy


def test_cli_data_info_reports_every_check(copy: Path, cache_dir: Path):
    data = _broken(copy)
    proc = run_cli("data", "info", str(data), "--batch-size", "4", cache=cache_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = [l for l in proc.stderr.splitlines() if l.strip()]
    assert "1 image in more than one split" in line and "--allow-overlap" in line, line
    proc = run_cli("data", "info", str(data), "--batch-size", "4", "--allow-overlap", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "warning: " in out and "listed more than once in the train split" in out, out
    assert "in more than one split, allowed by allow_overlap" in out
    assert "2 classes with fewer training images than a batch of 4: '1' (3 images), '2' (3 images)" in out
    assert "checks passed: every validation and test class is in the training split" in out
    assert "smallest training class: '1' with 3 images" in out


def test_cli_data_info_clean_set(synthetic: Path, cache_dir: Path):
    proc = run_cli("data", "info", str(synthetic), cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stdout
    assert ("checks passed: every validation and test class is in the training split; no image is listed twice in "
            "a split; no image is in two splits") in proc.stdout
    assert "pass --batch-size" in proc.stdout


def test_cli_sweep_prints_warnings_and_flag_allows_overlap(copy: Path, tmp_path: Path, cache_dir: Path):
    """A sweep checks the data against its batch size (8 here) and prints the warnings as `warning:` lines."""
    spec = small_spec(tmp_path, _broken(copy))
    out = tmp_path / "results"
    proc = run_cli("sweep", str(spec), "--dry-run", "--out", str(out), cache=cache_dir)
    assert proc.returncode == 2 and "in more than one split" in proc.stderr, proc.stderr
    proc = run_cli("sweep", str(spec), "--dry-run", "--allow-overlap", "--out", str(out), cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    warned = [l for l in proc.stdout.splitlines() if l.startswith("warning: ")]
    assert len(warned) == 3, proc.stdout
    assert "allowed by allow_overlap" in proc.stdout and "fewer training images than a batch of 8" in proc.stdout
