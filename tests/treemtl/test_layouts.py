"""TreeMTL layout enumeration (paper Sec. 3.2): counts, validity, uniqueness, agreement with brute force."""

from __future__ import annotations

import time
from itertools import product

import pytest

from mtlbench.treemtl.layouts import branch_block, enumerate_layouts, is_valid, layout_key, parse_key


@pytest.mark.parametrize("t,b,n", [(2, 5, 6), (2, 9, 10), (3, 5, 51), (3, 9, 145), (4, 5, 561), (5, 5, 7556)])
def test_counts_valid_unique(t, b, n):
    lays = enumerate_layouts(t, b)
    assert len(lays) == n
    assert all(is_valid(lay, t) and len(lay) == b for lay in lays)
    keys = {layout_key(lay) for lay in lays}
    assert len(keys) == n
    assert all(parse_key(layout_key(lay)) == lay for lay in lays)
    assert lays[0] == ((tuple(range(t)),),) * b  # the all-shared layout L0 comes first


def test_count_t6_b4_fast():
    start = time.perf_counter()
    assert len(enumerate_layouts(6, 4)) == 44590
    assert time.perf_counter() - start < 10


def _brute_partitions(n):
    """Every set partition of range(n) from all label assignments (independent of the package's recursion)."""
    seen = set()
    for labels in product(range(n), repeat=n):
        groups = {}
        for task, lab in enumerate(labels):
            groups.setdefault(lab, []).append(task)
        seen.add(frozenset(frozenset(g) for g in groups.values()))
    return seen


@pytest.mark.parametrize("t", [1, 2, 3, 4])
@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_matches_brute_force(t, b):
    parts = list(_brute_partitions(t))
    brute = set()
    for seq in product(parts, repeat=b):
        if all(all(any(g <= c for c in seq[k - 1]) for g in seq[k]) for k in range(1, b)):
            brute.add(tuple(seq))
    got = {tuple(frozenset(frozenset(g) for g in part) for part in lay) for lay in enumerate_layouts(t, b)}
    assert got == brute


def test_invalid_layouts_rejected():
    assert not is_valid((((0,), (1,)), ((0, 1),)), 2)  # merging after a split
    assert not is_valid((((0,),),), 2)  # task 1 missing
    assert not is_valid((((0, 1), (1,)),), 2)  # overlap


def test_key_and_branch_block():
    lay = parse_key("0,1,2|0,1,2|0,1,2|0,1/2|0,1/2")
    assert layout_key(lay) == "0,1,2|0,1,2|0,1,2|0,1/2|0,1/2"
    assert branch_block(lay, 0, 1) == 5 and branch_block(lay, 1, 0) == 5
    assert branch_block(lay, 0, 2) == 3 and branch_block(lay, 2, 1) == 3
    assert branch_block(parse_key("0/1|0/1"), 0, 1) == 0
