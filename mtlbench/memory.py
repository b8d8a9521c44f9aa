"""Peak memory of one run, measured for that run alone.

On CUDA: the allocator's peak, reset when the run starts. On a CPU a background thread samples every 10 ms and the
figure is the peak above the value at the run's start, of
- with glibc: the bytes the C heap has handed out and not taken back (``mallinfo2``: in-use chunks of every arena
  plus mmapped blocks), where torch's CPU tensors live. Freed blocks glibc keeps for reuse do not count, so the
  heap is never trimmed between runs and a run does not pay for faulting fresh pages in again (about a third of a
  few-step cell's time when every run trimmed);
- elsewhere on Linux: the process's anonymous resident memory (``/proc/self/statm``: resident less file-backed and
  shared pages, so the memory-mapped image cache does not count), after trimming the heap at the run's start.
Without either, the process's lifetime peak RSS is all there is, and the method says so.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import threading

import torch

from mtlbench import heap
from mtlbench.heap import heap_in_use_bytes

CUDA_MAX_ALLOCATED = "cuda_max_allocated"
CPU_HEAP_SAMPLED = "cpu_heap_sampled"
CPU_RSS_SAMPLED = "cpu_rss_sampled"
CPU_MAXRSS_PROCESS = "cpu_maxrss_process"
METHODS = (CUDA_MAX_ALLOCATED, CPU_HEAP_SAMPLED, CPU_RSS_SAMPLED, CPU_MAXRSS_PROCESS)

INTERVAL_S = 0.01   # a spike shorter than this can be missed; a step of a cell lasts far longer
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def anon_resident_bytes() -> int | None:
    """Resident memory not backed by a file, in bytes; None where ``/proc/self/statm`` does not exist."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * _PAGE


def freeze_long_lived() -> None:
    """Move every object alive now (modules, the loaded data set, the executor) out of the cyclic collector's
    reach: each run's collection then scans only what was made since, about 1 ms instead of 0.3-1 s. Executors
    call it once per process, before the first run."""
    gc.collect()
    gc.freeze()


def _release_free_heap(trim: bool) -> None:
    """Free an earlier run's leftovers before the baseline is taken: its model may sit in reference cycles until
    the collector runs (and would then be freed during this run). With ``trim`` (resident-memory sampling), also
    hand the blocks glibc keeps (the CLI asks it to, for speed within a run) back to the OS."""
    gc.collect()
    if trim:
        heap.trim()


class PeakMemory:
    """Construct when a run starts; :meth:`stop` when it ends returns ``(peak MiB, method)``."""

    def __init__(self, device: torch.device, interval_s: float = INTERVAL_S) -> None:
        self.device = device
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.method = CUDA_MAX_ALLOCATED
            return
        self._read = heap_in_use_bytes if heap_in_use_bytes() is not None else anon_resident_bytes
        _release_free_heap(trim=self._read is anon_resident_bytes)
        base = self._read()
        if base is None:
            self.method = CPU_MAXRSS_PROCESS
            return
        self.method = CPU_HEAP_SAMPLED if self._read is heap_in_use_bytes else CPU_RSS_SAMPLED
        self.base = self.peak = base
        self._interval = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="mtlbench-peak-memory", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self._interval):
            self._update()

    def _update(self) -> None:
        now = self._read()
        if now is not None and now > self.peak:
            self.peak = now

    def stop(self) -> tuple[float, str]:
        if self.method == CUDA_MAX_ALLOCATED:
            return torch.cuda.max_memory_allocated(self.device) / 2**20, self.method
        if self.method == CPU_MAXRSS_PROCESS:
            unit = 1 if sys.platform == "darwin" else 2**10   # ru_maxrss: bytes on macOS, KiB elsewhere
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20, self.method
        if self._thread is not None:
            self._done.set()
            self._thread.join()
            self._thread = None
            self._update()
        return max(self.peak - self.base, 0) / 2**20, self.method
