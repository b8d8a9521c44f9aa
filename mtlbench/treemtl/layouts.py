"""Layouts (TreeMTL paper, Def. 3.1): for T tasks and B blocks, one partition of the tasks per block, each block's
partition refining the previous one. Block 0 may already be split, so b = 0 (independent models) is in the space.

Canonical form: a tuple of B partitions; a partition is a tuple of groups sorted by their smallest task, a group a
sorted tuple of task ids. Canonical string (``layout_key``): groups joined by "/", tasks by ",", blocks by "|",
e.g. "0,1,2|0,1,2|0,1,2|0,1/2|0,1/2" (3 tasks share blocks 0-2, then {0,1} and {2} branch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import product

Group = tuple[int, ...]
Partition = tuple[Group, ...]
Layout = tuple[Partition, ...]


def _canon(groups) -> Partition:
    return tuple(sorted((tuple(sorted(g)) for g in groups), key=lambda g: g[0]))


def set_partitions(items: Sequence[int]) -> Iterator[Partition]:
    """Every partition of ``items`` once, canonicalised; the single group comes first, all singletons last."""
    items = list(items)
    if not items:
        yield ()
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        for k in range(len(part)):
            yield _canon(part[:k] + ((first,) + part[k],) + part[k + 1:])
        yield _canon(((first,),) + part)


def refinements(partition: Partition) -> Iterator[Partition]:
    """Every partition that refines ``partition`` (each group split independently)."""
    for choice in product(*(list(set_partitions(g)) for g in partition)):
        yield _canon(g for part in choice for g in part)


def enumerate_layouts(n_tasks: int, n_blocks: int) -> list[Layout]:
    """All valid nested layouts, each once, in a deterministic order (the all-shared layout first)."""
    out: list[Layout] = []

    def grow(prefix: list[Partition]) -> None:
        if len(prefix) == n_blocks:
            out.append(tuple(prefix))
            return
        for nxt in refinements(prefix[-1]):
            grow(prefix + [nxt])

    top = ((tuple(range(n_tasks)),),)
    for first in refinements(top[0]):
        grow([first])
    return out


def refines(fine: Partition, coarse: Partition) -> bool:
    """True when every group of ``fine`` lies inside one group of ``coarse``."""
    return all(any(set(g) <= set(c) for c in coarse) for g in fine)


def is_valid(layout: Layout, n_tasks: int) -> bool:
    """Def. 3.1: each block partitions all tasks (disjoint, covering) and refines the block before it."""
    for k, part in enumerate(layout):
        tasks = [t for g in part for t in g]
        if sorted(tasks) != list(range(n_tasks)) or any(not g for g in part):
            return False
        if k and not refines(part, layout[k - 1]):
            return False
    return True


def layout_key(layout: Layout) -> str:
    """Canonical structural string, e.g. "0,1,2|0,1/2" (see module docstring)."""
    return "|".join("/".join(",".join(map(str, g)) for g in _canon(part)) for part in layout)


def parse_key(key: str) -> Layout:
    """Inverse of :func:`layout_key`."""
    return tuple(_canon(tuple(int(t) for t in g.split(",")) for g in block.split("/")) for block in key.split("|"))


def branch_block(layout: Layout, i: int, j: int) -> int:
    """First block where tasks i and j are in different groups (= number of blocks they share); B if never."""
    for k, part in enumerate(layout):
        if not any(i in g and j in g for g in part):
            return k
    return len(layout)
