"""The results store: per-run Parquet fragments written atomically, consolidated into one file per table.

Layout of a results folder::

    store.json                 schema version
    cells/<run_id>/<table>.parquet   a finished run's fragments (the folder appears by one rename)
    runs.parquet epochs.parquet weights.parquet predictions.parquet label_search.parquet sharing.parquet
                               consolidated (one file per table in records.schema.TABLES)
    checkpoints/<run_id>.ckpt  mid-run checkpoints of unfinished runs (mtlbench.train.checkpoint owns them)
    report/                    rendered by ``mtlbench report``

A run is finished exactly when ``cells/<run_id>/`` exists: fragments are written into a temporary folder that is
renamed into place, so a crash (even SIGKILL) at any moment loses at most the runs in progress. Consolidated tables
are rebuilt from the fragments and replaced atomically, so they are never half-written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtlbench.atomic import atomic_dir, atomic_path, write_text_atomic
from mtlbench.errors import MtlbenchError
from mtlbench import faults
from mtlbench.records.schema import SCHEMA_VERSION, TABLES, empty, to_arrow

META = "store.json"


class StoreError(MtlbenchError):
    """The results folder cannot be used (not writable, incompatible, locked)."""


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class ResultsStore:
    """A results folder. Only one process writes to it at a time (see :meth:`lock`)."""

    def __init__(self, root: Path | str, *, create: bool = True) -> None:
        self.root = Path(root)
        if not create and not self.root.is_dir():
            raise StoreError(f"results folder {self.root} does not exist")
        self._check_version()   # before writing anything: a folder of another schema is left untouched
        if create:
            self._init()

    # -- layout -------------------------------------------------------------------------------------------------
    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    def cell_dir(self, run_id: str) -> Path:
        return self.cells_dir / run_id

    def _init(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            meta = self.root / META
            if not meta.exists():   # first, so a folder with cells always says its schema
                write_text_atomic(meta, json.dumps({"schema_version": SCHEMA_VERSION}))
            self.cells_dir.mkdir(exist_ok=True)
            probe = self.root / f".write-probe-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"results folder {self.root} is not writable ({exc.strerror or exc})") from None

    def _check_version(self) -> None:
        meta = self.root / META
        if not meta.exists():
            if any(self.root.glob("*.parquet")) or self.cells_dir.exists():
                raise StoreError(f"results folder {self.root} has no {META}: written by an incompatible mtlbench")
            return
        try:
            version = json.loads(meta.read_text()).get("schema_version")
        except (OSError, ValueError):
            raise StoreError(f"results folder {self.root}: {META} is unreadable") from None
        if version != SCHEMA_VERSION:
            raise StoreError(f"results folder {self.root} uses schema version {version}, this mtlbench writes "
                             f"{SCHEMA_VERSION}; use another --out folder")

    # -- locking ------------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock (an OS file lock, released by the kernel if the process dies)."""
        path = self.root / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    raise StoreError(f"results folder {self.root} is in use by another sweep (pid {holder}); "
                                     f"wait for it or use another --out") from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    # -- cells --------------------------------------------------------------------------------------------------
    def finished(self) -> set[str]:
        if not self.cells_dir.exists():
            return set()
        return {p.name for p in self.cells_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                and (p / "runs.parquet").exists()}

    def write_cell(self, run_id: str, tables: dict[str, list[dict]]) -> None:
        """Write a finished run's rows atomically: a temporary folder, then one rename. Replaces an older result
        (``--force``: the old one is moved aside first, so the swap is never half-done)."""
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.cell_dir(run_id), replace=True) as tmp:
            for name in TABLES:
                rows = tables.get(name, [])
                if rows or name == "runs":
                    pq.write_table(to_arrow(name, rows), tmp / f"{name}.parquet")

    def clean_temporaries(self) -> None:
        """Remove leftovers of writes interrupted by a crash (never a finished cell)."""
        if self.cells_dir.exists():
            for p in self.cells_dir.iterdir():
                if p.name.startswith("."):
                    shutil.rmtree(p, ignore_errors=True)
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    # -- tables -------------------------------------------------------------------------------------------------
    def _fragments(self, name: str) -> list[Path]:
        return sorted(p / f"{name}.parquet" for p in self.cells_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / f"{name}.parquet").exists()) \
            if self.cells_dir.exists() else []

    def _read_fragments(self, name: str) -> pa.Table:
        parts = [pq.read_table(p, schema=TABLES[name]) for p in self._fragments(name)]
        return pa.concat_tables(parts) if parts else empty(name)

    def consolidate(self) -> dict[str, int]:
        """Rebuild every consolidated table from the fragments; returns row counts."""
        counts = {}
        for name in TABLES:
            table = self._read_fragments(name)
            write_parquet_atomic(table, self.root / f"{name}.parquet")
            counts[name] = table.num_rows
            faults.hit("consolidate", table=name)
        return counts

    def read(self, name: str) -> pd.DataFrame:
        """A table as a DataFrame: from the fragments (always current), else the consolidated file."""
        if name not in TABLES:
            raise KeyError(name)
        if self._fragments("runs"):
            return self._read_fragments(name).to_pandas()
        path = self.root / f"{name}.parquet"
        if path.exists():
            return pq.read_table(path, schema=TABLES[name]).to_pandas()
        return empty(name).to_pandas()
