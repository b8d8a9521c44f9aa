"""A spec's [fastcar.protocol]: FastCAR's own training length. Its runs are the runs those settings make, the grid's
are untouched, and the findings say that FastCAR's figures are then not like for like with the cells'."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mtlbench.errors import ConfigError
from mtlbench.report.data import METRIC_SPECS
from mtlbench.report.findings import findings
from mtlbench.sweep.spec import parse_spec

GRID = {"architectures": ["HPS"], "weightings": ["EW"], "decoders": ["decoder1"], "seeds": [0, 1]}
PROTOCOL = {"epochs": 1, "max_steps_per_epoch": 6}


def test_fastcar_trains_for_its_own_length_and_the_grid_for_the_protocols():
    spec = parse_spec({"axes": GRID, "protocol": PROTOCOL,
                       "fastcar": {"protocol": {"epochs": 20, "max_steps_per_epoch": 15}}})
    fastcar = [c for c in spec.cells() if c.kind == "fastcar"]
    grid = [c for c in spec.cells() if c.kind == "mtl"]
    assert len(fastcar) == 2 and all((c.protocol.epochs, c.protocol.max_steps_per_epoch) == (20, 15) for c in fastcar)
    assert all(c.protocol == spec.protocol for c in grid)
    plain = parse_spec({"axes": GRID, "protocol": PROTOCOL}).cells()
    assert [c.run_id("x") for c in grid] == [c.run_id("x") for c in plain if c.kind == "mtl"]
    # the same settings given as the protocol make the same FastCAR runs: the id is what is computed
    direct = parse_spec({"axes": GRID, "protocol": {"epochs": 20, "max_steps_per_epoch": 15}}).cells()
    assert {c.run_id("x") for c in fastcar} == {c.run_id("x") for c in direct if c.kind == "fastcar"}


@pytest.mark.parametrize("fastcar,extra,match", [
    ({"protocol": {"lr": 3e-4}}, {}, r"unknown key fastcar.protocol.lr; allowed: epochs, max_steps_per_epoch"),
    ({"protocol": {"epochs": 0}}, {}, r"fastcar.protocol: protocol.epochs must be a positive integer"),
    ({"protocol": 20}, {}, "fastcar.protocol must be a table"),
    ({"enabled": False, "protocol": {"epochs": 20}}, {}, "fastcar.protocol: FastCAR is not enabled"),
    ({"protocol": {"epochs": 20}}, {"ablation": {"protocol": {"epochs": [2]}}},
     "ablation.protocol.epochs: FastCAR sets epochs itself"),
])
def test_errors_name_the_key(fastcar, extra, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec({"axes": GRID, "protocol": PROTOCOL, "fastcar": fastcar, **extra})


def _run(kind: str, seed: int, epochs: int, cap: int | None, acc: float, mape: float) -> dict:
    cfg = {"protocol": {"epochs": epochs, "max_steps_per_epoch": cap}}
    row = {"run_id": f"{kind}-{seed}-{epochs}", "kind": kind, "status": "ok", "seed": seed, "epochs": epochs,
           "config_json": json.dumps(cfg), "best_accuracy": acc, "best_mape": mape, "best_mse": mape * 1000.0,
           "total_s": 60.0 * epochs, "message": None, "target_scaling": None, "architecture": None,
           "weighting": None, "decoder": None}
    if kind == "mtl":
        row.update(architecture="HPS", weighting="EW", decoder="decoder1", target_scaling="none")
    return row


def _budget_lines(runs: list[dict]) -> list[str]:
    lines = findings(pd.DataFrame(runs), [METRIC_SPECS[m] for m in ("accuracy", "mape")])
    return [x for x in lines if x.startswith("Training length")]


def test_the_findings_say_when_fastcar_trained_longer_than_the_grid():
    grid = [_run("mtl", s, 1, 6, 50.0 + s, 90.0) for s in (0, 1)]
    longer = _budget_lines(grid + [_run("fastcar", s, 20, 15, 80.0, 10.0) for s in (0, 1)])
    assert longer == ["Training length: FastCAR trained 20 epochs of at most 15 steps, the MTL cells 1 epoch of at "
                      "most 6 steps (e.g. a spec's [fastcar.protocol]), so FastCAR's figures below, its run time "
                      "included, are not like for like with the cells'."]
    assert _budget_lines(grid + [_run("fastcar", s, 1, 6, 80.0, 10.0) for s in (0, 1)]) == []
    # the same lengths in another order are the same; an older record without a protocol still reads
    mixed = [_run("mtl", 0, 2, None, 50.0, 90.0), _run("mtl", 1, 1, 1, 50.0, 90.0)]
    assert _budget_lines(mixed + [_run("fastcar", 0, 1, 1, 80.0, 10.0), _run("fastcar", 1, 2, None, 80.0, 10.0)]) == []
    odd = [{**r, "config_json": '{"protocol": null}'} for r in mixed]
    assert _budget_lines(odd + [_run("fastcar", 0, 20, 15, 80.0, 10.0)]) == [
        "Training length: FastCAR trained 20 epochs of at most 15 steps, the MTL cells 1 epoch / 2 epochs (e.g. a "
        "spec's [fastcar.protocol]), so FastCAR's figures below, its run time included, are not like for like with "
        "the cells'."]


def test_a_protocol_factor_keeps_fastcars_own_length():
    spec = parse_spec({"axes": GRID, "protocol": PROTOCOL, "fastcar": {"protocol": {"epochs": 20}},
                       "ablation": {"protocol": {"lr": [3e-4]}}})
    lr = [c for c in spec.cells() if c.kind == "fastcar" and c.setting == "protocol.lr=0.0003"]
    assert len(lr) == 2 and all(c.protocol.epochs == 20 and c.protocol.lr == 3e-4 for c in lr)
