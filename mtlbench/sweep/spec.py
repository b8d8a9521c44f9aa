"""Sweep specs (TOML): data set, protocol, axes, FastCAR. Errors name the key and the allowed values.

Example::

    name = "paper"
    [data]
    source = "steel"            # default | steel | a folder in the published layout | a .csv/.xlsx/.parquet table
    [protocol]
    epochs = 100
    batch_size = 32
    img_size = 224
    [axes]
    architectures = "paper"    # "all" (every registered one), "paper" (the FastCAR paper's 6) or a list
    weightings = "paper"       # likewise: "all", "paper" (17) or a list
    decoders = "all"
    target_scaling = ["none"]
    seeds = [0]
    [fastcar]
    enabled = true
    gap = 50.0
    [fastcar.protocol]         # optional: FastCAR's own training length (epochs, max_steps_per_epoch)
    epochs = 20
    [ablation.protocol]        # optional: one factor at a time from the settings above, each value its own runs
    lr = [3e-4]
    [ablation.fastcar]
    label_scale = ["unit"]
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mtlbench.config import TARGET_SCALINGS, FastCARSettings, TrainingProtocol, RunConfig, protocol_from_dict
from mtlbench.errors import ConfigError
from mtlbench.methods.architectures import ARCHITECTURES
from mtlbench.methods.weightings import WEIGHTINGS
from mtlbench.models.decoders import DECODERS
from mtlbench.registry import Registry, check_options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Package data (pyproject's package-data), so that an installed mtlbench finds its specs too.
SPEC_DIR = Path(__file__).resolve().parents[1] / "specs"
TOP_KEYS = {"name", "description", "data", "protocol", "axes", "fastcar", "arch_args", "weight_args", "arch_sweep",
            "ablation"}
AXES_KEYS = {"architectures", "weightings", "decoders", "target_scaling", "seeds"}
DATA_KEYS = {"source", "image_col", "class_col", "target_col", "split_col", "seed", "allow_overlap"}
#: The protocol keys FastCAR may set for itself ([fastcar.protocol]): how long it trains, nothing else.
FASTCAR_OWN_PROTOCOL = ("epochs", "max_steps_per_epoch")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    data: dict[str, Any]
    protocol: TrainingProtocol
    architectures: tuple[str, ...]
    weightings: tuple[str, ...]
    decoders: tuple[str, ...]
    target_scaling: tuple[str, ...] = ("none",)
    seeds: tuple[int, ...] = (0,)
    fastcar: FastCARSettings | None = field(default_factory=FastCARSettings)
    arch_args: dict[str, dict] = field(default_factory=dict)      # per architecture overrides
    weight_args: dict[str, dict] = field(default_factory=dict)    # per weighting overrides
    # per architecture, options swept as an axis: {"MTAL": {"rho": [0.1, ..., 0.9]}}; each combination of values is
    # a variant of the architecture (its own cells, shown as "MTAL[rho=0.4]")
    arch_sweep: dict[str, dict[str, list]] = field(default_factory=dict)
    # one factor at a time: (section, key, value) with section "protocol" or "fastcar"; each changes the spec's
    # setting in that one place and repeats its runs (a fastcar key: only FastCAR's runs, the grid ignores it)
    ablation: tuple[tuple[str, str, Any], ...] = ()
    description: str = ""
    # FastCAR's own training length over the protocol ([fastcar.protocol]: epochs, max_steps_per_epoch). Its runs
    # record it in their config, and the report says where FastCAR's budget differs from the grid's.
    fastcar_protocol: dict[str, Any] = field(default_factory=dict)

    def with_overrides(self, *, source: str | None = None, allow_overlap: bool = False, device: str | None = None,
                       checkpoint_every: int | None = None) -> "SweepSpec":
        """The command line's overrides of a spec, in one place: another data ``source`` (``--data``; column
        options are kept for tables), ``allow_overlap`` (a data option, so it reaches every worker that loads the
        data), the ``device`` and the checkpoint frequency (protocol fields; neither changes a run's id)."""
        data = dict(self.data)
        if source is not None:
            data["source"] = source
        if allow_overlap:
            data["allow_overlap"] = True
        protocol = self.protocol
        if device is not None:
            protocol = replace(protocol, device=device)
        if checkpoint_every is not None:
            protocol = replace(protocol, checkpoint_every=checkpoint_every)
        return replace(self, data=data, protocol=protocol)

    def cells(self) -> list[RunConfig]:
        """Every run of the sweep, in a stable order: the spec's setting (FastCAR first per seed, then the grid),
        then each [ablation] setting's runs in the order given."""
        out = self._setting_cells(self.protocol, self.fastcar, grid=True)
        for section, key, value in self.ablation:
            protocol = replace(self.protocol, **{key: value}) if section == "protocol" else self.protocol
            fastcar = replace(self.fastcar, **{key: value}) if section == "fastcar" and self.fastcar else self.fastcar
            out += [replace(cfg, setting=f"{section}.{key}={value}")
                    for cfg in self._setting_cells(protocol, fastcar, grid=section == "protocol")]
        return out

    def _setting_cells(self, protocol: TrainingProtocol, fastcar: FastCARSettings | None,
                       grid: bool) -> list[RunConfig]:
        out: list[RunConfig] = []
        if fastcar is not None:
            own = replace(protocol, **self.fastcar_protocol)
            out += [RunConfig(kind="fastcar", protocol=own, seed=s, fastcar=fastcar) for s in self.seeds]
        if not grid:
            return out
        for seed in self.seeds:
            for scaling in self.target_scaling:
                for dec in self.decoders:
                    for arch in self.architectures:
                        for variant in self.variants(arch):
                            for w in self.weightings:
                                out.append(RunConfig(
                                    kind="mtl", protocol=protocol, seed=seed, architecture=arch, weighting=w,
                                    decoder=dec, target_scaling=scaling,  # type: ignore[arg-type]
                                    arch_args={**self.arch_args.get(arch, {}), **variant},
                                    weight_args=self.weight_args.get(w, {}), variant_keys=",".join(variant)))
        return out

    def variants(self, arch: str) -> list[dict[str, Any]]:
        """The option values of each variant of ``arch`` ([arch_sweep]); one empty variant when it is not swept."""
        swept = self.arch_sweep.get(arch, {})
        return [dict(zip(swept, values)) for values in itertools.product(*swept.values())]


def _names(value: Any, registry: Registry, key: str, allow_empty: bool = False) -> tuple[str, ...]:
    if value == "all":
        return tuple(registry.names())
    if isinstance(value, str) and value in registry.groups:
        return tuple(registry.names(value))
    if isinstance(value, str):
        value = [value]
    if allow_empty and value == []:
        return ()
    if not isinstance(value, list) or not value:
        raise ConfigError(f"axes.{key} must be \"all\", one of the groups ({', '.join(registry.groups) or 'none'}) "
                          f"or a non-empty list of: {', '.join(registry.names())}")
    out = []
    for v in value:
        if v not in registry:
            raise ConfigError(f"axes.{key}: unknown {registry.kind} {v!r}; allowed: {', '.join(registry.names())}")
        out.append(registry.canonical(v))
    return tuple(dict.fromkeys(out))


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"unknown key {prefix}{key}; allowed: {', '.join(sorted(allowed))}")


def _method_args(raw: Any, registry: Registry, section: str) -> dict[str, dict]:
    """``[arch_args.X]`` / ``[weight_args.X]`` tables keyed by canonical method name, each option checked."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must hold one table per {registry.kind}, e.g. [{section}.<name>]")
    out: dict[str, dict] = {}
    for name, options in raw.items():
        if name not in registry:
            raise ConfigError(f"{section}: unknown {registry.kind} {name!r}; allowed: {', '.join(registry.names())}")
        entry = registry.entry(name)
        where = f"{section}.{entry.name}"
        if entry.name in out:
            raise ConfigError(f"{where} is given twice (names ignore case)")
        if not isinstance(options, dict):
            raise ConfigError(f"{where} must be a table of options, got {options!r}")
        out[entry.name] = check_options(entry, options, where)
    return out


def _arch_sweep(raw: Any, args: dict[str, dict], architectures: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """``[arch_sweep.X] option = [v1, v2, ...]``: every value checked as ``[arch_args.X]`` checks one."""
    if not isinstance(raw, dict):
        raise ConfigError("arch_sweep must hold one table per architecture, e.g. [arch_sweep.MTAL] rho = [0.4, 0.55]")
    out: dict[str, dict[str, list]] = {}
    for name, options in raw.items():
        if name not in ARCHITECTURES:
            raise ConfigError(f"arch_sweep: unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES.names())}")
        entry = ARCHITECTURES.entry(name)
        where = f"arch_sweep.{entry.name}"
        if entry.name not in architectures:
            raise ConfigError(f"{where}: {entry.name} is not in axes.architectures, so nothing would sweep it")
        if not isinstance(options, dict) or not options:
            raise ConfigError(f"{where} must be a table of option = [values], got {options!r}")
        swept: dict[str, list] = {}
        for key, values in options.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {values!r}")
            if key in args.get(entry.name, {}):
                raise ConfigError(f"{where}.{key} is also set in arch_args.{entry.name}; give it in one place")
            for v in values:
                check_options(entry, {key: v}, where)
            if len({repr(v) for v in values}) < len(values):
                raise ConfigError(f"{where}.{key} repeats a value: {values!r} (each value is one variant)")
            swept[key] = list(values)
        out[entry.name] = swept
    return out


def _fastcar_protocol(raw: Any, protocol: TrainingProtocol, enabled: bool) -> dict[str, Any]:
    """``[fastcar.protocol] epochs = 20``: FastCAR's own training length, checked as the protocol checks it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"fastcar.protocol must be a table, e.g. epochs = 20; got {raw!r}")
    if raw and not enabled:
        raise ConfigError("fastcar.protocol: FastCAR is not enabled in this spec, so nothing would train with it")
    _check_keys(raw, set(FASTCAR_OWN_PROTOCOL), "fastcar.protocol")
    try:
        replace(protocol, **raw)
    except ConfigError as exc:
        raise ConfigError(f"fastcar.protocol: {exc}") from None
    return dict(raw)


def _no_ablation_of(fc_protocol: dict[str, Any], ablation: tuple[tuple[str, str, Any], ...]) -> dict[str, Any]:
    """A protocol key FastCAR sets for itself cannot also be an ablation factor: FastCAR's runs would not change."""
    for section, key, _ in ablation:
        if section == "protocol" and key in fc_protocol:
            raise ConfigError(f"ablation.protocol.{key}: FastCAR sets {key} itself in fastcar.protocol, so the "
                              f"ablation would not change its runs; vary it in one place")
    return fc_protocol


#: Protocol fields a sweep sets up once for all its runs, so an ablation cannot vary them.
ONE_PER_SWEEP_WHY = {"img_size": "a sweep decodes its images once, at the spec's size",
                     "amp": "a sweep checks once that the device supports bf16 autocast"}
ONE_PER_SWEEP = set(ONE_PER_SWEEP_WHY)


def _ablation(raw: Any, protocol: TrainingProtocol, fastcar: FastCARSettings | None) -> tuple[tuple[str, str, Any], ...]:
    """``[ablation.protocol] lr = [3e-4]``: each value checked as the section checks it, and not the spec's own."""
    if not isinstance(raw, dict):
        raise ConfigError("ablation must hold [ablation.protocol] and / or [ablation.fastcar] tables of value lists")
    _check_keys(raw, {"protocol", "fastcar"}, "ablation")
    out: list[tuple[str, str, Any]] = []
    for section, table in raw.items():
        if section == "fastcar" and fastcar is None:
            raise ConfigError("ablation.fastcar: FastCAR is not enabled in this spec, so nothing would vary it")
        base = protocol if section == "protocol" else fastcar
        allowed = {f.name for f in fields(base)} - set(getattr(base, "NON_IDENTITY", ()))
        if not isinstance(table, dict):
            raise ConfigError(f"ablation.{section} must be a table of value lists, e.g. lr = [3e-4]")
        fixed = sorted(ONE_PER_SWEEP & set(table)) if section == "protocol" else []
        for key in fixed:
            raise ConfigError(f"ablation.protocol.{key}: {ONE_PER_SWEEP_WHY[key]}; give it as the protocol of a "
                              f"spec of its own")
        _check_keys(table, allowed - ONE_PER_SWEEP, f"ablation.{section}")
        for key, values in table.items():
            where = f"ablation.{section}.{key}"
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where} must be a non-empty list of values, got {values!r}")
            if len(set(map(repr, values))) < len(values):
                raise ConfigError(f"{where} repeats a value: {values!r} (each value is one setting)")
            for value in values:
                if value == getattr(base, key):
                    raise ConfigError(f"{where}: {value!r} is the spec's own setting, which runs anyway")
                try:
                    replace(base, **{key: value})
                except (ConfigError, TypeError, ValueError) as exc:
                    raise ConfigError(f"{where}: {value!r} is refused ({exc})") from None
                out.append((section, key, value))
    return tuple(out)


def parse_spec(raw: dict[str, Any], default_name: str = "sweep") -> SweepSpec:
    _check_keys(raw, TOP_KEYS, "")
    data = dict(raw.get("data", {}))
    _check_keys(data, DATA_KEYS, "data")
    data.setdefault("source", "default")
    protocol = protocol_from_dict(raw.get("protocol", {}))
    axes = dict(raw.get("axes", {}))
    _check_keys(axes, AXES_KEYS, "axes")
    scalings = axes.get("target_scaling", ["none"])
    scalings = list(TARGET_SCALINGS) if scalings == "all" else ([scalings] if isinstance(scalings, str) else scalings)
    for s in scalings:
        if s not in TARGET_SCALINGS:
            raise ConfigError(f"axes.target_scaling: unknown value {s!r}; allowed: {', '.join(TARGET_SCALINGS)}")
    seeds = axes.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"axes.seeds must be a list of integers, got {seeds!r}")
    fc_raw = dict(raw.get("fastcar", {"enabled": True}))
    enabled = fc_raw.pop("enabled", True)
    fc_protocol = _fastcar_protocol(fc_raw.pop("protocol", {}), protocol, enabled)
    _check_keys(fc_raw, {f.name for f in fields(FastCARSettings)}, "fastcar")
    fastcar = replace(FastCARSettings(), **fc_raw) if enabled else None
    # A FastCAR-only sweep empties all three grid axes; one empty axis alone is a mistake, as is an empty sweep.
    grid_axes = ("architectures", "weightings", "decoders")
    fastcar_only = fastcar is not None and all(axes.get(k, "all") == [] for k in grid_axes)
    return SweepSpec(
        name=str(raw.get("name", default_name)), description=str(raw.get("description", "")), data=data,
        protocol=protocol,
        architectures=(architectures := _names(axes.get("architectures", "all"), ARCHITECTURES, "architectures",
                                               fastcar_only)),
        weightings=_names(axes.get("weightings", "all"), WEIGHTINGS, "weightings", fastcar_only),
        decoders=_names(axes.get("decoders", "all"), DECODERS, "decoders", fastcar_only),
        target_scaling=tuple(dict.fromkeys(scalings)), seeds=tuple(dict.fromkeys(seeds)), fastcar=fastcar,
        arch_args=(arch_args := _method_args(raw.get("arch_args", {}), ARCHITECTURES, "arch_args")),
        weight_args=_method_args(raw.get("weight_args", {}), WEIGHTINGS, "weight_args"),
        arch_sweep=_arch_sweep(raw.get("arch_sweep", {}), arch_args, architectures),
        ablation=(ablation := _ablation(raw.get("ablation", {}), protocol, fastcar)),
        fastcar_protocol=_no_ablation_of(fc_protocol, ablation))


def load_spec(path_or_name: str | Path) -> SweepSpec:
    """A spec file, or the name of one shipped in ``mtlbench/specs/`` (``paper``, ``smoke``, ``demo``, ...)."""
    path = Path(path_or_name)
    if not path.is_file():
        candidate = SPEC_DIR / f"{path_or_name}.toml"
        if candidate.exists():
            path = candidate
        else:
            shipped = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.toml"))) if SPEC_DIR.exists() else "none"
            raise ConfigError(f"sweep spec {path_or_name} not found (shipped specs: {shipped})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep spec {path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"sweep spec {path}: cannot read ({exc.strerror})") from None
    try:
        return parse_spec(raw, default_name=path.stem)
    except TypeError as exc:
        raise ConfigError(f"sweep spec {path}: {exc}") from None


def parse_filters(only: list[str] | None) -> dict[str, set[str]]:
    """``--only arch=MTAN,weighting=IMTL`` -> {"architecture": {"MTAN"}, "weighting": {"IMTL"}} (``|`` for OR)."""
    keys = {"arch": "architecture", "architecture": "architecture", "weighting": "weighting",
            "decoder": "decoder", "scaling": "target_scaling", "target_scaling": "target_scaling",
            "seed": "seed", "kind": "kind"}
    out: dict[str, set[str]] = {}
    for chunk in only or []:
        for item in chunk.split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise ConfigError(f"--only filter {item!r} must look like key=value; keys: {', '.join(sorted(keys))}")
            k, v = (s.strip() for s in item.split("=", 1))
            if k not in keys:
                raise ConfigError(f"--only: unknown key {k!r}; allowed: {', '.join(sorted(keys))}")
            out.setdefault(keys[k], set()).update(x.lower() for x in v.split("|"))
    return out


def matches(cfg: RunConfig, filters: dict[str, set[str]]) -> bool:
    for key, values in filters.items():
        value = getattr(cfg, key)
        if value is None or str(value).lower() not in values:
            return False
    return True
