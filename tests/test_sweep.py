"""`mtlbench sweep`: spec parsing, filters, resumability (SIGKILL), failure isolation, the writer lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO, run_cli, small_spec
from mtlbench.config import RunConfig
from mtlbench.errors import ConfigError
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS
from mtlbench.records.store import ResultsStore, StoreError
from mtlbench.sweep.runner import run_sweep
from mtlbench.sweep.spec import load_spec, matches, parse_filters, parse_spec


def test_shipped_specs_parse():
    smoke, demo, paper = load_spec("smoke"), load_spec("demo"), load_spec("paper")
    assert len(demo.cells()) == len(paper.cells()) == 205   # the paper's 6 x 17 x 2 + FastCAR
    assert len(smoke.cells()) == len(ARCHITECTURES) * len(WEIGHTINGS) * 2 + 1   # every registered cell
    assert paper.protocol.img_size == 224 and paper.protocol.epochs == 100 and paper.data["source"] == "steel"
    assert [c.kind for c in smoke.cells()].count("fastcar") == 1


def test_axes_all_and_seeds_and_scalings():
    spec = parse_spec({"axes": {"architectures": ["hps"], "weightings": ["EW"], "decoders": "all",
                                "target_scaling": "all", "seeds": [0, 1]}, "fastcar": {"enabled": False}})
    cells = spec.cells()
    assert len(cells) == 1 * 1 * 2 * 2 * 2 and {c.architecture for c in cells} == {"HPS"}
    assert len({c.run_id("x") for c in cells}) == len(cells)


@pytest.mark.parametrize("raw,match", [
    ({"axes": {"decoders": ["decoder3"]}}, "axes.decoders.*decoder3.*decoder1"),
    ({"axes": {"seeds": ["a"]}}, "axes.seeds"),
    ({"axes": {"target_scaling": ["minmax"]}}, "axes.target_scaling.*minmax.*standard"),
    ({"fastcar": {"gapp": 1}}, "fastcar.gapp"),
    ({"colour": 1}, "unknown key colour"),
    ({"arch_sweep": {"MTAL": {"rho": 0.4}}}, "arch_sweep.MTAL.rho must be a non-empty list"),
    ({"arch_sweep": {"MTAL": {"rhoo": [0.4]}}}, "rhoo"),
    ({"arch_sweep": {"MTAL": {"rho": ["high"]}}}, "rho"),
    ({"arch_sweep": {"MTALL": {"rho": [0.4]}}}, "unknown architecture 'MTALL'"),
    ({"arch_args": {"MTAL": {"rho": 0.5}}, "arch_sweep": {"MTAL": {"rho": [0.4]}}}, "in one place"),
])
def test_spec_errors_name_the_key_and_allowed_values(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec(raw)


def test_an_arch_sweep_is_an_axis_of_variants_that_keep_their_run_ids():
    spec = parse_spec({"axes": {"architectures": ["HPS", "MTAL"], "weightings": ["EW"], "decoders": ["decoder1"]},
                       "arch_args": {"MTAL": {"warmup_epochs": 2}},
                       "arch_sweep": {"MTAL": {"rho": [0.4, 0.55], "alpha": [0.5, 0.7]}},
                       "fastcar": {"enabled": False}})
    cells = spec.cells()
    assert [c.label for c in cells] == ["HPS+EW/decoder1/none seed=0"] + [
        f"MTAL[rho={r},alpha={a}]+EW/decoder1/none seed=0" for r in (0.4, 0.55) for a in (0.5, 0.7)]
    assert all(c.arch_args["warmup_epochs"] == 2 for c in cells[1:])
    assert len({c.run_id("x") for c in cells}) == 5
    # the variant is presentation: the same options given as arch_args make the same run
    same = RunConfig(kind="mtl", architecture="MTAL", weighting="EW", decoder="decoder1", protocol=spec.protocol,
                     arch_args={"warmup_epochs": 2, "rho": 0.4, "alpha": 0.5})
    assert same.run_id("x") == cells[1].run_id("x") and same.variant is None
    assert RunConfig.from_json(cells[1].to_json()).label == cells[1].label


def test_filters():
    f = parse_filters(["arch=MTAN,weighting=IMTL|EW"])
    assert f == {"architecture": {"mtan"}, "weighting": {"imtl", "ew"}}
    cells = [c for c in load_spec("smoke").cells() if matches(c, f)]
    assert len(cells) == 4
    with pytest.raises(ConfigError, match="color"):
        parse_filters(["color=red"])


def test_failure_isolation_nan_exception_and_the_sweep_goes_on(tmp_path, tiny_data, cache_dir):
    # DWA with temperature T = 0 divides by zero from its third epoch on (softmax of inf): NaN weights, NaN
    # parameters, a NaN loss in epoch 3: that cell diverges.
    # MMoE with zero experts fails in its first forward: that cell fails. The others run.
    spec = small_spec(tmp_path, tiny_data, weightings='["EW", "DWA"]', epochs=3, fastcar="false",
                      extra='[weight_args.DWA]\nT = 0.0\n')
    s = load_spec(spec)
    from dataclasses import replace
    s = replace(s, architectures=("HPS", "MMoE"), arch_args={"MMoE": {"num_experts": [0]}})
    outcome = run_sweep(s, tmp_path / "res", cache_dir=str(cache_dir))
    by = {(r.row["architecture"], r.row["weighting"]): r for r in outcome.results}
    assert by[("HPS", "EW")].status == "ok"
    assert by[("HPS", "DWA")].status == "diverged"
    assert by[("HPS", "DWA")].row["failed_epoch"] == 3 and "nan" in by[("HPS", "DWA")].message.lower()
    assert by[("MMoE", "EW")].status == "failed" and by[("MMoE", "EW")].row["failed_epoch"] == 1
    assert "RuntimeError" in by[("MMoE", "EW")].message or "stack" in by[("MMoE", "EW")].message
    runs = ResultsStore(tmp_path / "res").read("runs")
    assert sorted(runs.status) == ["diverged", "failed", "failed", "ok"]
    # the CLI's exit code says not all cells succeeded
    proc = run_cli("sweep", str(spec), "--out", str(tmp_path / "res2"), cache=cache_dir)
    assert proc.returncode == 1 and "diverged" in proc.stdout


def test_sigkill_then_resume_runs_every_cell_exactly_once(tmp_path, tiny_data, cache_dir):
    spec = small_spec(tmp_path, tiny_data)
    out = tmp_path / "res"
    env = {**os.environ, "MTLBENCH_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mtlbench", "sweep", str(spec), "--out", str(out)], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = out / "cells"
    deadline = time.time() + 600
    while time.time() < deadline:
        done = [p for p in cells.iterdir() if not p.name.startswith(".")] if cells.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.name: (p / "runs.parquet").stat().st_mtime_ns for p in cells.iterdir()
                       if not p.name.startswith(".")}
    assert 2 <= len(finished_before) < 6, "the kill should land mid-sweep"
    resumed = run_cli("sweep", str(spec), "--out", str(out), cache=cache_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(finished_before)} already finished" in resumed.stdout
    for name, mtime in finished_before.items():   # no finished cell was re-run
        assert (cells / name / "runs.parquet").stat().st_mtime_ns == mtime
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 6 and runs.run_id.is_unique and (runs.status == "ok").all()
    assert not [p for p in cells.iterdir() if p.name.startswith(".")]   # interrupted temporaries cleaned up
    again = run_cli("sweep", str(spec), "--out", str(out), "--dry-run", cache=cache_dir)
    assert "6 finished" in again.stdout


def test_force_reruns_and_dry_run_counts(tmp_path, tiny_data, cache_dir):
    spec = small_spec(tmp_path, tiny_data, weightings='["EW"]', fastcar="false")
    out = tmp_path / "res"
    assert run_cli("sweep", str(spec), "--out", str(out), cache=cache_dir).returncode == 0
    before = next((out / "cells").iterdir()) / "runs.parquet"
    mtime = before.stat().st_mtime_ns
    assert run_cli("sweep", str(spec), "--out", str(out), cache=cache_dir).returncode == 0
    assert before.stat().st_mtime_ns == mtime
    assert run_cli("sweep", str(spec), "--out", str(out), "--force", cache=cache_dir).returncode == 0
    assert before.stat().st_mtime_ns != mtime
    assert len(pd.read_parquet(out / "runs.parquet")) == 1


def test_second_writer_is_refused_with_a_clear_message(tmp_path):
    store = ResultsStore(tmp_path / "res")
    with store.lock():
        with pytest.raises(StoreError, match="in use by another sweep"):
            with ResultsStore(tmp_path / "res").lock():
                pass


def test_incompatible_schema_version_is_refused(tmp_path):
    store = ResultsStore(tmp_path / "res")
    (store.root / "store.json").write_text('{"schema_version": 999}')
    with pytest.raises(StoreError, match="schema version 999"):
        ResultsStore(tmp_path / "res")
