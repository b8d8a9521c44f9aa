"""Atomic file and folder writes, the one implementation every writer uses (results store, checkpoints, data cache,
synthetic data, fetch).

A reader sees the old file or the complete new one, never a partial one, even after a crash or SIGKILL: write to a
temporary file beside the target, fsync it, rename it over the target, fsync the folder. A folder is built the same
way (``atomic_dir``). Temporaries are named ``.<name>.<hex>.tmp`` so that their owners can sweep up what a killed
process left.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_dir", "atomic_path", "fsync_dir", "temporary_name", "write_text_atomic"]


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to. When the block ends without an exception the
    file is made durable and renamed over ``path``; otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, mode)   # temporaries may be created 0600 (mkstemp); the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and folder under ``root``, children before their folder."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            file = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(file).st_mode):  # never follow a link out of the tree, never open a pipe
                _fsync_file(file)
        fsync_dir(Path(folder))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path, *, replace: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to build ``path``'s new content in. When the block ends
    without an exception everything in it is made durable and the folder is renamed to ``path``; otherwise it is
    removed and ``path`` is left as it was.

    An existing ``path`` (file, folder or link) is replaced only with ``replace=True``: it is moved aside, the new
    folder renamed in and the old one deleted (put back if the rename fails); ``path`` is absent between the two
    renames. Without it the rename raises OSError when ``path`` exists, except an empty folder on POSIX (rename(2)
    replaces that).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    os.mkdir(tmp, 0o700)  # private until complete
    try:
        yield tmp
        os.chmod(tmp, mode)
        _fsync_tree(tmp)
        if replace and os.path.lexists(path):
            # rename(2) cannot replace a non-empty folder: swap through a sweepable temporary name instead.
            old = temporary_name(path)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            _remove(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
