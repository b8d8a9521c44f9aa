"""What a cell costs all-in, against the training steps it exists for: a slice of the smoke sweep (2 steps a cell,
32 px, batch 8) run sequentially in this process through the sweep driver, as ``mtlbench sweep`` runs it.

Per cell it prints the wall time all-in (build, train, evaluate, predictions, latency, write), the time inside the
training steps (``runs.train_s``, the floor a cell cannot go under) and their ratio; by architecture and decoder, where
the rest went as the runs table records it: ``setup_s`` (model and optimiser), ``eval_s`` (validation and test
predictions), ``latency_s`` (the latency timing) and what is left (metrics, records, memory sampling, an
architecture's own epoch-end work such as MTAL's merges); and the same for the paper's 204-cell grid and each decoder,
with the share of cells at 1 s or less. ``--results DIR`` prints that part again from a kept results folder.
Examples::

    python benchmarks/cells.py                                    # every architecture x EW, PCGrad, DWA x 2 decoders
    python benchmarks/cells.py --weightings all --decoders decoder1
    python benchmarks/cells.py --weightings all --fastcar --out /tmp/grid && python benchmarks/cells.py --results /tmp/grid
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from mtlbench.heap import keep_freed_blocks
from mtlbench.methods.registry import PAPER_ARCHITECTURES, PAPER_WEIGHTINGS
from mtlbench.records.store import ResultsStore
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec, parse_filters


PARTS = ["setup_s", "train_s", "eval_s", "latency_s", "checkpoint_s"]   # disjoint parts of runs.total_s
REQUIRED = ["setup_s", "train_s", "eval_s"]   # what every cell must do: build, train, evaluate


def summarise(runs: pd.DataFrame) -> None:
    """Where the trained runs' time went, from the runs table: by phase, by subset, by architecture and decoder."""
    # a run missing a part (eval_s after an old checkpoint) has no rest or required time, rather than a wrong one
    trained = runs[runs["status"] == "ok"].assign(
        rest_s=lambda d: d.total_s - d[PARTS].sum(axis=1, min_count=len(PARTS)),
        required_s=lambda d: d[REQUIRED].sum(axis=1, min_count=len(REQUIRED)))
    cols = ["total_s", *PARTS[:-1], "rest_s", "required_s"]
    print("by phase, s a trained run: " + ", ".join(f"{c} {trained[c].mean():.3f}" for c in cols))
    grid = trained[trained.kind == "mtl"]
    subsets = {"every trained run": trained,
               "the paper grid": grid[grid.architecture.isin(PAPER_ARCHITECTURES)
                                      & grid.weighting.isin(PAPER_WEIGHTINGS)],
               **{name: grid[grid.decoder == name] for name in sorted(grid.decoder.unique())}}
    rows = {name: {"runs": len(d), **d[cols].mean().round(3).to_dict(),
                   "% <= 1 s": round(100 * (d.total_s <= 1).mean()),
                   "% required > 1 s": round(100 * (d.required_s > 1).mean())}
            for name, d in subsets.items() if len(d)}
    by = grid.groupby(["architecture", "decoder"])[cols].mean().round(3)
    with pd.option_context("display.width", 160, "display.max_rows", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).T.to_string())
        print(by.to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smoke", help="a shipped spec name or a TOML path (default: smoke)")
    ap.add_argument("--weightings", default="EW|PCGrad|DWA", help="'|'-joined, or 'all'")
    ap.add_argument("--architectures", default="all", help="'|'-joined, or 'all'")
    ap.add_argument("--decoders", default="all", help="'|'-joined, or 'all'")
    ap.add_argument("--fastcar", action="store_true", help="include FastCAR")
    ap.add_argument("--out", type=Path, help="keep the sweep's results folder here, new or empty (default: a "
                                             "temporary one)")
    ap.add_argument("--results", type=Path, help="run nothing: summarise the runs of this results folder")
    args = ap.parse_args()
    if args.results is not None:
        summarise(ResultsStore(args.results, create=False).read("runs"))
        return
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        ap.error(f"--out {args.out} is not empty: its finished cells would be skipped, not timed")
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
    runs = runs[runs.run_id.isin({r.run_id for r in outcome.results})]
    n = len(outcome.results)
    trained = runs[runs["status"] == "ok"]
    steps = float(trained["train_s"].sum())
    print(f"{n} cells ({len(trained)} trained, {n - len(trained)} not) in {wall:.1f} s: "
          f"{wall / max(n, 1):.2f} s a cell all-in; training steps {steps / max(len(trained), 1):.2f} s a cell; "
          f"all-in / steps = {wall / max(steps, 1e-9):.2f}")
    print(f"inside run_cell (runs.total_s): {runs['total_s'].sum() / max(n, 1):.2f} s a cell; the rest "
          f"(plan, write, console) {(wall - runs['total_s'].sum()) / max(n, 1):.2f} s a cell")
    summarise(runs)


if __name__ == "__main__":
    main()
