"""glibc's C heap, where torch's CPU tensors live: how many bytes it has handed out, and asking it to keep freed
blocks for reuse. Without glibc every function here says so (None) or does nothing. Imports no torch, so the CLI
can call it before anything heavy."""

from __future__ import annotations

import ctypes
import os


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()
_MALLINFO2 = getattr(_LIBC, "mallinfo2", None)   # glibc >= 2.33
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
    _MALLINFO2.argtypes = []


def heap_in_use_bytes() -> int | None:
    """Bytes the C heap has allocated and not freed, over all arenas; None without glibc's ``mallinfo2``."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


def kept_free_bytes() -> int | None:
    """Bytes glibc holds freed for reuse (``mallinfo2().fordblks``); None without ``mallinfo2``."""
    return None if _MALLINFO2 is None else int(_MALLINFO2().fordblks)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt's parameter numbers (malloc.h)
KEEP = str(2**32)   # the value the Makefile and the CLI give MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_


def keep_freed_blocks() -> None:
    """Ask glibc to keep freed blocks of any size for reuse in this process, as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` do for a process started with them (the Makefile's and the CLI's workers'): a
    gradient weighting's per-task gradient vectors, a cell's parameters and Adam moments then reuse pages instead
    of faulting fresh ones (a 64 MiB zeroed tensor: 1.7 ms against 20 ms). Leaves alone a process whose user set
    either variable, and does nothing without glibc."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return
    if any(os.environ.get(v, KEEP) != KEEP for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return
    _LIBC.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(2**31 - 1))
    _LIBC.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))



def trim() -> None:
    """Hand the freed blocks glibc keeps back to the OS."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
