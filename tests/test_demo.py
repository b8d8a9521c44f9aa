"""The demo (`make run`) shows real differences: a reduced demo - a few of its cells, the same data and protocol -
reaches the thresholds the demo promises, and its findings say where FastCAR trained longer."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from mtlbench.data.baselines import reference_scores
from mtlbench.data.sources import resolve_dataset
from mtlbench.report.data import METRIC_SPECS
from mtlbench.report.findings import findings
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec

# Two architectures that learn within the demo's 5 steps, one that does not (LTB), each with a cheap weighting
# and one that needs task gradients: the reduced grid spans what the full one shows.
ARCHITECTURES = ("HPS", "MTAN", "Cross_stitch", "LTB")
WEIGHTINGS = ("EW", "GLS")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, cache_dir) -> pd.DataFrame:
    spec = load_spec("demo")
    reduced = replace(spec, architectures=ARCHITECTURES, weightings=WEIGHTINGS, decoders=("decoder1",))
    out = tmp_path_factory.mktemp("demo") / "results"
    outcome = run_sweep(reduced, out, cache_dir=str(cache_dir))
    assert outcome.all_ok, outcome.counts()
    return pd.read_parquet(out / "runs.parquet")


def test_the_demo_spec_is_all_204_cells_and_fastcar():
    spec = load_spec("demo")
    cells = spec.cells()
    assert sum(c.kind == "mtl" for c in cells) == 204 and sum(c.kind == "fastcar" for c in cells) == 1


def test_the_best_cells_are_far_above_chance_and_the_cells_spread(demo):
    acc = demo.loc[demo.kind == "mtl", "best_accuracy"]
    assert len(acc) == len(ARCHITECTURES) * len(WEIGHTINGS)
    assert acc.max() >= 80.0, acc.tolist()                    # chance: 16.67 %
    assert acc.max() - acc.min() >= 10.0, acc.tolist()


def test_fastcars_mape_is_well_below_a_mean_predictors(demo, cache_dir):
    mean_predictor = reference_scores(resolve_dataset("default", cache_dir=cache_dir)).mean_predictor_mape
    fastcar = demo.loc[demo.kind == "fastcar", "best_mape"]
    assert len(fastcar) == 1 and fastcar.iloc[0] <= 0.5 * mean_predictor, (fastcar.iloc[0], mean_predictor)


def test_the_findings_say_fastcar_trained_longer(demo):
    lines = findings(demo, [METRIC_SPECS[m] for m in ("accuracy", "mape")])
    budget = [x for x in lines if x.startswith("Training length")]
    p = load_spec("demo").protocol
    assert budget and (f"FastCAR trained 20 epochs of at most 30 steps, the MTL cells {p.epochs} epoch"
                       f"{'s' if p.epochs != 1 else ''} of at most {p.max_steps_per_epoch} steps") in budget[0]
