"""mtlbench report: hand-built results folders -> files, heatmap numbers, summary winners, HTML, edge cases."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlbench.errors import MtlbenchError
from mtlbench.records.store import ResultsStore
from mtlbench.report import render_report, summary_rich_table
from mtlbench.report.figures import pareto_front

ARCHS = ("HPS", "MTAN")
WEIGHTINGS = ("EW", "UW", "IMTL")
DECODERS = ("decoder1", "decoder2")
NOT_RUN = ("MTAN", "IMTL", "decoder2")
FAILED = ("HPS", "UW", "decoder1")
DIVERGED = ("MTAN", "EW", "decoder2")
TWO_SEEDS = {("HPS", "EW", "decoder1"), ("MTAN", "IMTL", "decoder1"), ("HPS", "IMTL", "decoder2")}
N_CLASSES = 3


def _epochs(run_id: str, n: int = 4, acc0: float = 40.0) -> list[dict]:
    return [{"run_id": run_id, "epoch": e, "lr": 1e-3, "seconds": 1.0, "train_loss": 5.0 / e, "val_loss": 4.0 / e,
             "val_accuracy": min(acc0 + 12.0 * e, 100.0), "val_mse": 1e4 / e, "val_mape": 60.0 / e}
            for e in range(1, n + 1)]


def _row(run_id: str, *, kind: str = "mtl", arch=None, weighting=None, decoder=None, scaling="none", seed=0,
         status="ok", acc=None, mse=None, mape=None, total_s=None) -> dict:
    row = {"run_id": run_id, "sweep": "test", "kind": kind, "status": status, "architecture": arch,
           "weighting": weighting, "decoder": decoder, "target_scaling": scaling if kind == "mtl" else None,
           "seed": seed, "epochs": 4, "batch_size": 8, "img_size": 64, "pretrained": False, "dataset": "synth",
           "data_fingerprint": "abc123", "num_classes": N_CLASSES, "n_train": 60, "n_valid": 12, "n_test": 12,
           "config_json": json.dumps({"kind": kind, "seed": seed, "architecture": arch, "weighting": weighting,
                                      "protocol": {"epochs": 4, "lr": 0.001, "batch_size": 8}}),
           "total_s": total_s, "device": "cpu (test)", "torch_version": "2.x", "torchvision_version": "0.x",
           "libmtl_version": "1.1.5", "git_commit": "deadbeef", "schema_version": 2}
    if status == "ok":
        row.update(best_accuracy=acc, best_mse=mse, best_mape=mape, best_epoch=3, epochs_run=4,
                   best_confusion_json=json.dumps([[4, 0, 0], [1, 3, 0], [0, 0, 4]]))
    else:
        row.update(message=f"{status} on purpose", failed_epoch=2, epochs_run=2)
    return row


def _values(arch: str, w: str, dec: str, seed: int) -> tuple[float, float, float, float]:
    """Distinct, deterministic metrics; decoder2 is worse everywhere so a per-decoder scale would differ."""
    i = ARCHS.index(arch) * 3 + WEIGHTINGS.index(w)
    off = 0.0 if dec == "decoder1" else 25.0
    acc = 90.0 - 2.1 * i - off + (3.7 if seed == 1 else 0.0)
    if (arch, w, dec) == ("HPS", "EW", "decoder1"):
        acc = 99.0 if seed == 0 else 70.0  # best single run, but not the best mean: a trap for the summary
    mse = 60_000.0 + 1_500.0 * i + 1_000 * off + 800.0 * seed
    mape = 50.0 + 1.7 * ((i * 5) % 7) + 0.2 * off - 1.1 * seed
    return acc, mse, mape, 600.0 + 60.0 * i + 30.0 * seed + (120.0 if dec == "decoder2" else 0.0)


def _write_grid(root: Path, *, cells=None, fastcar: bool = True, scalings=("none",)) -> ResultsStore:
    store = ResultsStore(root)
    for scaling in scalings:
        for arch in ARCHS:
            for w in WEIGHTINGS:
                for dec in DECODERS:
                    key = (arch, w, dec)
                    if key == NOT_RUN or (cells is not None and key not in cells):
                        continue
                    status = "failed" if key == FAILED else "diverged" if key == DIVERGED else "ok"
                    for seed in ((0, 1) if key in TWO_SEEDS else (0,)):
                        acc, mse, mape, secs = _values(arch, w, dec, seed)
                        if scaling == "standard":
                            mape -= 20.0
                        rid = f"{arch}-{w}-{dec}-{scaling}-s{seed}".lower()
                        store.write_cell(rid, {"runs": [_row(rid, arch=arch, weighting=w, decoder=dec,
                                                             scaling=scaling, seed=seed, status=status, acc=acc,
                                                             mse=mse, mape=mape, total_s=secs)],
                                               "epochs": _epochs(rid, acc0=acc / 3)})
    if fastcar:
        _write_fastcar(store)
    store.consolidate()
    return store


def _write_fastcar(store: ResultsStore) -> None:
    rng = np.random.default_rng(0)
    true_class = np.repeat(np.arange(N_CLASSES), 4)
    true = 200.0 + 300.0 * true_class + rng.uniform(0, 100, len(true_class))
    preds = [{"run_id": "fastcar-1", "checkpoint": ck, "index": i, "relpath": f"img{i}.png", "true_class": int(c),
              "pred_class": int(c), "true_target": float(t), "pred_target": float(t * (1 + rng.normal(0, 0.03)))}
             for ck in ("best", "last") for i, (c, t) in enumerate(zip(true_class, true))]
    store.write_cell("fastcar-1", {"runs": [_row("fastcar-1", kind="fastcar", acc=98.45, mse=606.0, mape=2.4,
                                                 total_s=979.2)],
                                   "epochs": _epochs("fastcar-1", acc0=60.0), "predictions": preds})


def _mean_from_parquet(root: Path, column: str, scale: float = 1.0) -> pd.Series:
    runs = pd.read_parquet(root / "runs.parquet")
    ok = runs[(runs["kind"] == "mtl") & (runs["status"] == "ok")]
    return ok.groupby(["architecture", "weighting", "decoder", "target_scaling"])[column].mean() * scale


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append(v)
                if tag == "img":
                    self.imgs.append(v)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("grid")
    _write_grid(root)
    return root, render_report([root])


def test_full_report_files(grid):
    root, res = grid
    assert res.out_dir == root / "report"
    expected = ["summary.md", "summary.csv", "cells.csv", "report.html"]
    for stem in ("scatter_accuracy_mape", "fastcar_predictions", "fastcar_confusion", "learning_curves"):
        expected += [f"{stem}.png", f"{stem}.svg"]
    for m in ("accuracy", "mse", "mape", "time"):
        for d in DECODERS:
            expected += [f"heatmap_{m}_{d}.{ext}" for ext in ("png", "svg", "csv")]
    for name in expected:
        path = res.out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert path in res.files
    assert (res.out_dir / "heatmap_accuracy_decoder1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("metric,column,scale", [("accuracy", "best_accuracy", 1.0), ("mse", "best_mse", 1e-3),
                                                 ("mape", "best_mape", 1.0), ("time", "total_s", 1 / 60)])
def test_heatmap_csv_equals_parquet(grid, metric, column, scale):
    root, res = grid
    expected = _mean_from_parquet(root, column, scale)
    for dec in DECODERS:
        csv = pd.read_csv(res.out_dir / f"heatmap_{metric}_{dec}.csv", index_col=0)
        drawn = res.heatmaps[(metric, dec, "none")]
        assert sorted(csv.index) == sorted(ARCHS) and sorted(csv.columns) == sorted(WEIGHTINGS)
        for arch in ARCHS:
            for w in WEIGHTINGS:
                key = (arch, w, dec)
                if key in (NOT_RUN, FAILED, DIVERGED):
                    assert np.isnan(csv.loc[arch, w]) and np.isnan(drawn.loc[arch, w]), key  # blank, never 0
                else:
                    want = expected[(arch, w, dec, "none")]
                    assert csv.loc[arch, w] == pytest.approx(want, rel=1e-12), key
                    assert drawn.loc[arch, w] == pytest.approx(want, rel=1e-12), key
    # two seeds: the mean, not either seed
    assert res.heatmaps[("accuracy", "decoder1", "none")].loc["HPS", "EW"] == pytest.approx((99.0 + 70.0) / 2)


def test_shared_colour_scale(grid):
    _, res = grid
    for metric in ("accuracy", "mse", "mape", "time"):
        both = np.concatenate([res.heatmaps[(metric, d, "none")].to_numpy(float).ravel() for d in DECODERS])
        assert res.color_limits[metric] == (pytest.approx(np.nanmin(both)), pytest.approx(np.nanmax(both)))
    d1 = res.heatmaps[("accuracy", "decoder1", "none")].to_numpy(float)
    assert np.nanmin(d1) > res.color_limits["accuracy"][0]  # decoder2's lower values set the shared minimum


def test_failed_diverged_missing_reported(grid):
    _, res = grid
    text = "\n".join(res.missing)
    assert "not run: MTAN+IMTL/decoder2" in text
    assert "failed: HPS+UW/decoder1" in text and "failed on purpose" in text
    assert "diverged: MTAN+EW/decoder2" in text
    assert "seeds incomplete" in text
    status = res.cells.set_index(["architecture", "weighting", "decoder"])["status"]
    assert status[FAILED] == "failed" and status[DIVERGED] == "diverged"
    assert NOT_RUN not in status.index
    assert "FastCAR" not in text  # FastCAR is present and ok


def test_summary_best_cells(grid):
    root, res = grid
    s = res.summary
    acc = _mean_from_parquet(root, "best_accuracy")
    mape = _mean_from_parquet(root, "best_mape")
    for dec in DECODERS:
        a = acc[acc.index.get_level_values("decoder") == dec]
        m = mape[mape.index.get_level_values("decoder") == dec]
        row = s[(s["family"] == f"MTL {dec}") & (s["metric"] == "accuracy")].iloc[0]
        assert (row["architecture"], row["weighting"]) == a.idxmax()[:2]
        assert row["value"] == pytest.approx(a.max())
        row = s[(s["family"] == f"MTL {dec}") & (s["metric"] == "mape")].iloc[0]
        assert (row["architecture"], row["weighting"]) == m.idxmin()[:2]
        assert row["value"] == pytest.approx(m.min())
    # the trap: HPS+EW/decoder1 has the best single run (99.0) but not the best mean
    row = s[(s["family"] == "MTL decoder1") & (s["metric"] == "accuracy")].iloc[0]
    assert row["cell"] != "HPS+EW"
    fc = s[s["family"] == "FastCAR"].set_index("metric")
    assert fc.loc["accuracy", "value"] == pytest.approx(98.45) and fc.loc["mape", "value"] == pytest.approx(2.4)
    assert fc.loc["time", "value"] == pytest.approx(979.2 / 60)
    t = s[(s["family"] == "MTL decoder1") & (s["metric"] == "time")].iloc[0]
    per_cell = _mean_from_parquet(root, "total_s", 1 / 60)
    per_cell = per_cell[per_cell.index.get_level_values("decoder") == "decoder1"]
    assert t["value"] == pytest.approx(per_cell.mean()) and t["std"] == pytest.approx(per_cell.std())
    md = (res.out_dir / "summary.md").read_text()
    assert "FastCAR" in md and "MTL decoder1" in md and "98.45" in md
    assert pd.read_csv(res.out_dir / "summary.csv")["family"].isin(["MTL decoder1", "MTL decoder2", "FastCAR"]).all()
    assert summary_rich_table(s).row_count == s["row"].nunique()


def test_summary_and_cells_give_the_range_over_seeds(grid):
    """Table 1's entries, summary.csv and cells.csv carry min-max over seeds beside mean ± std."""
    root, res = grid
    runs = pd.read_parquet(root / "runs.parquet")
    ok = runs[(runs["status"] == "ok")]
    s = res.summary
    for dec in DECODERS:
        row = s[(s["family"] == f"MTL {dec}") & (s["metric"] == "accuracy")].iloc[0]
        seeds = ok[(ok["kind"] == "mtl") & (ok["architecture"] == row["architecture"])
                   & (ok["weighting"] == row["weighting"]) & (ok["decoder"] == dec)]["best_accuracy"]
        assert (row["min"], row["max"]) == pytest.approx((seeds.min(), seeds.max()))
        if len(seeds) > 1:
            assert row["text"] == (f"{row['value']:.2f} ± {seeds.std():.2f} [{seeds.min():.2f}-{seeds.max():.2f}] "
                                   f"({row['cell']})")
    fc = s[(s["family"] == "FastCAR") & (s["metric"] == "mape")].iloc[0]
    fc_runs = ok[ok["kind"] == "fastcar"]["best_mape"]
    assert (fc["min"], fc["max"]) == pytest.approx((fc_runs.min(), fc_runs.max()))
    csv = pd.read_csv(res.out_dir / "cells.csv")
    got = csv.set_index(["architecture", "weighting", "decoder"])
    want = ok[ok["kind"] == "mtl"].groupby(["architecture", "weighting", "decoder"])["best_accuracy"]
    for key, lo in want.min().items():
        assert got.loc[key, "Accuracy (%) min"] == pytest.approx(lo)
        assert got.loc[key, "Accuracy (%) max"] == pytest.approx(want.max()[key])


def test_table_1_entries_give_mean_std_and_range_only_with_several_seeds():
    """Hand-built: HPS+EW has two seeds (80, 90), HPS+UW one (70), FastCAR two (accuracy 95, 97; MAPE 3, 5)."""
    from mtlbench.report.data import METRIC_SPECS, Axes, aggregate_cells, aggregate_fastcar
    from mtlbench.report.tables import build_summary

    def run(kind, w, seed, acc, mape):
        return {"kind": kind, "architecture": "HPS" if w else None, "weighting": w,
                "decoder": "decoder1" if w else None, "target_scaling": "none" if w else None, "seed": seed, "status": "ok", "message": None,
                "run_id": f"{kind}-{w}-{seed}", "best_accuracy": acc, "best_mape": mape, "total_s": 60.0}

    runs = pd.DataFrame([run("mtl", "EW", 0, 80.0, 9.0), run("mtl", "EW", 1, 90.0, 11.0),
                         run("mtl", "UW", 0, 70.0, 20.0), run("fastcar", None, 0, 95.0, 3.0),
                         run("fastcar", None, 1, 97.0, 5.0)])
    specs = [METRIC_SPECS["accuracy"], METRIC_SPECS["mape"]]
    summary = build_summary(aggregate_cells(runs, specs), aggregate_fastcar(runs, specs), specs,
                            Axes(["HPS"], ["EW", "UW"], ["decoder1"], ["none"], [0, 1])).set_index(["family", "metric"])
    assert summary.loc[("MTL decoder1", "accuracy"), "text"] == "85.00 ± 7.07 [80.00-90.00] (HPS+EW)"
    assert summary.loc[("FastCAR", "accuracy"), "text"] == "96.00 ± 1.41 [95.00-97.00]"
    assert summary.loc[("FastCAR", "mape"), "text"] == "4.0 ± 1.4 [3.0-5.0]"
    one = build_summary(aggregate_cells(runs[runs["weighting"] != "EW"], specs), None, specs,
                        Axes(["HPS"], ["UW"], ["decoder1"], ["none"], [0])).set_index(["family", "metric"])
    assert one.loc[("MTL decoder1", "accuracy"), "text"] == "70.00 (HPS+UW)"     # one seed: no std, no range


def test_html_self_contained(grid):
    _, res = grid
    doc = (res.out_dir / "report.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(doc)
    parser.close()
    assert not [r for r in parser.refs if r.lower().startswith(("http:", "https:", "//"))]
    assert "http://" not in doc and "https://" not in doc
    pngs = [s for s in parser.imgs if s.startswith("data:image/png;base64,")]
    assert len(pngs) == len(parser.imgs) >= 8 + 4
    assert 'class="sortable"' in doc and "<script>" in doc
    for needle in ("not run: MTAN+IMTL/decoder2", "deadbeef", "cpu (test)", "1.1.5", "config_json"):
        assert needle in doc, needle


def test_fastcar_only(tmp_path):
    store = ResultsStore(tmp_path / "fc")
    _write_fastcar(store)
    store.consolidate()
    res = render_report([tmp_path / "fc"], tmp_path / "out")
    assert res.heatmaps == {} and not list(res.out_dir.glob("heatmap_*"))
    for name in ("fastcar_predictions.png", "fastcar_confusion.svg", "learning_curves.png", "summary.md",
                 "report.html"):
        assert (res.out_dir / name).stat().st_size > 0, name
    assert any("no MTL grid runs" in m for m in res.missing)
    assert set(res.summary["family"]) == {"FastCAR"}
    assert "No MTL grid cells" in (res.out_dir / "report.html").read_text()


def test_empty_and_absent_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlbenchError, match="empty"):
        render_report([tmp_path / "empty"])
    ResultsStore(tmp_path / "fresh")  # a store with no runs yet
    with pytest.raises(MtlbenchError, match="fresh"):
        render_report([tmp_path / "fresh"])
    with pytest.raises(MtlbenchError, match="nowhere"):
        render_report([tmp_path / "nowhere"])


def test_merge_two_folders(tmp_path, grid):
    _, full = grid
    first = {(a, w, d) for a in ARCHS for w in WEIGHTINGS for d in DECODERS if a == "HPS"}
    rest = {(a, w, d) for a in ARCHS for w in WEIGHTINGS for d in DECODERS if a != "HPS"} | {("HPS", "EW", "decoder1")}
    _write_grid(tmp_path / "a", cells=first, fastcar=True)
    _write_grid(tmp_path / "b", cells=rest, fastcar=True)  # HPS+EW/decoder1 and FastCAR in both: counted once
    res = render_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", formats=("csv", "md"))
    assert not list(res.out_dir.glob("*.png")) and (res.out_dir / "summary.md").exists()
    cells = res.cells.set_index(["architecture", "weighting", "decoder"])
    assert cells.loc[("HPS", "EW", "decoder1"), "n_runs"] == 2  # two seeds, not four
    assert res.fastcar["n_runs"] == 1
    assert any("more than one folder" in m for m in res.missing)
    for key, drawn in full.heatmaps.items():
        pd.testing.assert_frame_equal(res.heatmaps[key], drawn)


def test_two_target_scalings(tmp_path):
    _write_grid(tmp_path / "s", scalings=("none", "standard"), fastcar=False)
    res = render_report([tmp_path / "s"], formats=("csv", "md"), metrics=("accuracy", "mape"))
    assert {k[2] for k in res.heatmaps} == {"none", "standard"}
    assert (res.out_dir / "heatmap_mape_decoder2_standard.csv").exists()
    md = (res.out_dir / "summary.md").read_text()
    assert "Target scaling: standard" in md and "Side by side" in md
    assert any("no FastCAR run" in m for m in res.missing)
    std = res.heatmaps[("mape", "decoder1", "standard")]
    assert std.loc["MTAN", "UW"] == pytest.approx(res.heatmaps[("mape", "decoder1", "none")].loc["MTAN", "UW"] - 20)


def test_bad_options(tmp_path, grid):
    root, _ = grid
    with pytest.raises(MtlbenchError, match="format"):
        render_report([root], tmp_path / "x", formats=("pdf",))
    with pytest.raises(MtlbenchError, match="metric"):
        render_report([root], tmp_path / "x", metrics=("f1",))


def test_pareto_front():
    acc = np.array([99.0, 95.0, 98.0, 90.0])
    mape = np.array([50.0, 2.0, 60.0, 3.0])
    assert pareto_front(acc, mape).tolist() == [True, True, False, False]


def test_axis_order_without_registry(tmp_path, monkeypatch):
    """If the registries cannot be imported (another module not ready), axes follow first appearance."""
    import mtlbench.report.data as data

    monkeypatch.setattr(data, "registry_names", lambda kind: None)
    store = ResultsStore(tmp_path / "r")
    for rid, arch, w in (("a1", "MTAN", "UW"), ("a2", "HPS", "EW"), ("a3", "MTAN", "EW")):
        store.write_cell(rid, {"runs": [_row(rid, arch=arch, weighting=w, decoder="decoder1", acc=50.0, mse=1.0,
                                             mape=2.0, total_s=3.0)]})
    res = render_report([tmp_path / "r"], formats=("csv",))
    drawn = res.heatmaps[("accuracy", "decoder1", "none")]
    assert list(drawn.index) == ["MTAN", "HPS"] and list(drawn.columns) == ["UW", "EW"]
    assert np.isnan(drawn.loc["HPS", "UW"])
    assert any("not run: HPS+UW/decoder1" in m for m in res.missing)


def _missing_heading(out_dir: Path) -> str:
    doc = (out_dir / "report.html").read_text(encoding="utf-8")
    start = doc.index('<h2 id="missing">')
    return doc[start:doc.index("</h2>", start)].split(">", 1)[1]


def test_missing_heading_counts_cells_not_lines(grid):
    _, res = grid
    assert len(res.missing) > 3   # the grid line, not run, failed, diverged, seeds, registry notes
    assert _missing_heading(res.out_dir) == "Missing &amp; failed (3)"   # 1 not run, 1 failed, 1 diverged


def test_missing_heading_is_zero_when_every_cell_ran_and_counts_a_failed_fastcar(tmp_path):
    store = ResultsStore(tmp_path / "full")
    for arch in ARCHS:
        for w in WEIGHTINGS:
            for dec in DECODERS:
                rid = f"{arch}-{w}-{dec}".lower()
                acc, mse, mape, secs = _values(arch, w, dec, 0)
                store.write_cell(rid, {"runs": [_row(rid, arch=arch, weighting=w, decoder=dec, acc=acc, mse=mse,
                                                     mape=mape, total_s=secs)]})
    _write_fastcar(store)
    store.consolidate()
    res = render_report([tmp_path / "full"], tmp_path / "out", formats=("html",), metrics=("accuracy",))
    assert any(m.startswith("grid: 12 of 12 cells run") for m in res.missing)   # a line, but no missing cell
    assert _missing_heading(res.out_dir) == "Missing &amp; failed (0)"

    store.write_cell("fastcar-2", {"runs": [_row("fastcar-2", kind="fastcar", seed=0, status="failed")]})
    shutil.rmtree(store.cell_dir("fastcar-1"))
    store.consolidate()
    res = render_report([tmp_path / "full"], tmp_path / "out", formats=("html",), metrics=("accuracy",))
    assert _missing_heading(res.out_dir) == "Missing &amp; failed (1)"


def test_rankings_in_the_report(tmp_path, grid):
    """Two seeds of a complete 2 x 3 grid: the critical-difference diagrams and mean ranks are drawn and exported;
    the shared grid fixture (one seed for most cells) says why it has none."""
    root, _ = grid
    res = render_report([root], tmp_path / "one", formats=("png",), metrics=("accuracy",))
    assert any("critical-difference diagram" in s.lower() and "fewer than 2 seeds" in s for s in res.skipped)
    store = ResultsStore(tmp_path / "two")
    for arch in ("HPS", "MTAN"):
        for w in WEIGHTINGS:
            for dec in DECODERS:
                for seed in (0, 1):
                    acc, mse, mape, secs = _values(arch, w, dec, seed)
                    rid = f"{arch}-{w}-{dec}-s{seed}".lower()
                    store.write_cell(rid, {"runs": [_row(rid, arch=arch, weighting=w, decoder=dec, seed=seed,
                                                         acc=acc, mse=mse, mape=mape, total_s=secs)]})
    store.consolidate()
    out = tmp_path / "out"
    res = render_report([tmp_path / "two"], out, formats=("png", "csv"), metrics=("accuracy",))
    assert (out / "cd_weighting_accuracy.png").stat().st_size > 0
    ranks = pd.read_csv(out / "cd_weighting_accuracy.csv").set_index("weighting")["mean_rank"]
    # _values: accuracy falls with the weighting's index in every block (HPS+EW/decoder1 seed 1 aside)
    assert ranks.idxmin() in ("EW", "UW") and ranks.idxmax() == "IMTL"
    assert (out / "ranking_weighting.csv").exists()
