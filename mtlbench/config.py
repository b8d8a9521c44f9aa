"""Typed configurations. Every run is fully described by a :class:`RunConfig`; its id is a hash of it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from mtlbench.errors import ConfigError

TargetScaling = Literal["none", "standard"]
TARGET_SCALINGS = ("none", "standard")
LABEL_SCALES = ("raw", "unit")
# Options added after runs were recorded: at these values they are left out of run ids, so every run recorded
# before an option existed keeps its id (and a results folder its finished cells).
LATER_DEFAULTS: dict[str, dict[str, Any]] = {"protocol": {"bn_reestimate_batches": 0},
                                             "fastcar": {"label_scale": "raw"}}


@dataclass(frozen=True)
class TrainingProtocol:
    """Training protocol shared by FastCAR and every MTL cell (FastCAR paper, sec. 4.1)."""

    epochs: int = 100
    batch_size: int = 32          # the paper does not state it
    img_size: int = 224           # 224 = the data set's native side
    lr: float = 1e-3
    weight_decay: float = 1e-4
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    pretrained: bool = False
    flip: bool = False            # random h/v flips; the paper does not mention augmentation
    max_steps_per_epoch: int | None = None   # cap for smoke runs; None = the whole training split
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    channels_last: bool = False
    amp: bool = False             # bf16 autocast (CUDA or CPU); loss and metrics stay float32
    compile: bool = False         # torch.compile the model
    latency_repeats: int = 20     # timed repeats for inference latency
    checkpoint_every: int = 1     # epochs between mid-run checkpoints in a sweep; 0 = none
    # Before each evaluation, re-estimate BatchNorm's running statistics from this many training batches (0: keep
    # the ones training accumulated, the paper's protocol). See Trainer.reestimate_batchnorm.
    bn_reestimate_batches: int = 0

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "img_size": self.img_size}
        for key, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"protocol.{key} must be a positive integer, got {value!r}")
        if self.img_size < 32:
            raise ConfigError(f"protocol.img_size must be >= 32 (ResNet-18 downsamples 32x), got {self.img_size}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ConfigError(f"protocol.checkpoint_every must be an integer >= 0, got {self.checkpoint_every!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"protocol.max_steps_per_epoch must be >= 1, got {self.max_steps_per_epoch}")
        if (isinstance(self.bn_reestimate_batches, bool) or not isinstance(self.bn_reestimate_batches, int)
                or self.bn_reestimate_batches < 0):
            raise ConfigError(f"protocol.bn_reestimate_batches must be an integer >= 0, got "
                              f"{self.bn_reestimate_batches!r}")

    # Fields that change speed but not the computation's meaning are left out of run ids.
    NON_IDENTITY = ("device", "latency_repeats", "compile", "checkpoint_every")


@dataclass(frozen=True)
class FastCARSettings:
    """FastCAR's label transformation and one-epoch test (FastCAR paper, sec. 3)."""

    gap: float = 50.0             # hardness units between consecutive shifted class ranges
    grad_threshold: float = 2.0   # the paper's bound on the mean gradient magnitude after one epoch
    max_attempts: int = 5
    gap_shrink: float = 0.5       # rule: each failed attempt multiplies the gap by this factor
    # Hybrid labels in the paper's raw hardness units ("raw"), or divided by half their span so they lie in [-1, 1]
    # ("unit", the FastCAR twin of the grid's target_scaling). The one-epoch test multiplies its measured gradient
    # back by that scale, so the paper's bound stays in hardness units.
    label_scale: str = "raw"

    def __post_init__(self) -> None:
        if self.gap <= 0:
            raise ConfigError(f"fastcar.gap must be > 0 (ranges must stay disjoint), got {self.gap}")
        if not 0 < self.gap_shrink < 1:
            raise ConfigError(f"fastcar.gap_shrink must be in (0, 1), got {self.gap_shrink}")
        if self.max_attempts < 1:
            raise ConfigError(f"fastcar.max_attempts must be >= 1, got {self.max_attempts}")
        if self.label_scale not in LABEL_SCALES:
            raise ConfigError(f"fastcar.label_scale must be one of {', '.join(LABEL_SCALES)}, got "
                              f"{self.label_scale!r}")


#: Named FastCAR settings for ``mtlbench fastcar --preset``: the paper's, and "steady", which re-estimates BatchNorm's
#: running statistics before each evaluation (the factor that settled the epoch-to-epoch swings in the
#: fastcar-ablation-cpu ablation; docs/fastcar-ablation-cpu). Values: (protocol fields, fastcar fields).
FASTCAR_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "paper": ({}, {}),
    "steady": ({"bn_reestimate_batches": 16}, {}),
}


def shown_architecture(architecture: str, variant: str | None) -> str:
    """An architecture with its [arch_sweep] variant: ``MTAL[rho=0.4]`` (the plain name without one)."""
    return f"{architecture}[{variant}]" if variant else architecture


def base_architecture(shown: str) -> str:
    """The registered name of a shown architecture: ``MTAL[rho=0.4]`` -> ``MTAL``."""
    return shown.split("[", 1)[0]


def cell_name(architecture: str | None, weighting: str | None = None, decoder: str | None = None,
              scaling: str | None = None) -> str:
    """The one display name of a run: ``HPS+EW/decoder1`` (``/standard`` added where a target scaling tells cells
    apart; ``HPS+EW`` across decoders), or ``FastCAR`` (``architecture`` None). Fault-injection points match it."""
    if architecture is None:
        return "FastCAR"
    return "/".join([f"{architecture}+{weighting}", *(part for part in (decoder, scaling) if part)])


@dataclass(frozen=True)
class RunConfig:
    """One run: FastCAR (``kind='fastcar'``) or one MTL grid cell (``kind='mtl'``)."""

    kind: Literal["fastcar", "mtl"]
    protocol: TrainingProtocol = field(default_factory=TrainingProtocol)
    seed: int = 0
    architecture: str | None = None
    weighting: str | None = None
    decoder: str | None = None
    target_scaling: TargetScaling = "none"
    fastcar: FastCARSettings | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)     # overrides of the defaults table
    weight_args: dict[str, Any] = field(default_factory=dict)
    # The arch_args keys a spec's [arch_sweep.X] varies, comma-joined: the run is one variant of its architecture,
    # shown as e.g. "MTAL[rho=0.4]". Presentation only: the values are in arch_args, so it is not in the run id.
    variant_keys: str = ""
    # The one option a spec's [ablation] changed from the spec's own settings, e.g. "protocol.lr=0.0003" ("" for
    # the spec's setting). Presentation only: the value is in the protocol or fastcar settings, so not in the id.
    setting: str = ""

    def __post_init__(self) -> None:
        if self.target_scaling not in TARGET_SCALINGS:
            raise ConfigError(f"target_scaling must be one of {', '.join(TARGET_SCALINGS)}, "
                              f"got {self.target_scaling!r}")
        if self.kind == "mtl" and not (self.architecture and self.weighting and self.decoder):
            raise ConfigError("an MTL run needs architecture, weighting and decoder")

    @property
    def cell_name(self) -> str:
        """``HPS+EW/decoder1`` (``MTAL[rho=0.4]+EW/decoder1`` for a variant) or ``FastCAR``: the short name
        fault-injection points match."""
        if self.kind == "fastcar":
            return cell_name(None)
        return cell_name(self.shown_architecture, self.weighting, self.decoder)

    @property
    def variant(self) -> str | None:
        """``rho=0.4`` for a run of an [arch_sweep] variant, else None."""
        keys = [k for k in self.variant_keys.split(",") if k]
        return ",".join(f"{k}={self.arch_args[k]}" for k in keys) or None

    @property
    def shown_architecture(self) -> str | None:
        """The architecture with its variant, ``MTAL[rho=0.4]``, as the report and the console name it."""
        return shown_architecture(self.architecture, self.variant) if self.architecture else None

    @property
    def label(self) -> str:
        """The display name with what else tells runs apart: ``HPS+EW/decoder1/none seed=0``."""
        setting = f" [{self.setting}]" if self.setting else ""
        if self.kind == "fastcar":
            return f"{cell_name(None)}{setting} seed={self.seed}"
        name = cell_name(self.shown_architecture, self.weighting, self.decoder, self.target_scaling)
        return f"{name}{setting} seed={self.seed}"

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("variant_keys")
        d.pop("setting")
        for key in TrainingProtocol.NON_IDENTITY:
            d["protocol"].pop(key, None)
        for part, defaults in LATER_DEFAULTS.items():
            for key, value in defaults.items():
                if d.get(part) is not None and d[part].get(key) == value:
                    del d[part][key]
        samples = self.samples_per_step()
        if samples != 1:   # MoDo's and SDMGrad's runs before three-batch steps took one batch: another result
            d["samples_per_step"] = samples
        return d

    def samples_per_step(self) -> int:
        """Batches the cell's weighting takes per step (the registry trait ``samples``; FastCAR: 1)."""
        if self.kind != "mtl":
            return 1
        from mtlbench.methods.weightings import WEIGHTINGS   # the method registry imports torch and LibMTL

        try:
            return int(WEIGHTINGS.entry(self.weighting).trait("samples", 1))
        except ConfigError:   # an unknown name is reported where the cell is planned
            return 1

    def run_id(self, data_fingerprint: str) -> str:
        """Stable id: a hash of the configuration that defines the result and of the data."""
        blob = json.dumps({"config": self.identity(), "data": data_fingerprint}, sort_keys=True, default=str)
        prefix = "fastcar" if self.kind == "fastcar" else f"{self.architecture}-{self.weighting}-{self.decoder}"
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in prefix.lower())
        return f"{safe}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @staticmethod
    def from_json(text: str) -> "RunConfig":
        d = json.loads(text)
        d["protocol"] = TrainingProtocol(**d["protocol"])
        if d.get("fastcar") is not None:
            d["fastcar"] = FastCARSettings(**d["fastcar"])
        return RunConfig(**d)


def protocol_from_dict(values: dict[str, Any], base: TrainingProtocol | None = None, where: str = "protocol") -> TrainingProtocol:
    """Build a TrainingProtocol from user input, naming an unknown key and the allowed ones."""
    allowed = {f.name for f in fields(TrainingProtocol)}
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown key {where}.{key}; allowed: {', '.join(sorted(allowed))}")
    return replace(base or TrainingProtocol(), **values)
