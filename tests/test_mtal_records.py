"""MTAL through the sweep: the sharing table and runs columns, a SIGKILL after a merge epoch resumed bit for bit, a
rho sweep as an axis ([arch_sweep]) shown as variants in the report, and the identical-start note."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from conftest import run_cli
from test_faults import sweep_with_fault
from mtlbench.config import RunConfig, TrainingProtocol
from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.records.store import ResultsStore
from mtlbench.report.render import render_report
from mtlbench.runs import run_cell

SPEC = """
name = "mtal"
[data]
source = "{data}"
[protocol]
epochs = 3
batch_size = 8
img_size = 32
max_steps_per_epoch = 2
latency_repeats = 1
checkpoint_every = 1
[axes]
architectures = ["MTAL"]
weightings = ["EW"]
decoders = ["decoder1"]
[fastcar]
enabled = false
{extra}
"""
SHARING = ["epoch", "layer", "task_a", "task_b", "kernels", "above_rho", "newly_tied", "ratio", "max_similarity",
           "mean_similarity"]
METRICS = ["best_accuracy", "best_mse", "last_accuracy", "last_mse", "best_epoch", "unique_trunk_params",
           "kernel_share_ratio"]


def spec(tmp_path: Path, data: Path, extra: str) -> Path:
    path = tmp_path / "mtal.toml"
    path.write_text(SPEC.format(data=data, extra=extra))
    return path


def test_sigkill_after_a_merge_epoch_resumes_bit_for_bit(tiny_data, cache_dir, tmp_path):
    # rho 0.05: at random initialisation about half the filter pairs lie above it, so every merge ties some
    path = spec(tmp_path, tiny_data, "[arch_args.MTAL]\nrho = 0.05")
    ref = tmp_path / "ref"
    assert run_cli("sweep", str(path), "--out", str(ref), cache=cache_dir).returncode == 0
    out = tmp_path / "cut"
    proc = sweep_with_fault(path, out, "epoch_end:cell=MTAL+EW/decoder1:epoch=2:kill", cache_dir)
    assert proc.returncode == -9
    assert len(list((out / "checkpoints").glob("*.ckpt"))) == 1
    resumed = run_cli("sweep", str(path), "--out", str(out), cache=cache_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = ResultsStore(out).read("runs"), ResultsStore(ref).read("runs")
    assert a["resumed_from_epoch"].tolist() == [2]
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS], check_exact=True)
    sa, sb = ResultsStore(out).read("sharing"), ResultsStore(ref).read("sharing")
    pd.testing.assert_frame_equal(sa[SHARING], sb[SHARING], check_exact=True)
    assert sorted(sa["epoch"].unique()) == [1, 2, 3] and (sa["newly_tied"] > 0).any()
    assert 0 < b["kernel_share_ratio"].iloc[0] < 1


def test_a_rho_sweep_records_each_variant_and_the_report_shows_the_sharing(tiny_data, cache_dir, tmp_path):
    path = spec(tmp_path, tiny_data, "[arch_sweep.MTAL]\nrho = [-1.0, 1.1]")
    out = tmp_path / "res"
    proc = run_cli("sweep", str(path), "--out", str(out), cache=cache_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MTAL[rho=-1.0]+EW/decoder1" in proc.stdout and "MTAL[rho=1.1]+EW/decoder1" in proc.stdout
    runs = ResultsStore(out).read("runs").set_index("variant")
    assert runs.loc["rho=-1.0", "kernel_share_ratio"] == 1.0 and runs.loc["rho=1.1", "kernel_share_ratio"] == 0.0
    # every filter tied: the banked convolutions count once, BatchNorm still per task, so a bit over half
    every, none = runs.loc["rho=-1.0", "unique_trunk_params"], runs.loc["rho=1.1", "unique_trunk_params"]
    assert none == runs.loc["rho=1.1", "backbone_params"] and 0.5 < every / none < 0.51
    assert json.loads(runs.loc["rho=-1.0", "hparams_json"])["architecture"]["rho"] == -1.0
    sharing = ResultsStore(out).read("sharing")
    assert set(sharing["epoch"]) == {1, 2, 3} and set(sharing["task_a"]) == {"cls"}
    report = render_report(out, tmp_path / "report", formats=("png", "csv", "md"))
    layers = pd.read_csv(tmp_path / "report" / "sharing_layers.csv").set_index("layer")
    assert list(layers.columns) == ["MTAL[rho=-1.0]+EW/decoder1", "MTAL[rho=1.1]+EW/decoder1"]
    assert (layers.iloc[:, 0] == 1.0).all() and (layers.iloc[:, 1] == 0.0).all()
    assert layers.index[0] == "conv1" and len(layers) == 20   # every convolution of ResNet-18, downsamples included
    assert (tmp_path / "report" / "sharing.png").is_file()
    assert not any("MTAL" in m and "never run" in m for m in report.missing)


def test_identical_task_networks_are_said_in_the_run_message(tiny_data, cache_dir):
    table = resolve_dataset(str(tiny_data), cache_dir=str(cache_dir))
    data = DeviceData.from_table(table, 32, torch.device("cpu"), cache_dir=str(cache_dir))
    protocol = TrainingProtocol(epochs=1, batch_size=8, img_size=32, max_steps_per_epoch=1, latency_repeats=1,
                                checkpoint_every=0)
    cfg = RunConfig(kind="mtl", architecture="MTAL", weighting="EW", decoder="decoder1", protocol=protocol,
                    arch_args={"init": "identical"})
    result = run_cell(cfg, table, data)
    assert result.status == "ok", result.message
    assert "start identical" in result.message and result.row["kernel_share_ratio"] == 1.0
