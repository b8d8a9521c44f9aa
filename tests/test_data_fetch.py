"""fetch: download (file:// and local paths), unpack, verify, install atomically."""

from __future__ import annotations

import importlib
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtlbench.data import DEFAULT_URL, fetch, read_published, write_synthetic
from mtlbench.errors import DataError

TOP = "Advanced-Steel-Property-Dataset-main"
# The module itself: ``mtlbench.data.fetch`` as an attribute is the function re-exported by the package.
FETCH = importlib.import_module("mtlbench.data.fetch")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("fetch") / "syn", per_class=(2, 1, 1), image_size=16, seed=4)


def _zip(src: Path, out: Path, skip: str | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr(f"{TOP}/README.md", "# data\n")
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.name != skip:
                zf.write(f, f"{TOP}/{f.relative_to(src).as_posix()}")
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_fetch_from_a_file_url_zip(synthetic: Path, tmp_path: Path, capfd):
    archive = _zip(synthetic, tmp_path / "main.zip")
    dest = tmp_path / "cache" / "advanced-steel-property"
    got = fetch(archive.as_uri(), dest, progress=True, expected_images=24)
    assert got == dest
    table = read_published(dest)
    assert len(table.frame) == 24 and (dest / "README.md").is_file()
    assert table.fingerprint() == read_published(synthetic).fingerprint()
    assert _leftovers(dest.parent) == ["advanced-steel-property"]
    assert "main.zip" in capfd.readouterr().err  # the Rich progress bar goes to stderr

    # Already installed and verified: no download (the archive is gone and the URL would fail).
    archive.unlink()
    assert fetch(archive.as_uri(), dest, progress=False, expected_images=24) == dest
    # force=True does download, fails, and keeps the installed copy intact.
    with pytest.raises(DataError, match="main.zip"):
        fetch(archive.as_uri(), dest, progress=False, expected_images=24, force=True)
    assert len(read_published(dest).frame) == 24
    assert _leftovers(dest.parent) == ["advanced-steel-property"]


def test_fetch_tar_gz_from_a_plain_path_with_force(synthetic: Path, tmp_path: Path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(synthetic, arcname=TOP)
    dest = tmp_path / "d"
    fetch(str(archive), dest, progress=False, expected_images=24)
    (dest / "marker").write_text("old")
    fetch(str(archive), dest, progress=False, expected_images=24, force=True)
    assert not (dest / "marker").exists() and len(read_published(dest).frame) == 24
    assert _leftovers(tmp_path) == ["d", "data.tar.gz"]


def test_verify_failure_leaves_no_dest(synthetic: Path, tmp_path: Path):
    victim = sorted((synthetic / "validset" / "2").iterdir())[0].name
    archive = _zip(synthetic, tmp_path / "broken.zip", skip=victim)
    dest = tmp_path / "out" / "steel"
    with pytest.raises(DataError) as info:
        fetch(archive.as_uri(), dest, progress=False, expected_images=24)
    message = str(info.value)
    assert victim in message and "broken.zip" in message and "\n" not in message
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_wrong_image_count_is_rejected(synthetic: Path, tmp_path: Path):
    archive = _zip(synthetic, tmp_path / "main.zip")
    with pytest.raises(DataError, match="expected 4536"):
        fetch(archive.as_uri(), tmp_path / "dest", progress=False)
    assert not (tmp_path / "dest").exists()


def test_not_an_archive_and_no_sheets(tmp_path: Path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(DataError, match="not a zip or tar"):
        fetch(junk.as_uri(), tmp_path / "d1", progress=False)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x/readme.txt", "hi")
    with pytest.raises(DataError, match="trainset.xlsx"):
        fetch(empty.as_uri(), tmp_path / "d2", progress=False)
    assert _leftovers(tmp_path) == ["empty.zip", "junk.zip"]


def test_network_error_names_url_and_suggests_file_url(tmp_path: Path):
    url = "http://127.0.0.1:9/archive.zip"  # nothing listens on the discard port
    with pytest.raises(DataError) as info:
        fetch(url, tmp_path / "d", progress=False)
    message = str(info.value)
    assert url in message and "--url file://" in message
    assert not (tmp_path / "d").exists() and os.listdir(tmp_path) == []


def test_missing_local_archive(tmp_path: Path):
    with pytest.raises(DataError, match="nope.zip"):
        fetch((tmp_path / "nope.zip").as_uri(), tmp_path / "d", progress=False)


def test_default_url():
    assert DEFAULT_URL == "https://github.com/fastcandr/Advanced-Steel-Property-Dataset/archive/refs/heads/main.zip"


def test_failure_midway_keeps_the_installed_copy_and_leaves_nothing(synthetic: Path, tmp_path: Path, monkeypatch):
    archive = _zip(synthetic, tmp_path / "main.zip")
    dest = tmp_path / "cache" / "steel"
    fetch(archive.as_uri(), dest, progress=False, expected_images=24)
    before = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))

    def interrupted(folder: Path, url: str) -> Path:
        raise KeyboardInterrupt  # e.g. Ctrl-C after the archive is unpacked

    monkeypatch.setattr(FETCH, "find_dataset_root", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch(archive.as_uri(), dest, progress=False, expected_images=24, force=True)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == before
    assert _leftovers(dest.parent) == ["steel"]


def test_interrupted_download_leaves_no_partial_file(synthetic: Path, tmp_path: Path, monkeypatch):
    archive = _zip(synthetic, tmp_path / "main.zip")

    def half(src, dst_path: Path, total, progress, label) -> None:
        Path(dst_path).write_bytes(src.read(100))
        raise ConnectionResetError("reset midway")

    monkeypatch.setattr(FETCH, "_copy_stream", half)
    target = tmp_path / "dl" / "main.zip"
    with pytest.raises(ConnectionResetError):
        FETCH.download(archive.as_uri(), target, progress=False)
    assert _leftovers(target.parent) == []
