"""What a cell costs all-in, against the training steps it exists for: a slice of the smoke sweep (2 steps a cell,
32 px, batch 8) run sequentially in this process through the sweep driver, as ``mtlbench sweep`` runs it.

Per cell it prints the wall time all-in (build, train, evaluate, predictions, latency, write), the time inside the
training steps (``runs.train_s``, the floor a cell cannot go under) and their ratio; by architecture and decoder, where
the rest went as the runs table records it: ``setup_s`` (model and optimiser), ``eval_s`` (validation and test
predictions), ``latency_s`` (the latency timing) and what is left (metrics, records, memory sampling).
Examples::

    python benchmarks/cells.py                                    # every architecture x EW, PCGrad, DWA x 2 decoders
    python benchmarks/cells.py --weightings all --decoders decoder1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from mtlbench.heap import keep_freed_blocks
from mtlbench.records.store import ResultsStore
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec, parse_filters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smoke", help="a shipped spec name or a TOML path (default: smoke)")
    ap.add_argument("--weightings", default="EW|PCGrad|DWA", help="'|'-joined, or 'all'")
    ap.add_argument("--architectures", default="all", help="'|'-joined, or 'all'")
    ap.add_argument("--decoders", default="all", help="'|'-joined, or 'all'")
    ap.add_argument("--fastcar", action="store_true", help="include FastCAR")
    ap.add_argument("--out", type=Path, help="keep the sweep's results folder here (default: a temporary one)")
    args = ap.parse_args()
    only = [f"{key}={value}" for key, value in (("weighting", args.weightings), ("arch", args.architectures),
                                                ("decoder", args.decoders)) if value != "all"]
    filters = parse_filters(only)
    if not args.fastcar:
        filters["kind"] = {"mtl"}
    spec = load_spec(args.spec)
    keep_freed_blocks()   # as the CLI does
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "results"
        t0 = time.perf_counter()
        outcome = run_sweep(spec, out, filters=filters)
        wall = time.perf_counter() - t0
        runs = ResultsStore(out, create=False).read("runs")
    n = len(outcome.results)
    trained = runs[runs["status"] == "ok"]
    steps = float(trained["train_s"].sum())
    print(f"{n} cells ({len(trained)} trained, {n - len(trained)} not) in {wall:.1f} s: "
          f"{wall / max(n, 1):.2f} s a cell all-in; training steps {steps / max(len(trained), 1):.2f} s a cell; "
          f"all-in / steps = {wall / max(steps, 1e-9):.2f}")
    print(f"inside run_cell (runs.total_s): {runs['total_s'].sum() / max(n, 1):.2f} s a cell; the rest "
          f"(plan, write, console) {(wall - runs['total_s'].sum()) / max(n, 1):.2f} s a cell")
    parts = ["setup_s", "train_s", "eval_s", "latency_s"]
    print("by phase, s a trained cell: " + ", ".join(f"{c} {trained[c].mean():.3f}" for c in parts)
          + f", rest {(trained.total_s - trained[parts].sum(axis=1)).mean():.3f}")
    by = (trained.groupby(["architecture", "decoder"])[["total_s", *parts]].mean()
          .assign(rest_s=lambda d: d.total_s - d[parts].sum(axis=1)).round(3))
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(by.to_string())


if __name__ == "__main__":
    main()
