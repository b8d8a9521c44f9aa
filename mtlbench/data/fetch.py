"""Download, unpack, verify and install the published data set, never leaving a half-written folder."""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from PIL import Image

from mtlbench.atomic import atomic_dir, atomic_path, temporary_name
from mtlbench.errors import DataError

from .steel import PUBLISHED_SHEETS, read_published
from .table import ImageTable

DEFAULT_URL = "https://github.com/fastcandr/Advanced-Steel-Property-Dataset/archive/refs/heads/main.zip"
EXPECTED_IMAGES = 4536
CHUNK = 1 << 20


def default_dest() -> Path:
    from .cache import default_cache_dir

    return default_cache_dir() / "datasets" / "advanced-steel-property"


def verify(folder: str | os.PathLike, expected_images: int | None = EXPECTED_IMAGES) -> ImageTable:
    """Check a published-layout folder: the three sheets, every listed image present, the image count,
    and that the first image of each split opens. Returns the table; DataError otherwise."""
    folder = Path(folder)
    for stem in PUBLISHED_SHEETS:
        if not (folder / f"{stem}.xlsx").is_file():
            raise DataError(f"{folder}: missing sheet {stem}.xlsx")
    table = read_published(folder)
    if expected_images is not None and len(table.frame) != expected_images:
        raise DataError(f"{folder}: the sheets list {len(table.frame)} images, expected {expected_images}")
    for split in table.frame["split"].unique():
        first = table.frame.loc[table.frame["split"] == split, "path"].iloc[0]
        try:
            with Image.open(first) as image:
                image.load()
        except Exception as exc:  # e.g. a Git LFS pointer file instead of the image
            raise DataError(f"cannot decode image {first}: {type(exc).__name__}: {exc}") from None
    return table


def _is_remote(url: str) -> bool:
    return urllib.parse.urlparse(url).scheme.lower() in ("http", "https", "ftp")


def _local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or plain path names; None for a remote URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(url).expanduser()
    return None


def _progress(enabled: bool, total: int | None, label: str):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    return bar, label, total


def _copy_stream(src, dst_path: Path, total: int | None, progress: bool, label: str) -> None:
    spec = _progress(progress, total, label)
    with open(dst_path, "wb") as dst:
        if spec is None:
            shutil.copyfileobj(src, dst, CHUNK)
            return
        bar, label, total = spec
        with bar:
            task = bar.add_task(label, total=total)
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                dst.write(chunk)
                bar.advance(task, len(chunk))


def download(url: str, target: Path, *, progress: bool = True) -> Path:
    """Copy ``url`` (http(s), ``file://`` or a local path) to ``target``, atomically; DataError naming the URL on
    failure."""
    hint = "download the archive another way and pass it with --url file:///path/to/archive.zip"
    local = _local_path(url)
    if local is not None:
        if not local.is_file():
            raise DataError(f"cannot fetch {url}: file not found: {local}")
        with open(local, "rb") as src, atomic_path(target) as tmp:
            _copy_stream(src, tmp, local.stat().st_size, progress, local.name)
        return target
    if not _is_remote(url):
        raise DataError(f"cannot fetch {url}: unsupported URL scheme; use http(s)://, file:// or a local path")
    request = urllib.request.Request(url, headers={"User-Agent": "mtlbench"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, atomic_path(target) as tmp:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            name = Path(urllib.parse.urlparse(url).path).name or url
            _copy_stream(response, tmp, total, progress, name)
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}; {hint}") from None
    except urllib.error.URLError as exc:
        raise DataError(f"cannot fetch {url}: {exc.reason}; {hint}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed responses
        raise DataError(f"cannot fetch {url}: {type(exc).__name__}: {exc}; {hint}") from None
    return target


def unpack(archive: Path, into: Path, url: str) -> None:
    """Extract a zip or tar(.gz) archive; DataError when it is neither or is damaged."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(into)  # zipfile drops absolute and '..' components
            return
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(into, filter="data")
                else:  # pragma: no cover - old Pythons
                    root = into.resolve()
                    for member in tf.getmembers():
                        if not (into / member.name).resolve().is_relative_to(root) or member.issym() or member.islnk():
                            raise DataError(f"archive from {url} has an unsafe member {member.name!r}")
                    tf.extractall(into)
            return
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot unpack the archive from {url}: {type(exc).__name__}: {exc}") from None
    raise DataError(f"the file from {url} is not a zip or tar archive")


def find_dataset_root(folder: Path, url: str) -> Path:
    """The shallowest folder under ``folder`` that holds ``trainset.xlsx``."""
    best: Path | None = None
    for current, _dirs, files in os.walk(folder):
        if "trainset.xlsx" in files:
            here = Path(current)
            if best is None or len(here.parts) < len(best.parts):
                best = here
    if best is None:
        raise DataError(f"the archive from {url} holds no trainset.xlsx")
    return best


def fetch(
    url: str = DEFAULT_URL,
    dest: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    expected_images: int | None = EXPECTED_IMAGES,
    force: bool = False,
) -> Path:
    """Download the published data set archive from ``url`` and install it at ``dest``.

    ``dest`` defaults to ``<cache>/datasets/advanced-steel-property``. When ``dest`` already holds a
    data set that verifies, it is returned without downloading unless ``force``. The archive is
    unpacked into a temporary folder next to ``dest``, verified (three sheets, every listed image,
    ``expected_images`` images when not None) and renamed into place (``atomic_dir``), so ``dest`` is
    never half written. Returns ``dest``.
    """
    dest = Path(dest) if dest is not None else default_dest()
    if dest.exists() and not force:
        try:
            verify(dest, expected_images)
            return dest
        except DataError:
            pass  # broken or partial: replace it below
    with atomic_dir(dest, replace=True) as staged:
        # Download and unpack inside the staged folder (one file system, one cleanup on failure), then lift the
        # data set root (the archive's top folder) to the staged folder and drop the rest.
        work = temporary_name(staged / "fetch")
        name = Path(urllib.parse.urlparse(url).path).name or "archive"
        archive = download(url, work / f"download-{name}", progress=progress)
        unpacked = work / "unpacked"
        unpack(archive, unpacked, url)
        archive.unlink()
        found = find_dataset_root(unpacked, url)
        try:
            verify(found, expected_images)
        except DataError as exc:
            raise DataError(f"the archive from {url} failed verification: {exc}") from None
        for entry in found.iterdir():
            os.rename(entry, staged / entry.name)
        shutil.rmtree(work)
    return dest
