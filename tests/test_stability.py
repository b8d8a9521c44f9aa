"""The stability measure: the spread of validation scores over a run's last epochs, the "unstable" flag at its
threshold, and the report's note and per-cell count."""

from __future__ import annotations

import pandas as pd
import pytest

from mtlbench.records.store import ResultsStore
from mtlbench.report.render import render_report
from mtlbench.stability import UNSTABLE_ACCURACY_POINTS, UNSTABLE_MAPE_POINTS, stability, window
from test_report import _epochs, _row


def _history(acc: list[float], mape: list[float]) -> list[dict]:
    return [{"epoch": e, "val_accuracy": a, "val_mape": m} for e, (a, m) in enumerate(zip(acc, mape), 1)]


@pytest.mark.parametrize("epochs,k", [(0, 0), (1, 0), (2, 2), (3, 2), (6, 2), (7, 3), (10, 4), (15, 5), (100, 5)])
def test_window_is_a_third_of_the_run_between_2_and_5(epochs, k):
    assert window(epochs) == k


def test_spread_over_the_last_epochs_of_a_hand_built_history():
    # the README's FastCAR run on the steel data, 10 epochs: the window is the last 4
    acc = [31.9, 49.5, 56.8, 52.3, 55.1, 83.5, 72.1, 64.2, 75.5, 54.9]
    mape = [44.6, 44.7, 17.9, 62.6, 67.6, 12.1, 55.0, 14.8, 14.8, 66.2]
    got = stability(reversed(_history(acc, mape)))   # order of the records does not matter
    assert got["stability_epochs"] == 4
    assert got["val_accuracy_spread"] == pytest.approx(75.5 - 54.9)
    assert got["val_mape_spread"] == pytest.approx(66.2 - 14.8)
    assert got["unstable"] is True


def test_unstable_flag_at_the_threshold():
    base = 70.0
    steady = stability(_history([base, base + UNSTABLE_ACCURACY_POINTS], [20.0, 20.0 + UNSTABLE_MAPE_POINTS]))
    assert steady["unstable"] is False   # exactly at the threshold: not flagged
    swinging = stability(_history([base, base + UNSTABLE_ACCURACY_POINTS + 0.01], [20.0, 20.0]))
    assert swinging["unstable"] is True
    mape_only = stability(_history([base, base], [20.0, 20.0 + UNSTABLE_MAPE_POINTS + 0.01]))
    assert mape_only["unstable"] is True


def test_too_short_or_unmeasured_runs_are_not_judged():
    assert stability(_history([50.0], [10.0]))["unstable"] is None
    nan = float("nan")
    assert stability(_history([nan, nan], [nan, nan]))["unstable"] is None


def test_report_notes_unstable_runs_and_counts_them_per_cell(tmp_path):
    store = ResultsStore(tmp_path / "res")
    for rid, arch, flag in (("a", "HPS", True), ("b", "MTAN", False)):
        row = _row(rid, arch=arch, weighting="EW", decoder="decoder1", acc=80.0, mse=1e4, mape=10.0, total_s=60.0)
        row.update(unstable=flag, stability_epochs=2, val_accuracy_spread=25.0 if flag else 1.0, val_mape_spread=1.0)
        store.write_cell(rid, {"runs": [row], "epochs": _epochs(rid)})
    store.consolidate()
    result = render_report(tmp_path / "res", tmp_path / "report", formats=("md", "csv"))
    notes = [line for line in result.missing if line.startswith("unstable:")]
    assert len(notes) == 1 and "1 of 2 runs" in notes[0] and "HPS+EW/decoder1 seed 0" in notes[0]
    cells = pd.read_csv(tmp_path / "report" / "cells.csv").set_index("architecture")
    assert cells.loc["HPS", "n_unstable"] == 1 and cells.loc["MTAN", "n_unstable"] == 0
    assert "unstable:" in (tmp_path / "report" / "summary.md").read_text()
