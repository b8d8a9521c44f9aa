"""Reference scores: hand-computed on a tiny table, and the default set's figures that synth.py documents."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mtlbench.data.baselines import reference_scores
from mtlbench.data.sources import resolve_dataset
from mtlbench.data.table import ImageTable


def test_hand_computed_reference_scores():
    rows = [("train", 0, 100.0), ("train", 0, 300.0), ("train", 1, 1000.0),        # means: 0 -> 200, 1 -> 1000
            ("test", 0, 250.0), ("test", 1, 800.0)]                                # training mean: 466.67
    frame = pd.DataFrame([{"path": f"/x/{i}.png", "relpath": f"{i}.png", "split": s, "label": c, "target": t}
                          for i, (s, c, t) in enumerate(rows)])
    scores = reference_scores(ImageTable("tiny", Path("/x"), frame, ("a", "b")))
    mean = 1400.0 / 3.0
    assert scores.chance_accuracy == pytest.approx(50.0)
    assert scores.majority_accuracy == pytest.approx(50.0)              # class 0 is the training majority
    assert scores.mean_predictor_mape == pytest.approx(100 * (abs(mean - 250) / 250 + abs(mean - 800) / 800) / 2)
    assert scores.class_mean_oracle_mape == pytest.approx(100 * (50 / 250 + 200 / 800) / 2)


def test_the_default_sets_reference_scores_are_the_documented_ones(tmp_path):
    """mtlbench/data/synth.py's ground truth: chance 16.67 %, mean predictor 58.7 %, class-mean oracle 3.2 %."""
    scores = reference_scores(resolve_dataset("default", cache_dir=tmp_path))
    assert round(scores.chance_accuracy, 2) == 16.67
    assert round(scores.mean_predictor_mape, 1) == 58.7
    assert round(scores.class_mean_oracle_mape, 1) == 3.2
