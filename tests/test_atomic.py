"""The one atomic-write helper: all or nothing, no temporaries left, an ordinary file's mode."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mtlbench.atomic import atomic_path, write_text_atomic


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
