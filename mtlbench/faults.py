"""Fault injection for the crash-safety suite: named points in the code act as ``MTLBENCH_FAULT`` says.

``MTLBENCH_FAULT="<point>[:<key>=<value>]...:<action>"``, e.g. ``epoch_end:epoch=2:kill`` or
``train_step:cell=HPS+DWA/decoder1:epoch=2:nan``. Several faults are separated by ``;``. A fault fires when the
point's name matches and every ``key=value`` equals the point's context (compared as text).

Points: ``cell_start`` (cell), ``train_step`` (cell, epoch, step), ``epoch_end`` (cell, epoch; after the epoch's
checkpoint), ``checkpoint_write`` (cell, epoch; the temporary file is written, not yet renamed), ``consolidate``
(table; after that table is replaced).

Actions: ``kill`` (SIGKILL this process), ``kill_once=<marker file>`` (kill unless the marker exists; creates it),
``nan`` (the caller makes the step's loss NaN), ``oom`` (raise an out-of-memory error), ``raise`` (a RuntimeError),
``sleep=<seconds>``. With ``MTLBENCH_FAULT_LOG=<file>`` every firing appends one line there.

Unset (always, outside tests) the points cost one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "MTLBENCH_FAULT"
LOG_ENV = "MTLBENCH_FAULT_LOG"


class InjectedFault(RuntimeError):
    """Raised by the ``raise`` action."""


def _fires(spec: str, point: str, context: dict[str, object]) -> str | None:
    parts = spec.strip().split(":")
    if len(parts) < 2 or parts[0] != point:
        return None
    for cond in parts[1:-1]:
        key, _, value = cond.partition("=")
        if str(context.get(key)) != value:
            return None
    return parts[-1]


def hit(point: str, **context: object) -> str | None:
    """Act on a matching fault; returns the action name for actions the caller performs (``nan``), else None."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    for spec in raw.split(";"):
        action = _fires(spec, point, context)
        if action is None:
            continue
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} {point} {context} {action}\n")
        name, _, arg = action.partition("=")
        if name == "kill_once":
            marker = Path(arg)
            if marker.exists():
                continue
            marker.write_text(str(os.getpid()))
            name = "kill"
        if name == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)  # never reached: SIGKILL cannot be caught
        elif name == "sleep":
            time.sleep(float(arg))
        elif name == "oom":
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (simulated by {ENV})")
        elif name == "raise":
            raise InjectedFault(f"fault injected at {point} {context}")
        elif name == "nan":
            return "nan"
        else:
            raise ValueError(f"{ENV}: unknown action {action!r}")
    return None
