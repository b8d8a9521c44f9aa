"""A small synthetic stand-in for the steel data set, in the same published layout.

Six classes of procedural micro-structure textures (numpy only):

====  ===============================  ===========================================
class  texture                          hardness-dependent parameter (monotonic)
====  ===============================  ===========================================
0      polygonal grains (Voronoi)       grain count (smaller grains = harder)
1      lamellar colonies (stripes)      lamella frequency (finer = harder)
2      acicular needles (one direction) needle frequency
3      crossing laths (two directions)  lath frequency
4      dark globular carbides (dots)    carbide count
5      fine isotropic speckle           speckle frequency
====  ===============================  ===========================================

Besides the feature size or density, every image's contrast grows with its hardness inside its
class (``contrast = BASE_CONTRAST * (1 + 0.3 * z)``, ``z`` the class z-score of the hardness,
clipped to +-2.5), so regression beyond the class mean is learnable. Hardness is drawn per class from
normal(mean, std) with the real set's train statistics and rounded to integers like the real sheets.

Classes also differ in mean grey level and tint, as differently etched phases do, so that a network
tells them apart within a few optimiser steps at 32 px (the demo gives each of its 204 cells five).

**Ground truth.** The class is visible in every image (texture, level and tint), so a perfect classifier
scores 100 %. Inside its class, hardness is a monotonic function of two visible quantities (feature size
or density, and contrast), blurred by pixel noise (std 3 grey levels), JPEG at quality 95, grey levels
clipped to 0-255, feature counts rounded, and the z clip at +-2.5 (5 of the default set's 336 images lie
beyond it), so a perfect regressor's MAPE is small, and can go below the class-mean oracle's. On the
default set's test split (:func:`mtlbench.data.baselines.reference_scores`): chance accuracy 16.67 %; a
mean predictor (the training mean) MAPE 58.7 %; a class-mean oracle (the true class's training mean) MAPE
3.2 %, the floor for a model that classifies perfectly but reads nothing inside the class.

Classes 0 and 4 are written as LZW-compressed (lossless) .tif, the others as quality-95 .jpg. The same
arguments give the same images byte for byte; the .xlsx sheets are written with fixed timestamps.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from mtlbench.atomic import atomic_dir
from mtlbench.errors import ConfigError, DataError

from .steel import PUBLISHED_COLUMNS, PUBLISHED_SHEETS

# Real train-set hardness statistics per class (mean, std), HV.
HARDNESS_STATS = ((212.0, 16.0), (416.0, 12.0), (551.0, 10.0), (714.0, 15.0), (865.0, 27.0), (970.0, 57.0))
TIF_FAMILIES = (0, 4)
BASE_CONTRAST = 36.0
CONTRAST_SLOPE = 0.3
Z_CLIP = 2.5
# Base grey level and RGB tint per texture family (etched phases differ in level and tint). Distinct enough that
# a few optimiser steps separate the classes (default-synthetic-v2; v1 had levels 115-160 and faint tints).
_BASE_LEVEL = (185.0, 95.0, 140.0, 70.0, 205.0, 120.0)
_TINT = (
    (1.00, 1.00, 1.00),
    (1.00, 0.80, 0.60),
    (0.75, 0.90, 1.00),
    (0.95, 0.85, 0.75),
    (1.00, 1.00, 0.85),
    (0.70, 0.80, 1.00),
)
_FIXED_TIME = _dt.datetime(2020, 1, 1, 0, 0, 0)
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def class_stats(c: int) -> tuple[float, float]:
    """(mean, std) of the hardness of class ``c`` (classes past 5 extrapolate upwards)."""
    if c < len(HARDNESS_STATS):
        return HARDNESS_STATS[c]
    return (970.0 + 150.0 * (c - 5), 30.0)


def class_extension(c: int) -> str:
    return "tif" if c % 6 in TIF_FAMILIES else "jpg"


# --------------------------------------------------------------------------- textures


def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    ax = (np.arange(s, dtype=np.float32) + 0.5) / s
    return np.meshgrid(ax, ax, indexing="ij")  # v (rows), u (columns)


def _freqs(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (cycles per image) and angle of the rfft2 frequency grid."""
    fy = np.fft.fftfreq(s, d=1.0 / s).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(s, d=1.0 / s).astype(np.float32)[None, :]
    return np.sqrt(fx**2 + fy**2), np.arctan2(fy, fx)


def _filtered_noise(rng: np.random.Generator, n: int, s: int, transfer: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal((n, s, s), dtype=np.float32)
    return np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(s, s)).astype(np.float32)


def _oriented(radius, angle, theta, r0, bw, aw):
    """Band-pass transfer around frequency ``r0`` (cycles/image) and direction ``theta`` (mod pi)."""
    d = np.angle(np.exp(2j * (angle[None] - theta[:, None, None]))) / 2.0  # wrapped to (-pi/2, pi/2]
    return np.exp(-((radius[None] - r0[:, None, None]) / bw) ** 2) * np.exp(-((d / aw) ** 2))


def _grains(rng, n, s, z):
    """Polygonal grains of random shade with dark boundaries; more grains when harder."""
    v, u = _grid(s)
    counts = np.clip(np.round(16.0 * (1.0 + 0.3 * z)), 5, 40).astype(int)
    kmax = int(counts.max())
    seeds = rng.random((n, kmax, 2), dtype=np.float32)
    shade = rng.uniform(0.2, 1.0, size=(n, kmax)).astype(np.float32)
    active = np.arange(kmax)[None, :] < counts[:, None]
    seeds = np.where(active[..., None], seeds, np.float32(1e3))
    pix = np.stack([v.ravel(), u.ravel()], axis=-1)  # [P, 2]
    d = ((pix[None, :, None, :] - seeds[:, None, :, :]) ** 2).sum(-1)  # [n, P, K]
    two = np.argpartition(d, 1, axis=-1)[..., :2]  # [n, P, 2] nearest and second nearest seed
    d12 = np.take_along_axis(d, two, axis=-1)
    swap = d12[..., 0] > d12[..., 1]
    first = np.where(swap, two[..., 1], two[..., 0])
    second = np.where(swap, two[..., 0], two[..., 1])
    d1, d2 = d12.min(-1), d12.max(-1)
    s1 = np.take_along_axis(seeds, first.reshape(n, -1, 1), axis=1)  # [n, P, 2]
    s2 = np.take_along_axis(seeds, second.reshape(n, -1, 1), axis=1)
    gap = np.sqrt(((s1 - s2) ** 2).sum(-1)) + 1e-6
    to_boundary = (d2 - d1) / (2.0 * gap)  # distance to the bisector of the two nearest seeds
    body = np.take_along_axis(shade, first, axis=1)
    edge = np.exp(-((to_boundary / 0.01) ** 2))
    return (body - 1.3 * edge).reshape(n, s, s)


def _lamellae(rng, n, s, z):
    """Two colonies of wavy parallel lamellae; finer spacing when harder."""
    v, u = _grid(s)
    freq = (7.0 * (1.0 + 0.2 * z)).astype(np.float32)[:, None, None]
    theta = rng.uniform(0, np.pi, size=(n, 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 3)).astype(np.float32)
    cut = rng.uniform(0, np.pi, size=n).astype(np.float32)
    off = rng.uniform(-0.2, 0.2, size=n).astype(np.float32)
    out = np.empty((n, s, s), dtype=np.float32)
    colony = (u - 0.5) * np.cos(cut)[:, None, None] + (v - 0.5) * np.sin(cut)[:, None, None] > off[:, None, None]
    for k in range(2):
        t = theta[:, k][:, None, None]
        x = u * np.cos(t) + v * np.sin(t)
        warp = 0.04 * np.sin(2 * np.pi * (1.5 * (v * np.cos(t) - u * np.sin(t))) + phase[:, 2][:, None, None])
        stripes = np.sin(2 * np.pi * freq * (x + warp) + phase[:, k][:, None, None])
        out = np.where(colony if k == 0 else ~colony, stripes, out)
    return out


def _needles(rng, n, s, z):
    """Elongated needles along one random direction."""
    radius, angle = _freqs(s)
    theta = rng.uniform(0, np.pi, size=n).astype(np.float32)
    r0 = (5.0 * (1.0 + 0.2 * z)).astype(np.float32)
    return _filtered_noise(rng, n, s, _oriented(radius, angle, theta, r0, 3.0, 0.12))


def _laths(rng, n, s, z):
    """Sharp laths crossing at 60 degrees."""
    radius, angle = _freqs(s)
    theta = rng.uniform(0, np.pi, size=n).astype(np.float32)
    r0 = (12.0 * (1.0 + 0.15 * z)).astype(np.float32)
    h = _oriented(radius, angle, theta, r0, 2.5, 0.07) + _oriented(radius, angle, theta + np.pi / 3, r0, 2.5, 0.07)
    x = _filtered_noise(rng, n, s, h)
    x /= x.std(axis=(1, 2), keepdims=True) + 1e-6
    return np.tanh(1.5 * x)


def _carbides(rng, n, s, z):
    """Dark globular carbides on a bright matrix; more carbides when harder."""
    counts = np.clip(np.round(45.0 * (1.0 + 0.3 * z)), 10, 120).astype(int)
    mmax = int(counts.max())
    pos = (rng.random((n, mmax, 2)) * s).astype(np.int64) % s
    weight = (np.arange(mmax)[None, :] < counts[:, None]) * rng.uniform(0.6, 1.4, size=(n, mmax))
    field = np.zeros((n, s * s), dtype=np.float32)
    rows = np.repeat(np.arange(n), mmax)
    np.add.at(field, (rows, (pos[..., 0] * s + pos[..., 1]).ravel()), weight.ravel().astype(np.float32))
    radius, _ = _freqs(s)
    sigma_px = max(0.6, s / 64.0)
    sigma_f = s / (2 * np.pi * sigma_px)  # Gaussian blur in frequency space
    blur = np.exp(-0.5 * (radius / sigma_f) ** 2)
    blobs = np.fft.irfft2(np.fft.rfft2(field.reshape(n, s, s)) * blur, s=(s, s))
    return -np.minimum(blobs / (blobs.max(axis=(1, 2), keepdims=True) + 1e-6), 0.6).astype(np.float32)


def _speckle(rng, n, s, z):
    """Fine isotropic speckle over a soft mottle."""
    radius, _ = _freqs(s)
    r0 = np.clip(20.0 * (1.0 + 0.1 * z), 8, s / 2 - 2).astype(np.float32)[:, None, None]
    fine = _filtered_noise(rng, n, s, np.exp(-(((radius[None] - r0) / 4.0) ** 2)))
    mottle = _filtered_noise(rng, n, s, (np.exp(-((radius / 2.0) ** 2)))[None])
    fine /= fine.std(axis=(1, 2), keepdims=True) + 1e-6
    mottle /= mottle.std(axis=(1, 2), keepdims=True) + 1e-6
    return fine + 0.4 * mottle


_FAMILIES = (_grains, _lamellae, _needles, _laths, _carbides, _speckle)


def render_class(rng: np.random.Generator, c: int, z: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB images [n, size, size, 3] of class ``c`` with hardness z-scores ``z``."""
    n = len(z)
    family = c % len(_FAMILIES)
    zc = np.clip(z.astype(np.float32), -Z_CLIP, Z_CLIP)
    chunk = max(1, (1 << 18) // (size * size))
    parts = []
    for start in range(0, n, chunk):
        zz = zc[start : start + chunk]
        # Classes past the sixth reuse a family at a different scale (higher feature frequency).
        pattern = _FAMILIES[family](rng, len(zz), size, zz * 1.0 + (c // len(_FAMILIES)) * 2.0)
        pattern = pattern - pattern.mean(axis=(1, 2), keepdims=True)
        pattern /= pattern.std(axis=(1, 2), keepdims=True) + 1e-6
        contrast = BASE_CONTRAST * (1.0 + CONTRAST_SLOPE * zz)[:, None, None]
        grey = _BASE_LEVEL[family] + contrast * pattern + rng.normal(0.0, 3.0, size=pattern.shape).astype(np.float32)
        rgb = grey[..., None] * np.asarray(_TINT[family], dtype=np.float32)
        parts.append(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, size, size, 3), np.uint8)


# --------------------------------------------------------------------------- files


def _save_image(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(np.ascontiguousarray(array))
    if path.suffix == ".tif":
        image.save(path, format="TIFF", compression="tiff_lzw")
    else:
        image.save(path, format="JPEG", quality=95, subsampling=0, optimize=False, progressive=False)


def _write_sheet(path: Path, rows: list[tuple]) -> None:
    """An .xlsx with one sheet named ``sheet1`` and the published columns, byte-reproducible."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "sheet1"
    ws.append(list(PUBLISHED_COLUMNS))
    for row in rows:
        ws.append(list(row))
    wb.properties.creator = "mtlbench"
    wb.properties.created = _FIXED_TIME
    buffer = io.BytesIO()
    wb.save(buffer)
    # openpyxl stamps the current time into docProps/core.xml and every zip entry: pin both.
    stamp = _FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ")
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)", rb"\g<1>" + stamp.encode() + rb"\g<2>", data)
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            dst.writestr(entry, data)


def _check_options(per_class, image_size, num_classes) -> tuple[int, int, int]:
    try:
        counts = tuple(int(x) for x in per_class)
    except (TypeError, ValueError):
        raise ConfigError(f"per_class must be three integers (train, valid, test), got {per_class!r}") from None
    if len(counts) != 3 or min(counts) < 1:
        raise ConfigError(f"per_class must be three positive integers (train, valid, test), got {per_class!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ConfigError(f"image_size must be an integer >= 8, got {image_size!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return counts  # type: ignore[return-value]


def _write_splits(folder: Path, counts: tuple[int, int, int], image_size: int, seed: int, num_classes: int) -> None:
    for split_index, (stem, count) in enumerate(zip(PUBLISHED_SHEETS, counts)):
        rows = []
        for c in range(num_classes):
            rng = np.random.default_rng([int(seed), split_index, c])
            mean, std = class_stats(c)
            hardness = np.round(rng.normal(mean, std, size=count)).astype(np.int64)
            z = (hardness - mean) / std
            images = render_class(rng, c, z, image_size)
            directory = f"{stem}/{c}"
            (folder / directory).mkdir(parents=True, exist_ok=True)
            ext = class_extension(c)
            for i in range(count):
                filename = f"synth_{stem}_{c}_{i:04d}.{ext}"
                _save_image(images[i], folder / directory / filename)
                rows.append((directory, filename, f"{directory}/{filename}", int(c), int(hardness[i])))
        _write_sheet(folder / f"{stem}.xlsx", rows)


def write_synthetic(
    out: str | os.PathLike,
    *,
    per_class: tuple[int, int, int] = (30, 6, 6),
    image_size: int = 64,
    seed: int = 0,
    num_classes: int = 6,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set in the published layout into ``out`` and return ``out``.

    ``per_class`` is the number of images per class in train, valid and test. The folder is built
    next to ``out`` and renamed into place, so ``out`` is either absent or complete. An existing
    non-empty ``out`` is an error unless ``overwrite=True``.
    """
    counts = _check_options(per_class, image_size, num_classes)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"synthetic data set folder already exists and is not empty: {out}")
    replacing = overwrite and (out.exists() or out.is_symlink())
    built = False
    try:
        with atomic_dir(out, replace=overwrite) as tmp:
            _write_splits(tmp, counts, image_size, seed, num_classes)
            built = True
    except OSError as exc:
        if not built or replacing:
            raise
        # The final rename fails when another writer filled ``out`` meanwhile.
        raise DataError(f"cannot create synthetic data set folder {out}: {exc.strerror or exc}") from None
    return out
