"""One exception type for every user-facing failure: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class MtlbenchError(Exception):
    """A failure caused by the user's input or environment; its message names the culprit."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line: the CLI contract is a single readable line per failure.
        super().__init__(" ".join(str(message).split()))


class DataError(MtlbenchError):
    """A data set, sheet, column, label or image is missing or malformed."""


class DataWarning(UserWarning):
    """A data set that loads and trains, but maybe not as the user meant (a duplicated row, a class smaller than
    a batch); the CLI prints it as one ``warning:`` line."""


class ConfigError(MtlbenchError):
    """An option, spec key or registry name is unknown or out of range."""


class Diverged(Exception):
    """A training loss became NaN or infinite; the cell stops early and is recorded as diverged."""

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch
