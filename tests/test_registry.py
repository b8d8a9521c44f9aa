"""The registries: typed options dataclasses, groups and their order, traits, and when a cell applies."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mtlbench.errors import ConfigError
from mtlbench.methods.registry import ARCHITECTURES, PAPER_WEIGHTINGS, WEIGHTINGS, not_applicable
from mtlbench.registry import Registry, check_options, options_table


@dataclass(frozen=True)
class _Opts:
    rate: float = 0.5
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    tol: float | None = None


def test_options_table_reads_defaults_and_choices():
    defaults, choices = options_table(_Opts)
    assert defaults == {"rate": 0.5, "mode": "a", "sizes": [1, 2], "tol": None}
    assert choices == {"mode": ("a", "b")}


def test_registered_options_are_checked_by_type_and_choice():
    reg: Registry = Registry("thing")
    reg.add("X", object(), options=_Opts, library="here", gradients=True)
    e = reg.entry("x")
    assert e.options is _Opts and e.library == "here" and e.trait("gradients") is True
    assert check_options(e, {"rate": 1, "mode": "b", "tol": 1e-3}, "w.X") == {"rate": 1, "mode": "b", "tol": 1e-3}
    with pytest.raises(ConfigError, match=r"w\.X\.mode must be one of 'a', 'b', got 'c'"):
        check_options(e, {"mode": "c"}, "w.X")
    with pytest.raises(ConfigError, match=r"unknown option 'speed'"):
        check_options(e, {"speed": 1}, "w.X")
    with pytest.raises(ValueError, match="not both"):
        reg.add("Y", object(), options=_Opts, defaults={"rate": 1.0})
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("x", object())


def test_groups_come_first_in_their_order_then_registration_order():
    reg: Registry = Registry("thing", groups={"core": ("B", "A")})
    for name in ("Z", "A", "B", "C"):
        reg.add(name, object())
    assert reg.names() == ["B", "A", "Z", "C"] and reg.names("core") == ["B", "A"]
    with pytest.raises(ConfigError, match="unknown thing group 'nope'"):
        reg.names("nope")


def test_every_method_has_typed_options_a_library_and_its_traits():
    for reg in (ARCHITECTURES, WEIGHTINGS):
        for e in reg:
            assert e.options is not None, f"{e.name} has no options dataclass"
            assert options_table(e.options)[0] == e.defaults
            assert e.library, f"{e.name} does not say who implements it"
    for e in WEIGHTINGS:
        assert isinstance(e.trait("gradients"), bool), f"{e.name} does not say whether it needs task gradients"
    loss_level = {e.name for e in WEIGHTINGS if not e.trait("gradients")}
    assert {"EW", "UW", "DWA", "GLS", "RLW"} <= loss_level
    assert not loss_level & {"PCGrad", "MGDA-l2", "CAGrad", "Nash-MTL", "GradDrop"}
    assert [e.name for e in WEIGHTINGS if e.trait("rep_grad")] == ["GradDrop"]
    assert WEIGHTINGS.names("paper") == list(PAPER_WEIGHTINGS)


def test_a_gradient_weighting_does_not_apply_without_shared_parameters():
    reg: Registry = Registry("architecture")
    reg.add("Independent", object(), shared=False)
    alone, hps = reg.entry("Independent"), ARCHITECTURES.entry("HPS")
    assert not_applicable(alone, WEIGHTINGS.entry("EW")) is None
    assert "shares no parameters" in not_applicable(alone, WEIGHTINGS.entry("PCGrad"))
    assert all(not_applicable(hps, w) is None for w in WEIGHTINGS)
