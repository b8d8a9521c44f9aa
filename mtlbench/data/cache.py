"""Decode every image of a table once, keep the pixels as a raw uint8 file, memory-map it afterwards."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtlbench.atomic import atomic_path, write_text_atomic
from mtlbench.errors import DataError

from .table import ImageTable

CACHE_ENV = "MTLBENCH_CACHE"
DECODE_THREADS = 2


def default_cache_dir() -> Path:
    """``$MTLBENCH_CACHE`` when set, else ``~/.cache/mtlbench``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mtlbench"


def cache_paths(table: ImageTable, side: int, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(raw pixel file, JSON sidecar) for this table's fingerprint and side."""
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "images"
    stem = f"{table.fingerprint()}-{int(side)}px"
    return folder / f"{stem}.u8", folder / f"{stem}.json"


def decode_one(path: str, side: int) -> np.ndarray:
    """uint8 [3, side, side] RGB pixels of one image; DataError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (side, side):
                # PIL's bilinear resize widens its kernel when shrinking: antialiased.
                image = image.resize((side, side), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from None
    if array.shape != (side, side, 3):
        raise DataError(f"cannot decode image {path}: unexpected pixel array shape {array.shape}")
    return array.transpose(2, 0, 1)


def _decode_into(out: np.ndarray, paths: list[str], side: int) -> None:
    def work(i: int) -> None:
        out[i] = decode_one(paths[i], side)

    pool = ThreadPoolExecutor(max_workers=DECODE_THREADS)
    try:
        for future in [pool.submit(work, i) for i in range(len(paths))]:
            future.result()  # re-raises the first DataError in row order
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _read_sidecar(sidecar: Path) -> dict | None:
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None


def _map(raw: Path, shape: tuple[int, ...]) -> torch.Tensor:
    numel = int(np.prod(shape))
    if numel == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.from_file(str(raw), shared=False, size=numel, dtype=torch.uint8).view(*shape)


def decode_images(table: ImageTable, side: int, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """uint8 [N, 3, side, side] pixels of every image, in the order of ``table.frame`` rows.

    The first call decodes every image (PIL, RGB, bilinear antialiased resize when ``side`` differs
    from the native size) and writes ``<cache_dir>/images/<fingerprint>-<side>px.u8`` plus a JSON
    sidecar, both atomically; later calls memory-map that file. Different data has a different
    fingerprint and so a different file.
    """
    side = int(side)
    if side < 1:
        raise DataError(f"image side must be positive, got {side}")
    paths = table.frame["path"].tolist()
    shape = (len(paths), 3, side, side)
    raw, sidecar = cache_paths(table, side, cache_dir)

    meta = _read_sidecar(sidecar) if sidecar.is_file() else None
    if meta is not None and tuple(meta.get("shape", ())) == shape and raw.is_file():
        if raw.stat().st_size == int(np.prod(shape)):
            return _map(raw, shape)

    created = False  # an OSError before the temporary exists means an unwritable cache folder
    try:
        with atomic_path(raw) as tmp:
            tmp.touch(exist_ok=False)
            created = True
            if len(paths):
                mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
                _decode_into(mm, paths, side)
                mm.flush()
                del mm
    except OSError:
        if created:
            raise
        # Cache folder not writable: decode into memory and carry on.
        array = np.empty(shape, dtype=np.uint8)
        _decode_into(array, paths, side)
        return torch.from_numpy(array)
    meta = {
        "shape": list(shape),
        "dtype": "uint8",
        "layout": "NCHW",
        "name": table.name,
        "fingerprint": table.fingerprint(),
        "side": side,
    }
    write_text_atomic(sidecar, json.dumps(meta))
    return _map(raw, shape)
