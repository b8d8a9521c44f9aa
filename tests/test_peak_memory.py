"""Per-run peak memory: on a CPU, each run's own figure (sampled heap in use, or resident memory without glibc, above
its start), not the worker process's lifetime peak; the method is recorded; results folders written before the
method column still read."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtlbench.config import TrainingProtocol, RunConfig
from mtlbench.data import DeviceData, read_published
from mtlbench.heap import keep_freed_blocks
from mtlbench.memory import (CPU_HEAP_SAMPLED, CPU_RSS_SAMPLED, PeakMemory, anon_resident_bytes,
                             freeze_long_lived, heap_in_use_bytes)
from mtlbench.records.schema import RUNS
from mtlbench.records.store import ResultsStore
from mtlbench.runs import run_cell

needs_proc = pytest.mark.skipif(anon_resident_bytes() is None, reason="no /proc/self/statm (not Linux)")
CPU = torch.device("cpu")
SAMPLED = CPU_HEAP_SAMPLED if heap_in_use_bytes() is not None else CPU_RSS_SAMPLED


@needs_proc
def test_peak_is_measured_from_the_start_of_each_run():
    big = PeakMemory(CPU)
    x = torch.ones(64 * 2**20 // 4)   # 64 MiB, written so its pages are resident
    peak_big, method = big.stop()
    del x
    small = PeakMemory(CPU)
    y = torch.ones(2**20 // 4)        # 1 MiB
    peak_small, _ = small.stop()
    del y
    assert method == SAMPLED
    assert 60 < peak_big < 200 and peak_small < 20, (peak_big, peak_small)


@needs_proc
def test_small_cell_after_large_cell_records_the_smaller_peak(tiny_data, tmp_path):
    """The sweep's one-cell function, twice in one process: decoder2 (two heads of ~24 M parameters) first, then
    decoder1. With the process's lifetime peak both rows would show the first cell's figure."""
    table = read_published(tiny_data)
    data = DeviceData.from_table(table, 32, CPU, cache_dir=tmp_path)
    protocol = TrainingProtocol(epochs=1, batch_size=8, img_size=32, max_steps_per_epoch=1, latency_repeats=1,
                        checkpoint_every=0, device="cpu")
    rows = {}
    for decoder in ("decoder2", "decoder1"):
        cfg = RunConfig(kind="mtl", architecture="HPS", weighting="EW", decoder=decoder, protocol=protocol)
        result = run_cell(cfg, table, data)
        assert result.status == "ok", result.message
        rows[decoder] = result.row
    large, small = rows["decoder2"], rows["decoder1"]
    assert large["peak_mem_method"] == small["peak_mem_method"] == SAMPLED
    # decoder2's parameters, gradients and Adam moments alone are ~750 MiB more than decoder1's
    assert 0 < small["peak_mem_mb"] < large["peak_mem_mb"] - 300, (small["peak_mem_mb"], large["peak_mem_mb"])


@pytest.mark.skipif(heap_in_use_bytes() is None, reason="no glibc mallinfo2")
def test_heap_sampling_counts_blocks_in_use_not_blocks_kept():
    """Freed blocks glibc keeps for reuse (the heap is no longer trimmed between runs) are not counted: a run that
    reuses them still shows its own allocation, and one that allocates nothing shows nothing."""
    keep_freed_blocks()                # as every mtlbench process does
    reuse = PeakMemory(CPU)
    y = torch.ones(64 * 2**20 // 4)
    peak_reuse, method = reuse.stop()
    del y
    idle = PeakMemory(CPU)
    peak_idle, _ = idle.stop()
    assert method == CPU_HEAP_SAMPLED
    assert 60 < peak_reuse < 100 and peak_idle < 4, (peak_reuse, peak_idle)


@pytest.mark.skipif(heap_in_use_bytes() is None, reason="no glibc mallinfo2")
def test_freed_blocks_are_kept_for_reuse():
    """keep_freed_blocks: a freed 64 MiB tensor stays with glibc, ready for the next run's allocation. Measured in a
    fresh process: in this one, a whole suite's history (other threads' arenas freeing and shrinking their heaps)
    moves glibc's free-byte count at any moment."""
    import subprocess
    import sys

    probe = ("import torch\n"
             "from mtlbench.heap import keep_freed_blocks, kept_free_bytes\n"
             "keep_freed_blocks()\n"
             "x = torch.ones(64 * 2**20 // 4)\n"
             "kept = kept_free_bytes()\n"
             "del x\n"
             "print(kept_free_bytes() - kept)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}   # mallopt alone must do it
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 60 * 2**20   # the 64 MiB block is kept, not handed back


def test_frozen_objects_leave_each_runs_collection_cheap():
    import gc
    freeze_long_lived()
    try:
        assert gc.get_freeze_count() > 10_000      # the modules and everything loaded so far
        cycle: list = []
        cycle.append(cycle)             # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_rows_written_before_the_method_column_read_it_as_null(tmp_path):
    store = ResultsStore(tmp_path / "r")
    old = pa.schema([f for f in RUNS if f.name != "peak_mem_method"])
    (store.cells_dir / "old").mkdir()
    pq.write_table(pa.Table.from_pylist([{"run_id": "old", "kind": "mtl", "status": "ok", "peak_mem_mb": 900.0}],
                                        schema=old), store.cells_dir / "old" / "runs.parquet")
    store.write_cell("new", {"runs": [{"run_id": "new", "kind": "mtl", "status": "ok", "peak_mem_mb": 90.0,
                                       "peak_mem_method": CPU_RSS_SAMPLED}]})
    store.consolidate()
    runs = store.read("runs").set_index("run_id")
    assert runs.loc["new", "peak_mem_method"] == CPU_RSS_SAMPLED and pd.isna(runs.loc["old", "peak_mem_method"])
    assert pq.read_table(tmp_path / "r" / "runs.parquet").num_rows == 2
