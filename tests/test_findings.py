"""The report's findings on hand-built results folders (real Parquet through ResultsStore): best cells, the tie
rule, FastCAR against the best cell, target scaling, the axes' leaders and the missing / failed counts."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from mtlbench.records.store import ResultsStore
from mtlbench.report.data import metric_specs
from mtlbench.report.findings import LEAD, ONE_SEED, ONE_SEED_TEXT, TIE, Stat, findings, verdict
from mtlbench.report.render import render_report

SPECS = metric_specs(["accuracy", "mse", "mape", "time"])
SEEDS = (0, 1, 2)
OFFSETS = (-1.0, 0.0, 1.0)     # sample std of (m - s, m, m + s) is exactly s

# (arch, weighting, decoder) -> (accuracy, spread, mape, spread)
CELLS = {
    ("HPS", "EW", "decoder1"): (80.0, 1.0, 10.0, 1.0),
    ("HPS", "UW", "decoder1"): (82.0, 1.0, 20.0, 1.0),
    ("MTAN", "EW", "decoder1"): (85.0, 1.0, 30.0, 1.0),   # runner-up, 5 points behind: outside 1 + 1
    ("MTAN", "UW", "decoder1"): (90.0, 1.0, 40.0, 1.0),   # best accuracy, decoder1
    ("HPS", "EW", "decoder2"): (70.0, 2.0, 30.0, 2.0),    # best accuracy, decoder2 ...
    ("HPS", "UW", "decoder2"): (60.0, 2.0, 25.0, 2.0),
    ("MTAN", "EW", "decoder2"): (69.0, 2.0, 26.0, 2.0),   # ... 1 point ahead of this one: within 2 + 2, a tie
    ("MTAN", "UW", "decoder2"): (50.0, 2.0, 12.0, 2.0),   # best MAPE, decoder2
}


def _row(run_id: str, *, kind: str = "mtl", arch=None, weighting=None, decoder=None, scaling="none", seed=0,
         status="ok", acc=None, mape=None, total_s=None) -> dict:
    row = {"run_id": run_id, "sweep": "test", "kind": kind, "status": status, "architecture": arch,
           "weighting": weighting, "decoder": decoder, "target_scaling": scaling if kind == "mtl" else None,
           "seed": seed, "epochs": 4, "dataset": "synth", "data_fingerprint": "abc", "num_classes": 3,
           "total_s": total_s, "schema_version": 2}
    if status == "ok":
        row.update(best_accuracy=acc, best_mape=mape, best_mse=1000.0 * mape, last_accuracy=acc - 1.0,
                   last_mape=mape + 1.0, last_mse=1000.0 * (mape + 1.0))
    else:
        row.update(message=f"{status} on purpose")
    return row


def _write(root: Path, *, cells=CELLS, seeds=SEEDS, scalings=("none",), fastcar=True, extra=()) -> Path:
    """A results folder: every cell x seed x scaling ("standard" lowers MAPE by 10), FastCAR and ``extra`` rows."""
    store = ResultsStore(root)
    for scaling in scalings:
        for (arch, w, dec), (acc, acc_sd, mape, mape_sd) in cells.items():
            for seed in seeds:
                o = OFFSETS[seed]
                rid = f"{arch}-{w}-{dec}-{scaling}-s{seed}".lower()
                store.write_cell(rid, {"runs": [_row(rid, arch=arch, weighting=w, decoder=dec, scaling=scaling,
                                                     seed=seed, acc=acc + o * acc_sd,
                                                     mape=mape + o * mape_sd - (10.0 if scaling == "standard" else 0),
                                                     total_s=600.0 + 60.0 * o)]})
    if fastcar:
        for seed in seeds:   # 95 ± 1 %, MAPE 3 ± 0.5 %, 5 ± 0.5 minutes
            o = OFFSETS[seed]
            rid = f"fastcar-s{seed}"
            store.write_cell(rid, {"runs": [_row(rid, kind="fastcar", seed=seed, acc=95.0 + o, mape=3.0 + 0.5 * o,
                                                 total_s=300.0 + 30.0 * o)]})
    for row in extra:
        store.write_cell(row["run_id"], {"runs": [row]})
    store.consolidate()
    return root


def _runs(root: Path):
    return ResultsStore(root, create=False).read("runs")


def _line(lines: list[str], start: str) -> str:
    hits = [x for x in lines if x.startswith(start)]
    assert len(hits) == 1, (start, lines)
    return hits[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> list[str]:
    return findings(_runs(_write(tmp_path_factory.mktemp("grid"))), SPECS)


def test_verdict_rule():
    assert verdict(Stat(10.0, 1.0, 3), Stat(7.9, 1.0, 3)) == LEAD
    assert verdict(Stat(10.0, 1.0, 3), Stat(8.0, 1.0, 3)) == TIE     # exactly at the spread: a tie
    assert verdict(Stat(10.0, float("nan"), 1), Stat(0.0, 1.0, 3)) == ONE_SEED


def test_best_cell_per_metric_and_decoder(grid):
    acc1 = _line(grid, "Accuracy (%), decoder1:")
    assert "best cell MTAN+UW 90.00 ± 1.00 [89.00-91.00] (3 seeds)" in acc1
    assert "runner-up MTAN+EW 85.00 ± 1.00 [84.00-86.00] (3 seeds)" in acc1
    mape1 = _line(grid, "MAPE (%), decoder1:")
    assert "best cell HPS+EW 10.0 ± 1.0 [9.0-11.0] (3 seeds)" in mape1     # lower is better
    mape2 = _line(grid, "MAPE (%), decoder2:")
    assert "best cell MTAN+UW 12.0 ± 2.0 [10.0-14.0] (3 seeds)" in mape2
    assert "fastest cell" in _line(grid, "Run time (minutes), decoder1:")
    assert _line(grid, "MSE (x1000), decoder1:").count("HPS+EW 10.0") == 1


def test_lead_outside_spread_tie_within(grid):
    acc1 = _line(grid, "Accuracy (%), decoder1:")
    assert "gap 5.00, beyond the seed spread 2.00: a lead" in acc1
    acc2 = _line(grid, "Accuracy (%), decoder2:")
    assert "best cell HPS+EW 70.00 ± 2.00" in acc2 and "runner-up MTAN+EW 69.00 ± 2.00" in acc2
    assert "gap 1.00, within the seed spread 4.00: a tie" in acc2


def test_axes_leaders(grid):
    # accuracy over weightings and decoders: HPS 73.0, MTAN 73.5, each ± 1.5 over seeds -> a tie
    arch = _line(grid, "Architectures on average, Accuracy (%)")
    assert "MTAN and HPS tie" in arch
    assert "MTAN 73.50 ± 1.50 [72.00-75.00] (3 seeds), runner-up HPS 73.00 ± 1.50 [71.50-74.50] (3 seeds)" in arch
    assert "within the seed spread 3.00: a tie" in arch
    # EW 76.0 vs UW 70.5, each ± 1.5 -> EW leads by 5.5 > 3
    w = _line(grid, "Weightings on average, Accuracy (%)")
    assert "EW leads" in w and "runner-up UW 70.50 ± 1.50" in w and "gap 5.50, beyond the seed spread 3.00" in w


def test_fastcar_against_best_mtl_cell(grid):
    acc = _line(grid, "FastCAR vs the best MTL cell (MTAN+UW/decoder1), Accuracy (%)")
    assert "FastCAR 95.00 ± 1.00 [94.00-96.00] (3 seeds) vs 90.00 ± 1.00 [89.00-91.00] (3 seeds)" in acc
    assert "FastCAR leads" in acc and "gap 5.00, beyond the seed spread 2.00: a lead" in acc
    mape = _line(grid, "FastCAR vs the best MTL cell (HPS+EW/decoder1), MAPE (%)")
    assert "FastCAR 3.0 ± 0.5 [2.5-3.5] (3 seeds) vs 10.0 ± 1.0 [9.0-11.0] (3 seeds)" in mape and "gap 7.0" in mape
    time = _line(grid, "FastCAR vs the most accurate MTL cell (MTAN+UW/decoder1), Run time (minutes)")
    assert "FastCAR 5.00 ± 0.50 [4.50-5.50] (3 seeds) vs 10.00 ± 1.00 [9.00-11.00] (3 seeds)" in time
    assert "faster" in time and "gap 5.00, beyond the seed spread 1.50: a lead" in time


def test_one_scaling_not_shown(grid):
    assert _line(grid, "Target scaling:") == ("Target scaling: not shown: only 'none' targets ran, so no cell can "
                                             "be compared across scalings.")


def test_both_scalings_paired(tmp_path):
    lines = findings(_runs(_write(tmp_path / "r", scalings=("none", "standard"))), SPECS)
    mape = _line(lines, "Target scaling standard vs none, MAPE (%)")
    assert "paired over the 8 cells that ran both" in mape
    assert "mean change (standard - none) -10.0 ± 0.0 over cells" in mape
    assert "standard helps in 8 of 8, hurts in 0" in mape
    assert "beyond the seed spread in 8 of the 8 cells with several seeds" in mape
    acc = _line(lines, "Target scaling standard vs none, Accuracy (%)")
    assert "helps in 0 of 8, hurts in 0" in acc and "a tie in 8" in acc
    assert not any(x.startswith("Target scaling:") for x in lines)


def test_one_seed_spread_unknown(tmp_path):
    lines = findings(_runs(_write(tmp_path / "r", seeds=(0,))), SPECS)
    assert "Seed spread not shown: only one seed finished ok per cell (seed 0)" in lines[0]
    acc1 = _line(lines, "Accuracy (%), decoder1:")
    assert "MTAN+UW 89.00 (1 seed, spread unknown)" in acc1 and ONE_SEED_TEXT in acc1  # seed 0: 1 below the mean
    # no comparison may claim a lead or a tie with one seed
    body = "\n".join(lines[1:])
    assert ": a lead" not in body and ": a tie" not in body and " leads" not in body
    assert ONE_SEED_TEXT in _line(lines, "Architectures on average, Accuracy (%)")
    assert ONE_SEED_TEXT in _line(lines, "FastCAR vs the best MTL cell (MTAN+UW/decoder1), Accuracy (%)")


def test_failed_not_applicable_missing_counts(tmp_path):
    cells = {k: v for k, v in CELLS.items() if k != ("MTAN", "UW", "decoder2")}   # one cell never run
    extra = [_row("tree-gn-d1", arch="Tree", weighting="EW", decoder="decoder1", status="not_applicable")]
    extra += [_row(f"hps-gn-d1-s{s}", arch="HPS", weighting="GN", decoder="decoder1", seed=s, status="failed")
              for s in SEEDS]
    extra += [_row("mtan-gn-d1-s0", arch="MTAN", weighting="GN", decoder="decoder1", seed=0, status="diverged")]
    extra += [_row("fastcar-s9", kind="fastcar", seed=9, status="failed")]
    lines = findings(_runs(_write(tmp_path / "r", cells=cells, extra=extra)), SPECS)
    miss = _line(lines, "Missing or failed:")
    # 3 architectures x 3 weightings x 2 decoders = 18 expected; 7 + Tree/EW/d1 + 2 GN cells present
    assert "of 18 grid cells, 7 finished ok, 1 failed, 1 diverged, 1 not applicable, 8 missing (not run)" in miss
    assert "runs: 21 ok, 3 failed, 1 diverged, 1 not applicable" in miss
    assert "; 1 cell ran fewer than the 3 seeds." in miss   # MTAN+GN; the N/A cell owes no seeds
    assert _line(lines, "FastCAR:") == "FastCAR: 3 of 4 runs finished ok (1 failed, 0 diverged)."


def test_no_fastcar_and_rendering(tmp_path):
    lines = findings(_runs(_write(tmp_path / "r", fastcar=False)), SPECS)
    assert "FastCAR vs the best MTL cell: not shown: no FastCAR run in these results." in lines
    assert "FastCAR: missing (no run in these results)." in lines
    # the report opens with them: summary.md right under its title, report.html before the summary, escaped
    out = render_report(tmp_path / "r", tmp_path / "report", formats=("md", "html"))
    md = (out.out_dir / "summary.md").read_text()
    assert md.split("\n", 2)[2].startswith("## Findings\n\n- ")
    assert all(f"- {line}" in md for line in lines)
    page = (out.out_dir / "report.html").read_text()
    assert page.index('<h2 id="findings">') < page.index('<h2 id="summary">')
    assert html.escape(lines[0]) in page


def test_last_selection(tmp_path):
    lines = findings(_runs(_write(tmp_path / "r")), SPECS, selection="last")
    assert lines[0].startswith("Test metrics at the last validation epoch")
    assert "best cell MTAN+UW 89.00 ± 1.00" in _line(lines, "Accuracy (%), decoder1:")
