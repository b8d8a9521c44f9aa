"""FastCAR's label transformation: property tests of the round trip, disjoint ranges and gap assignment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtlbench.fastcar.transform import LabelTransform

targets_st = st.floats(min_value=50, max_value=2000, allow_nan=False, allow_infinity=False)


@st.composite
def labelled(draw):
    k = draw(st.integers(2, 7))
    n = draw(st.integers(k, 60))
    labels = np.array([i % k for i in range(n)])
    targets = np.array(draw(st.lists(targets_st, min_size=n, max_size=n)))
    gap = draw(st.floats(min_value=0.5, max_value=500))
    return labels, targets, k, gap


@pytest.mark.parametrize("label_scale", ["raw", "unit"])
@settings(max_examples=200, deadline=None)
@given(labelled())
def test_round_trip_every_class_and_target(label_scale, case):
    labels, targets, k, gap = case
    t = LabelTransform.fit(labels, targets, k, gap, label_scale)
    hybrid = t.forward(labels, targets)
    if label_scale == "unit":
        assert np.abs(hybrid).max() <= 1 + 1e-9 and t.scale == pytest.approx(t.span)
    cls, back = t.inverse(hybrid)
    np.testing.assert_array_equal(cls, labels)
    np.testing.assert_allclose(back, targets, rtol=0, atol=1e-7 * max(1.0, np.abs(targets).max()))


@settings(max_examples=200, deadline=None)
@given(labelled())
def test_shifted_ranges_are_disjoint_ordered_and_centred(case):
    labels, targets, k, gap = case
    r = LabelTransform.fit(labels, targets, k, gap).ranges()
    assert np.all(r[:, 0] <= r[:, 1])
    np.testing.assert_allclose(r[1:, 0] - r[:-1, 1], gap, rtol=1e-9, atol=1e-7)   # disjoint by exactly the gap
    assert abs(r[0, 0] + r[-1, 1]) < 1e-6 * max(1.0, np.abs(r).max())           # centred on global min/max


@settings(max_examples=200, deadline=None)
@given(labelled(), st.floats(0.0, 1.0))
def test_gap_values_go_to_the_nearer_range(case, where):
    labels, targets, k, gap = case
    t = LabelTransform.fit(labels, targets, k, gap)
    r = t.ranges()
    for j in range(k - 1):
        value = r[j, 1] + where * gap
        cls, _ = t.inverse(np.array([value]))
        d_low, d_high = value - r[j, 1], r[j + 1, 0] - value
        if not np.isclose(d_low, d_high):
            assert cls[0] == (j if d_low < d_high else j + 1)


def test_values_beyond_the_ends_go_to_the_end_classes():
    t = LabelTransform.fit(np.array([0, 1, 2]), np.array([100.0, 200.0, 300.0]), 3, 10.0)
    cls, _ = t.inverse(np.array([-1e6, 1e6]))
    assert list(cls) == [0, 2]


def test_real_data_statistics_example():
    """Overlapping class ranges (like the steel set's classes 4 and 5) become disjoint."""
    labels = np.array([0, 0, 1, 1])
    targets = np.array([800.0, 900.0, 850.0, 1100.0])
    t = LabelTransform.fit(labels, targets, 2, 20.0)
    assert t.constants == (0.0, 900.0 + 20.0 - 850.0)
    assert t.centre == pytest.approx((800.0 + 1100.0 + 70.0) / 2)


def test_gap_must_be_positive():
    with pytest.raises(ValueError):
        LabelTransform.fit(np.array([0]), np.array([1.0]), 1, 0.0)


@pytest.mark.parametrize("label_scale", ["raw", "unit"])
@settings(max_examples=100, deadline=None)
@given(labelled(), st.lists(st.floats(min_value=-1.0, max_value=1.0), min_size=1, max_size=40))
def test_the_learner_inverse_equals_the_transform_inverse(label_scale, case, fractions):
    """FastCAR's two inverses: the learner's on the device (float32) and the transform's (float64). The same class
    wherever the value is not within float32 rounding of a point equally far from two ranges, and the same target."""
    import torch

    from mtlbench.fastcar.learner import FastCARLearner

    labels, targets, k, gap = case
    t = LabelTransform.fit(labels, targets, k, gap, label_scale)
    r = t.ranges()
    span = float(r[:, 1].max() - r[:, 0].min()) + 2 * gap / t.scale
    values = np.asarray(fractions) * span
    learner = FastCARLearner(torch.nn.Linear(1, 1), t)
    cls_dev, target_dev = learner.inverse(torch.tensor(values, dtype=torch.float32))
    cls_ref, target_ref = t.inverse(values.astype(np.float32).astype(np.float64))
    # a value within float32 rounding of the midpoint of a gap may go either way
    dist = np.maximum(r[None, :, 0] - values[:, None], 0) + np.maximum(values[:, None] - r[None, :, 1], 0)
    ordered = np.sort(dist, axis=1)
    tol = 4 * np.finfo(np.float32).eps * (np.abs(values) + np.abs(r).max() + t.centre / t.scale)
    clear = (ordered[:, 1] - ordered[:, 0]) > tol if k > 1 else np.ones(len(values), bool)
    np.testing.assert_array_equal(cls_dev.numpy()[clear], cls_ref[clear])
    same = clear & (cls_dev.numpy() == cls_ref)
    scale = np.abs(values).max() * t.scale + abs(t.centre) + max(map(abs, t.constants))
    np.testing.assert_allclose(target_dev.numpy()[same], target_ref[same], rtol=0,
                               atol=float(4 * np.finfo(np.float32).eps * scale))
