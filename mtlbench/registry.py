"""Name -> entry registries (timm style) for architectures, weightings, decoders and executors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from mtlbench.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with the paper it comes from and its default hyper-parameters."""

    name: str
    obj: T
    reference: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


class Registry(Generic[T]):
    """An ordered, case-insensitive name registry. Instances are module-level constants, never mutated at run time."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, *, reference: str = "", defaults: dict[str, Any] | None = None,
            summary: str = "") -> T:
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[key] = Entry(name, obj, reference, dict(defaults or {}), summary)
        return obj

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            return self.add(name, obj, **meta)

        return deco

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[str(name).lower()]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def canonical(self, name: str) -> str:
        return self.entry(name).name

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values()]

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
