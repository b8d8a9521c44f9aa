"""One end-to-end test per command on the embedded data: list, data synth / info / fetch, report."""

from __future__ import annotations

import zipfile
from html.parser import HTMLParser

import pandas as pd

from conftest import run_cli


def test_list_shows_every_method_with_its_paper(cache_dir):
    proc = run_cli("list", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    for name in ("HPS", "Cross_stitch", "MMoE", "MTAN", "CGC", "LTB", "Nash-MTL", "Aligned-MTL", "MGDA-loss+",
                 "decoder2", "ICML 2020", "num_experts=[3]", "sequential"):
        assert name in proc.stdout, name


def test_data_synth_then_info(tmp_path, cache_dir):
    out = tmp_path / "syn"
    proc = run_cli("data", "synth", str(out), "--image-size", "32", "--per-class", "5,2,2", "--seed", "3",
                   cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert (out / "trainset.xlsx").exists() and len(list((out / "trainset").rglob("*.*"))) == 30
    info = run_cli("data", "info", str(out), cache=cache_dir)
    assert info.returncode == 0, info.stderr
    assert "train" in info.stdout and "test" in info.stdout and "54 images" in info.stdout


def test_data_info_on_the_embedded_default(cache_dir):
    proc = run_cli("data", "info", "default", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "synthetic" in proc.stdout


def test_data_fetch_from_a_file_url(tmp_path, tiny_data, cache_dir):
    archive = tmp_path / "main.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in tiny_data.rglob("*"):
            if p.is_file():
                z.write(p, f"Advanced-Steel-Property-Dataset-main/{p.relative_to(tiny_data)}")
    dest = tmp_path / "fetched"
    proc = run_cli("data", "fetch", "--url", archive.as_uri(), "--dest", str(dest), cache=cache_dir)
    # the tiny archive holds 84 images, not the real 4536: verification must say so and write nothing
    assert proc.returncode != 0 and "4536" in proc.stderr and not dest.exists()


def test_report_on_the_smoke_sweep(smoke_results, cache_dir, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("report", str(smoke_results), "--out", str(out), cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report.html" in proc.stdout
    for name in ("summary.md", "summary.csv", "report.html", "heatmap_accuracy_decoder1.png",
                 "heatmap_mse_decoder2.svg"):
        assert (out / name).stat().st_size > 0, name
    runs = pd.read_parquet(smoke_results / "runs.parquet")
    drawn = pd.read_csv(out / "heatmap_accuracy_decoder1.csv", index_col=0)
    r = runs[(runs.decoder == "decoder1") & (runs.architecture == "MTAN") & (runs.weighting == "IMTL")].iloc[0]
    assert abs(drawn.loc["MTAN", "IMTL"] - r.best_accuracy) < 1e-9
    HTMLParser().feed((out / "report.html").read_text())
