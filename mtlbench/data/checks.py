"""Load-time checks of a data set, the same for every reader: labels the training split never saw, images listed
twice in a split, images in two splits (by path or by file content) and classes smaller than a batch.

What would train on the wrong thing is a :class:`DataError`; what trains but may surprise is a
:class:`DataWarning` (the CLI prints it as a ``warning:`` line) and is kept on the table for ``data info``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from mtlbench.errors import ConfigError, DataError, DataWarning

from .splits import SPLIT_NAMES

if TYPE_CHECKING:
    from .table import ImageTable

SHOWN = 5   # names listed in one message before "... and N more"

# What each check means when it finds nothing, for `mtlbench data info`.
PASSED = {
    "classes": "every validation and test class is in the training split",
    "duplicates": "no image is listed twice in a split",
    "overlap": "no image is in two splits (same path or same file content)",
    "batch": "every class has at least {batch_size} training images (one batch)",
}


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f", ... and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _and(splits: Sequence[str]) -> str:
    return splits[0] if len(splits) == 1 else f"{', '.join(splits[:-1])} and {splits[-1]}"


def _digest(path: str, where: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise DataError(f"{where}: cannot read image {path} ({exc.strerror or exc})") from None
    return h.hexdigest()


def _unseen_classes(frame: pd.DataFrame, class_names: Sequence[str]) -> list[str]:
    train = set(frame.loc[frame["split"] == "train", "label"])
    found = []
    for split in SPLIT_NAMES[1:]:
        counts = frame.loc[frame["split"] == split, "label"].value_counts().sort_index()
        for label, n in counts.items():
            if label not in train:
                found.append(f"class {class_names[int(label)]!r} in the {split} split ({_plural(int(n), 'image')})")
    return found


def _duplicates(frame: pd.DataFrame) -> list[str]:
    """One message per split that lists an image (the same resolved path) more than once."""
    out = []
    for split in SPLIT_NAMES:
        part = frame[frame["split"] == split]
        counts = part.groupby("path", sort=False).size()
        twice = counts[counts > 1]
        if twice.empty:
            continue
        listed = part.drop_duplicates("path").set_index("path")["relpath"]
        names = [f"{listed[p]!r} ({n}x)" for p, n in twice.items()]
        out.append(f"{_plural(len(twice), 'image')} listed more than once in the {split} split "
                   f"({_plural(int((twice - 1).sum()), 'extra row')}): {_listing(names)}")
    return out


def _overlaps(frame: pd.DataFrame, where: str) -> list[str]:
    """Images in two splits: the same path, or distinct paths with the same bytes (a copy, a link).

    Only files whose size another split also has are hashed, so a clean data set costs one stat per image."""
    order = {s: i for i, s in enumerate(SPLIT_NAMES)}
    splits_of: dict[str, set[str]] = defaultdict(set)
    relpath: dict[str, str] = {}
    for path, rel, split in zip(frame["path"], frame["relpath"], frame["split"]):
        splits_of[path].add(split)
        relpath.setdefault(path, rel)

    def sorted_splits(paths: list[str]) -> list[str]:
        return sorted({s for p in paths for s in splits_of[p]}, key=order.__getitem__)

    found = [f"{relpath[p]!r} is listed in the {_and(sorted_splits([p]))} splits"
             for p in splits_of if len(splits_of[p]) > 1]

    by_size: dict[int, list[str]] = defaultdict(list)
    for path in splits_of:
        by_size[os.path.getsize(path)].append(path)
    by_digest: dict[str, list[str]] = defaultdict(list)
    for paths in by_size.values():
        if len(paths) > 1 and len(sorted_splits(paths)) > 1:
            for path in paths:
                by_digest[_digest(path, where)].append(path)
    for paths in by_digest.values():
        if len(paths) < 2 or len(sorted_splits(paths)) < 2:
            continue
        first, a, other, b = _pair(paths, splits_of, order)
        more = f" (and {_plural(len(paths) - 2, 'other file')})" if len(paths) > 2 else ""
        found.append(f"{relpath[first]!r} ({a}) and {relpath[other]!r} ({b}) have the same content{more}")
    return found


def _pair(paths: list[str], splits_of: dict[str, set[str]], order: dict[str, int]) -> tuple[str, str, str, str]:
    """Two distinct paths of one content group and a different split for each, in split order."""
    ranked = sorted(paths, key=lambda p: min(order[s] for s in splits_of[p]))
    for i, p in enumerate(ranked):
        for q in ranked[i + 1:]:
            for a in sorted(splits_of[p], key=order.__getitem__):
                for b in sorted(splits_of[q], key=order.__getitem__):
                    if a != b:
                        return p, a, q, b
    raise AssertionError("a content group spanning two splits has such a pair")


def _small_classes(frame: pd.DataFrame, class_names: Sequence[str], batch_size: int) -> list[str]:
    counts = frame.loc[frame["split"] == "train", "label"].value_counts().sort_index()
    return [f"{class_names[int(label)]!r} ({_plural(int(n), 'image')})" for label, n in counts.items()
            if n < batch_size]


def check_table(frame: pd.DataFrame, class_names: Sequence[str], where: str, *, allow_overlap: bool = False,
                batch_size: int | None = None) -> tuple[tuple[str, str], ...]:
    """Check a reader's frame (columns of :data:`~mtlbench.data.table.COLUMNS`) before it becomes a table.

    Raises one :class:`DataError` for a validation or test class the training split lacks, and for an image in
    two splits unless ``allow_overlap``. Warns (:class:`DataWarning`) for an image listed twice in a split, an
    allowed overlap and, when ``batch_size`` is given, a class with fewer training images than a batch. Returns
    the warnings as ``(check, message)`` pairs, ``check`` a key of :data:`PASSED`."""
    if not isinstance(allow_overlap, bool):
        raise ConfigError(f"data option allow_overlap must be true or false, got {allow_overlap!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    errors: list[str] = []
    found: list[tuple[str, str]] = []
    if not (frame["split"] == "train").any():
        errors.append("the training split has no images")
    else:
        unseen = _unseen_classes(frame, class_names)
        if unseen:
            errors.append(f"{_listing(unseen)}: not in the training split, so no model can learn "
                          f"{'it' if len(unseen) == 1 else 'them'}")
    found += [("duplicates", f"{where}: {text}") for text in _duplicates(frame)]
    overlaps = _overlaps(frame, where)
    if overlaps:
        text = f"{_plural(len(overlaps), 'image')} in more than one split"
        if allow_overlap:
            found.append(("overlap", f"{where}: {text}, allowed by allow_overlap: {_listing(overlaps)}"))
        else:
            errors.append(f"{text}, so evaluation would see training images: {_listing(overlaps)}; if this is "
                          f"meant, pass --allow-overlap (in a spec: data.allow_overlap = true)")
    if errors:
        raise DataError(f"{where}: {'; '.join(errors)}")
    if batch_size is not None:
        small = _small_classes(frame, class_names, batch_size)
        if small:
            text = f"{_plural(len(small), 'class', 'classes')} with fewer training images than a batch of {batch_size}"
            found.append(("batch", f"{where}: {text}: {_listing(small)}"))
    for _, message in found:
        warnings.warn(message, DataWarning, stacklevel=3)
    return tuple(found)


def check_report(table: ImageTable, batch_size: int | None = None) -> list[tuple[str, str]]:
    """``(level, text)`` lines for ``mtlbench data info``: each warning, then the checks that passed, then the
    smallest training class (what a batch size can be compared with)."""
    found = table.warnings
    lines = [("warning", message) for _, message in found]
    failed = {check for check, _ in found}
    passed = [text.format(batch_size=batch_size) for check, text in PASSED.items()
              if check not in failed and (check != "batch" or batch_size is not None)]
    if passed:
        lines.append(("ok", "; ".join(passed)))
    frame, names = table.frame, table.class_names
    counts = frame.loc[frame["split"] == "train", "label"].value_counts().sort_index()
    if len(counts):
        label, n = int(counts.idxmin()), int(counts.min())
        hint = "" if batch_size is not None else " (pass --batch-size to check the classes against a batch)"
        lines.append(("info", f"smallest training class: {names[label]!r} with {_plural(n, 'image')}{hint}"))
    return lines
