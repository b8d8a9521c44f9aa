"""The Ray executor on a local Ray instance (Ray is installed by ``make test``): the smoke sweep gives the same
rows as the sequential executor; a lost worker is retried, a deterministic failure is not; every executor's cells
send their epoch events to the driver's view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SMOKE_THREADS, run_cli, small_spec
from mtlbench.records.store import ResultsStore
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.sweep.runner import SweepUI, run_sweep
from mtlbench.sweep.spec import load_spec

RAY_WEIGHTINGS = ("EW", "DWA", "PCGrad", "Nash-MTL", "GradDrop", "Aligned-MTL")
METRICS = [f"{w}_{m}" for w in ("best", "last") for m in ("accuracy", "mse", "rmse", "mae", "mape", "within8")]


def test_ray_smoke_sweep_has_the_sequential_rows(smoke_results: Path, tmp_path: Path, cache_dir: Path):
    out = tmp_path / "ray"
    # The paper's 6 architectures x 6 weightings of every kind (loss-level, stateful, per-task gradients, a solver,
    # representation gradients, mtlbench's own) x both decoders through Ray; the smoke fixture runs every registered
    # cell sequentially. The executor is the same for every cell, so the grid's growth must not grow this test.
    only = (f"arch={'|'.join(ARCHITECTURES.names('paper'))},"
            f"weighting={'|'.join(RAY_WEIGHTINGS)}")
    proc = run_cli("sweep", "smoke", "--out", str(out), "--executor", "ray", "--only", only,
                   "--cpus-per-cell", str(SMOKE_THREADS), cache=cache_dir, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ray = pd.read_parquet(out / "runs.parquet").set_index("run_id").sort_index()
    seq = pd.read_parquet(smoke_results / "runs.parquet").set_index("run_id").sort_index().loc[ray.index]
    assert len(ray) == 6 * len(RAY_WEIGHTINGS) * 2 and (ray.status == "ok").all()
    assert set(ray.executor) == {"ray"} and set(seq.executor) == {"local"}
    # Fixed seeds on the CPU, each Ray task with the same thread count: the same numbers, bit for bit.
    # (the smoke table's best_epoch is float: its not-applicable cells have none)
    cols = METRICS + ["best_epoch"]
    pd.testing.assert_frame_equal(ray[cols].astype(float), seq[cols].astype(float), check_exact=True)
    for name in ("epochs", "weights", "predictions"):
        a, b = (pd.read_parquet(d / f"{name}.parquet") for d in (out, smoke_results))
        b = b[b.run_id.isin(ray.index)]   # the smoke fixture ran every registered cell; Ray ran the paper's
        cols = [c for c in a.columns if c != "seconds"]
        key = [c for c in ("run_id", "epoch", "task", "checkpoint", "index") if c in cols]
        a, b = (df[cols].sort_values(key).reset_index(drop=True) for df in (a, b))
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


def test_ray_retries_lost_workers_but_not_failing_cells(tmp_path: Path, tiny_data: Path, cache_dir: Path,
                                                        monkeypatch):
    spec_path = tmp_path / "ray.toml"
    spec_path.write_text(f"""
name = "ray-faults"
[data]
source = "{tiny_data}"
[protocol]
epochs = 1
batch_size = 8
img_size = 32
max_steps_per_epoch = 1
latency_repeats = 1
[axes]
architectures = ["HPS"]
weightings = ["EW", "DWA", "UW"]
decoders = ["decoder1"]
[fastcar]
enabled = false
""")
    log, marker = tmp_path / "faults.log", tmp_path / "killed-once"
    # EW: its worker is killed once (a lost node), then the retry succeeds. DWA: raises every time (a
    # deterministic failure: recorded once, not retried). UW: its worker dies every time (lost beyond retries).
    monkeypatch.setenv("MTLBENCH_FAULT", ";".join([
        f"cell_start:cell=HPS+EW/decoder1:kill_once={marker}",
        "cell_start:cell=HPS+DWA/decoder1:raise",
        "cell_start:cell=HPS+UW/decoder1:kill"]))
    monkeypatch.setenv("MTLBENCH_FAULT_LOG", str(log))
    outcome = run_sweep(load_spec(spec_path), tmp_path / "res", executor="ray", cache_dir=str(cache_dir),
                        executor_options={"max_retries": 1})
    by = {r.row["weighting"]: r for r in outcome.results}
    hits = log.read_text().splitlines()
    count = {w: sum(f"HPS+{w}/decoder1" in h for h in hits) for w in ("EW", "DWA", "UW")}
    assert by["EW"].status == "ok" and count["EW"] == 2
    assert by["DWA"].status == "failed" and "fault injected" in by["DWA"].message and count["DWA"] == 1
    assert by["UW"].status == "failed" and by["UW"].message.startswith("worker lost") and count["UW"] == 2
    runs = ResultsStore(tmp_path / "res").read("runs")
    assert len(runs) == 3 and runs.run_id.is_unique and not outcome.all_ok


class RecordingUI(SweepUI):
    """The driver's view, keeping what it is shown."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def progress(self, event: str, info: dict) -> None:
        self.events.append((event, info))


@pytest.mark.parametrize("executor", ["sequential", "local", "ray"])
def test_the_driver_receives_epoch_events_from_running_cells(executor, tmp_path: Path, tiny_data: Path,
                                                             cache_dir: Path):
    spec = load_spec(small_spec(tmp_path, tiny_data, weightings='["EW", "UW"]', epochs=2, fastcar="false"))
    ui = RecordingUI()
    options = {"workers": 2} if executor == "local" else {}
    outcome = run_sweep(spec, tmp_path / "res", executor=executor, executor_options=options,
                        cache_dir=str(cache_dir), ui=ui)
    assert outcome.all_ok
    epochs = {(info["cell"], info["epoch"]) for event, info in ui.events if event == "epoch"}
    assert epochs == {(f"HPS+{w}/decoder1/none seed=0", e) for w in ("EW", "UW") for e in (1, 2)}
    assert all(np.isfinite(info["val_accuracy"]) for event, info in ui.events if event == "epoch")
