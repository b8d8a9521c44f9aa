"""LTB's learned tree in the records and the report: a real LTB cell on the tiny data, through the store."""

from __future__ import annotations

import json

import pandas as pd
import torch

from mtlbench.config import TrainingProtocol, RunConfig
from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.records.store import ResultsStore
from mtlbench.report.render import render_report
from mtlbench.runs import run_cell


def test_ltb_cell_records_its_final_tree_and_the_report_draws_it(tiny_data, cache_dir, tmp_path):
    table = resolve_dataset(str(tiny_data), cache_dir=str(cache_dir))
    data = DeviceData.from_table(table, 32, torch.device("cpu"), cache_dir=str(cache_dir))
    protocol = TrainingProtocol(epochs=2, batch_size=8, img_size=32, max_steps_per_epoch=1, latency_repeats=1,
                        checkpoint_every=0)
    store = ResultsStore(tmp_path / "res")
    for arch in ("LTB", "HPS"):
        cfg = RunConfig(kind="mtl", architecture=arch, weighting="EW", decoder="decoder1", seed=0, protocol=protocol)
        result = run_cell(cfg, table, data)
        assert result.status == "ok", result.message
        store.write_cell(result.run_id, result.tables)
    store.consolidate()
    runs = pd.read_parquet(tmp_path / "res" / "runs.parquet").set_index("architecture")
    assert pd.isna(runs.loc["HPS", "arch_state_json"])   # nothing to record for a fixed architecture
    state = json.loads(runs.loc["LTB", "arch_state_json"])
    assert state["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert len(state["tree"]) == 4 and all(len(t) == 2 and set(t) <= {0, 1} for t in state["tree"])
    hp = json.loads(runs.loc["LTB", "hparams_json"])["architecture"]
    assert hp["gumbel_hard"] is True and hp["tau_schedule"] == "libmtl" and hp["eval_tree"] == "argmax"
    report = render_report(tmp_path / "res", tmp_path / "report", formats=("png", "html"))
    assert (tmp_path / "report" / "ltb_trees.png").is_file()
    assert not any("LTB" in s for s in report.skipped)
