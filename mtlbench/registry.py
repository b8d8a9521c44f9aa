"""Name -> entry registries (timm style) for architectures, weightings, decoders and executors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

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
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)   # option -> its allowed values
    options: type | None = None     # the typed options dataclass the defaults come from, when the method has one
    library: str = ""               # who implements it: "LibMTL 1.1.5", "mtlbench", "torchjd" ...
    traits: dict[str, Any] = field(default_factory=dict)   # what the method is, not how it is tuned (e.g. rep_grad)

    def trait(self, name: str, default: Any = None) -> Any:
        return self.traits.get(name, default)


def option_defaults(entry: Entry) -> dict[str, Any]:
    """The options a method accepts, with their defaults."""
    return dict(entry.defaults)


def options_table(options: type) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
    """(defaults, choices) of a typed options dataclass: each field's default (lists as lists, the TOML shape), and
    the allowed values a field lists in ``metadata["choices"]``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"{options!r} is not a dataclass")
    defaults: dict[str, Any] = {}
    choices: dict[str, tuple[Any, ...]] = {}
    for f in dataclasses.fields(options):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            raise TypeError(f"{options.__name__}.{f.name} has no default")
        defaults[f.name] = list(value) if isinstance(value, tuple) else value
        if "choices" in f.metadata:
            choices[f.name] = tuple(f.metadata["choices"])
    return defaults, choices


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _accepts(default: Any, value: Any) -> bool:
    """Whether ``value`` has the type of ``default``. A float takes an int (TOML writes 2 for 2.0), never the
    reverse; a None default (a value the method computes unless given, e.g. a tolerance) takes a number or None
    (TOML has no null, so a spec can only give a number); a list takes a list whose items match the default's first
    item."""
    if isinstance(default, bool):  # before int: bool is an int subclass
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if default is None:
        return value is None or _number(value)
    if isinstance(default, float):
        return _number(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and (not default or all(_accepts(default[0], v) for v in value))
    return isinstance(value, type(default))


def _describe(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float) or default is None:
        return "a number"
    if isinstance(default, (list, tuple)):
        return f"a list of {_describe(default[0]).split(' ', 1)[1]}s" if default else "a list"
    return "a string" if isinstance(default, str) else f"a {type(default).__name__}"


def check_options(entry: Entry, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``options`` (overrides of ``entry``'s defaults) as a dict, once every key is one of its options and every
    value has the type of that option's default (see :func:`_accepts`).

    ``where`` names the method in the error, e.g. ``weight_args.Nash-MTL``. Raises :class:`ConfigError`.
    """
    allowed = option_defaults(entry)
    for key, value in options.items():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or f"none ({entry.name} takes no options)"
            raise ConfigError(f"{where}: unknown option {key!r}; allowed: {names}")
        if not _accepts(allowed[key], value):
            raise ConfigError(f"{where}.{key} must be {_describe(allowed[key])} (default {allowed[key]!r}), "
                              f"got {value!r} ({type(value).__name__})")
        if key in entry.choices and value not in entry.choices[key]:
            raise ConfigError(f"{where}.{key} must be one of {', '.join(map(repr, entry.choices[key]))}, "
                              f"got {value!r}")
    return dict(options)


class Registry(Generic[T]):
    """An ordered, case-insensitive name registry, filled at import time by the definitions themselves (timm's
    ``@register_model``) and never changed after.

    ``groups`` names fixed subsets (e.g. ``"paper"``: the FastCAR paper's grid); their members come first in
    :meth:`names`, in the group's order, and everything else follows in registration order.
    """

    def __init__(self, kind: str, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self.groups = {g: tuple(names) for g, names in (groups or {}).items()}

    def add(self, name: str, obj: T, *, reference: str = "", defaults: dict[str, Any] | None = None,
            summary: str = "", choices: dict[str, tuple[Any, ...]] | None = None, options: type | None = None,
            library: str = "", **traits: Any) -> T:
        """Register ``obj`` as ``name``. Its options come from ``options`` (a dataclass whose fields are the
        defaults, with ``metadata["choices"]`` for enumerations) or, for LibMTL's own classes, ``defaults`` and
        ``choices``; ``traits`` say what the method is (see the method registries)."""
        key = name.lower()
        if key in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if options is not None:
            if defaults or choices:
                raise ValueError(f"{self.kind} {name!r}: give options or defaults/choices, not both")
            defaults, choices = options_table(options)
        defaults, choices = dict(defaults or {}), dict(choices or {})
        for option, allowed in choices.items():
            if defaults.get(option) not in allowed:
                raise ValueError(f"{self.kind} {name!r}: default {option}={defaults.get(option)!r} not in {allowed}")
        self._entries[key] = Entry(name, obj, reference, defaults, summary, choices, options, library, dict(traits))
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

    def names(self, group: str | None = None) -> list[str]:
        """Every name (a group's members first, see the class), or only ``group``'s."""
        if group is not None:
            if group not in self.groups:
                raise ConfigError(f"unknown {self.kind} group {group!r}; choose one of: {', '.join(self.groups)}")
            return [self.canonical(n) for n in self.groups[group] if n in self]
        return [e.name for e in self]

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        first = [n.lower() for names in self.groups.values() for n in names]
        rank = {n: i for i, n in enumerate(dict.fromkeys(first))}
        keys = sorted(self._entries, key=lambda k: rank.get(k, len(rank)))   # stable: ties keep registration order
        return iter(self._entries[k] for k in keys)

    def __len__(self) -> int:
        return len(self._entries)
