"""The one atomic-write helper: all or nothing, no temporaries left, an ordinary file's mode; the same for folders."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mtlbench.atomic import atomic_dir, atomic_path, write_text_atomic


def test_success_replaces_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "sub" / "f.json"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failure_keeps_the_previous_file(tmp_path: Path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_temporaries_match_the_owners_cleanup_pattern(tmp_path: Path):
    with atomic_path(tmp_path / "runs.parquet") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".runs.parquet.") and tmp.name.endswith(".tmp")
        tmp.write_text("x")


def _build(folder: Path, text: str) -> None:
    (folder / "sub").mkdir()
    (folder / "sub" / "a.txt").write_text(text)
    (folder / "b.txt").write_text(text)


def test_atomic_dir_creates_the_folder_complete(tmp_path: Path):
    target = tmp_path / "parent" / "data"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".data.") and tmp.name.endswith(".tmp")
        assert tmp.is_dir() and list(tmp.iterdir()) == [] and not target.exists()
        _build(tmp, "new")
    assert (target / "sub" / "a.txt").read_text() == "new" and (target / "b.txt").read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["data"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


@pytest.mark.parametrize("replace", [False, True])
def test_atomic_dir_failure_keeps_the_previous_folder(tmp_path: Path, replace: bool):
    target = tmp_path / "data"
    with atomic_dir(target) as tmp:
        _build(tmp, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target, replace=replace) as tmp:
            _build(tmp, "half")
            raise RuntimeError("boom")
    assert (target / "sub" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "sub"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_atomic_dir_replaces_only_when_asked(tmp_path: Path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError):  # a non-empty folder is never replaced by accident
        with atomic_dir(target) as tmp:
            _build(tmp, "new")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["data"]

    with atomic_dir(target, replace=True) as tmp:
        _build(tmp, "new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt", "sub"] and (target / "b.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the previous folder is gone, no temporaries

    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:  # an empty folder is filled, as rename(2) allows
        _build(tmp, "x")
    assert (empty / "b.txt").read_text() == "x"

    file = tmp_path / "file"
    file.write_text("a file")
    with atomic_dir(file, replace=True) as tmp:
        _build(tmp, "y")
    assert (file / "b.txt").read_text() == "y"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty", "file"]
