"""Crash safety: mid-run checkpoints and the fault-injection suite (``mtlbench.faults``).

After every fault: no finished cell lost or duplicated, the store readable, the message clear. Kills are real
SIGKILLs of a ``mtlbench sweep`` subprocess, placed deterministically by ``MTLBENCH_FAULT``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, run_cli, small_spec
from mtlbench.config import TrainingProtocol, RunConfig
from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.methods.weightings import WEIGHTINGS
from mtlbench.records.store import ResultsStore
from mtlbench.runs import run_cell
from mtlbench.train import checkpoint

METRICS = [f"{w}_{m}" for w in ("best", "last") for m in ("accuracy", "mse", "mae", "mape")] + ["best_epoch"]
DWA = "HPS+DWA/decoder1"


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory, tiny_data) -> Path:
    return small_spec(tmp_path_factory.mktemp("faults"), tiny_data, weightings='["EW", "DWA"]', epochs=3)


@pytest.fixture(scope="module")
def reference(spec_path, tmp_path_factory, cache_dir) -> pd.DataFrame:
    """The uninterrupted sweep's runs, indexed by run id."""
    out = tmp_path_factory.mktemp("ref") / "res"
    assert run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir).returncode == 0
    return pd.read_parquet(out / "runs.parquet").set_index("run_id")


def sweep_with_fault(spec: Path, out: Path, fault: str, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTLBENCH_CACHE": str(cache), "MTLBENCH_FAULT": fault, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mtlbench", "sweep", str(spec), "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def assert_store_sound(out: Path, reference: pd.DataFrame) -> pd.DataFrame:
    """Every cell present once, ok, with the uninterrupted run's metrics bit for bit; no checkpoint left."""
    runs = ResultsStore(out).read("runs").set_index("run_id")
    assert runs.index.is_unique and set(runs.index) == set(reference.index)
    assert (runs.status == "ok").all(), runs[["status", "message"]]
    pd.testing.assert_frame_equal(runs.loc[reference.index, METRICS], reference[METRICS], check_exact=True)
    consolidated = pd.read_parquet(out / "runs.parquet")
    assert len(consolidated) == len(reference) and consolidated.run_id.is_unique
    assert not list((out / "checkpoints").glob("*")) if (out / "checkpoints").exists() else True
    return runs


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: (p / "runs.parquet").stat().st_mtime_ns for p in (out / "cells").iterdir()
            if not p.name.startswith(".")}


# -- checkpoints: resume equals uninterrupted ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(tiny_data, cache_dir):
    table = resolve_dataset(str(tiny_data), cache_dir=str(cache_dir))
    return table, DeviceData.from_table(table, 32, torch.device("cpu"), cache_dir=str(cache_dir))


# Bitwise everywhere but Nash-MTL: its convex solver (cvxpy + Clarabel) keeps internal warm-start data that a
# checkpoint does not hold (the warm-start point itself is saved), so a resumed run agrees to the solver's tolerance.
RESUME_RTOL = {"Nash-MTL": 1e-5}
RESUME_CELLS = [("HPS", w) for w in WEIGHTINGS.names()] + [("LTB", "EW"), ("MTAN", "GradVac"), ("MMoE", "MoCo")]


@pytest.mark.parametrize("arch,weighting", RESUME_CELLS, ids=[f"{a}+{w}" for a, w in RESUME_CELLS])
def test_resume_from_checkpoint_equals_uninterrupted(arch, weighting, loaded, tmp_path, monkeypatch):
    # Interrupted after epoch 2's checkpoint (an exception: the checkpoint survives, as after a kill), resumed
    # in a fresh model: the weighting's state, RNGs, optimizer and scheduler carry over, so the result is equal.
    table, data = loaded
    cfg = RunConfig(kind="mtl", architecture=arch, weighting=weighting, decoder="decoder1", seed=3,
                    protocol=TrainingProtocol(epochs=4, batch_size=8, img_size=32, max_steps_per_epoch=2,
                                      latency_repeats=1))
    whole = run_cell(cfg, table, data)
    assert whole.status == "ok", whole.message
    monkeypatch.setenv("MTLBENCH_FAULT", f"epoch_end:cell={cfg.cell_name}:epoch=2:raise")
    cut = run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    assert cut.status == "failed" and "fault injected" in cut.message
    assert (tmp_path / f"{cut.run_id}.ckpt").exists()
    monkeypatch.delenv("MTLBENCH_FAULT")
    resumed = run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    assert resumed.status == "ok" and resumed.row["resumed_from_epoch"] == 2
    rtol = RESUME_RTOL.get(weighting, 0.0)
    for key in METRICS:
        assert resumed.row[key] == pytest.approx(whole.row[key], rel=rtol, abs=0), key
    for name in ("epochs", "weights"):
        a, b = pd.DataFrame(resumed.tables[name]), pd.DataFrame(whole.tables[name])
        cols = [c for c in a.columns if c != "seconds"]
        pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=not rtol, rtol=rtol or 1e-5)
    if not rtol:
        preds = [pd.DataFrame(r.tables["predictions"]) for r in (resumed, whole)]
        pd.testing.assert_frame_equal(*preds, check_exact=True)


def test_fastcar_resumes_without_searching_again(loaded, tmp_path, monkeypatch):
    table, data = loaded
    cfg = RunConfig(kind="fastcar", seed=1, protocol=TrainingProtocol(epochs=3, batch_size=8, img_size=32,
                                                              max_steps_per_epoch=2, latency_repeats=1))
    whole = run_cell(cfg, table, data)
    monkeypatch.setenv("MTLBENCH_FAULT", "epoch_end:cell=FastCAR:epoch=2:raise")
    assert run_cell(cfg, table, data, checkpoint_dir=tmp_path).status == "failed"
    monkeypatch.delenv("MTLBENCH_FAULT")
    resumed = run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    assert resumed.row["resumed_from_epoch"] == 2
    def search(result):   # the attempts, without their timings
        return [{k: v for k, v in row.items() if k != "seconds"} for row in result.tables["label_search"]]

    assert search(resumed) == search(whole)
    for key in METRICS:
        assert resumed.row[key] == whole.row[key], key


def test_fastcar_command_resumes_after_sigkill_and_skips_a_finished_run(tiny_data, tmp_path, cache_dir):
    """``mtlbench fastcar`` goes through the sweep driver: killed (SIGKILL) after epoch 2's checkpoint, the same
    command resumes and ends equal to an uninterrupted run; a third call skips the finished run."""
    args = ["-m", "mtlbench", "fastcar", "--data", str(tiny_data), "--device", "cpu", "--img-size", "32",
            "--epochs", "3", "--max-steps", "2", "--batch-size", "8", "--seeds", "1"]
    env = {**os.environ, "MTLBENCH_CACHE": str(cache_dir), "COLUMNS": "200"}

    def fastcar(out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
        extra = {"MTLBENCH_FAULT": fault} if fault else {}
        return subprocess.run([sys.executable, *args, "--out", str(out)], capture_output=True, text=True,
                              env={**env, **extra}, cwd=REPO, timeout=900)

    whole = fastcar(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    cut = tmp_path / "cut"
    killed = fastcar(cut, "epoch_end:cell=FastCAR:epoch=2:kill")
    assert killed.returncode == -9
    assert list((cut / "checkpoints").glob("*.ckpt"))
    resumed = fastcar(cut)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (pd.read_parquet(p / "runs.parquet") for p in (cut, tmp_path / "whole"))
    assert len(a) == 1 and a.resumed_from_epoch.iloc[0] == 2 and pd.isna(b.resumed_from_epoch.iloc[0])
    pd.testing.assert_frame_equal(a[METRICS], b[METRICS], check_exact=True)
    assert not list((cut / "checkpoints").glob("*.ckpt"))
    before = mtimes(cut)
    again = fastcar(cut)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert mtimes(cut) == before   # the run's own record was not written again


def test_a_failed_cell_keeps_its_checkpoint_and_retry_failed_resumes_it(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    assert sweep_with_fault(spec_path, out, f"epoch_end:cell={DWA}:epoch=2:raise", cache_dir).returncode == 1
    runs = ResultsStore(out).read("runs").set_index("run_id")
    failed = runs.index[runs.status == "failed"]
    assert len(failed) == 1 and runs.loc[failed[0], "failed_epoch"] > 0
    assert (out / "checkpoints" / f"{failed[0]}.ckpt").exists()
    dry = run_cli("sweep", str(spec_path), "--out", str(out), "--dry-run", "--retry-failed", cache=cache_dir)
    assert dry.returncode == 0 and dry.stdout.count("resumes from it") == 1 and "failed" in dry.stdout
    retried = sweep_with_fault(spec_path, out, "", cache_dir, "--retry-failed")
    assert retried.returncode == 0, retried.stdout[-2000:] + retried.stderr[-2000:]
    runs = assert_store_sound(out, reference)
    assert runs.loc[failed[0], "resumed_from_epoch"] == 2


@pytest.mark.parametrize("resume", [False, True], ids=["starts-over", "resume-diverged"])
def test_a_diverged_cell_loses_its_checkpoint_unless_asked_to_resume(spec_path, tmp_path, cache_dir, resume):
    out = tmp_path / "res"
    extra = ("--resume-diverged",) if resume else ()
    proc = sweep_with_fault(spec_path, out, f"train_step:cell={DWA}:epoch=3:nan", cache_dir, *extra)
    assert proc.returncode == 1
    runs = ResultsStore(out).read("runs")
    diverged = runs.loc[runs.status == "diverged", "run_id"]
    assert len(diverged) == 1
    assert (out / "checkpoints" / f"{diverged.iloc[0]}.ckpt").exists() == resume


def test_checkpoint_holds_what_resuming_needs(loaded, tmp_path):
    table, data = loaded
    cfg = RunConfig(kind="mtl", architecture="HPS", weighting="DWA", decoder="decoder1",
                    protocol=TrainingProtocol(epochs=3, batch_size=8, img_size=32, max_steps_per_epoch=1, latency_repeats=1))
    run_cell(cfg, table, data, checkpoint_dir=tmp_path)
    payload = checkpoint.load(tmp_path / f"{cfg.run_id(table.fingerprint())}.ckpt", cfg.run_id(table.fingerprint()),
                              data.device)
    state = payload["trainer"]
    assert payload["epoch"] == 2   # every epoch but the last
    assert {"module", "attributes", "optimizer", "scheduler", "rng", "history"} <= set(state)
    assert set(state["rng"]) >= {"python", "numpy", "torch", "generator"}
    assert np.asarray(state["attributes"][""]["train_loss_buffer"])[:, :2].any()   # DWA's loss history
    assert len(state["history"].epochs) == 2
    with pytest.raises(checkpoint.CheckpointError, match="belongs to run"):
        checkpoint.load(tmp_path / f"{cfg.run_id(table.fingerprint())}.ckpt", "another", data.device)


# -- the fault-injection suite -------------------------------------------------------------------------------------
def test_sigkill_during_a_cell_resumes_from_its_checkpoint(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    proc = sweep_with_fault(spec_path, out, f"epoch_end:cell={DWA}:epoch=2:kill", cache_dir)
    assert proc.returncode == -9
    before = mtimes(out)
    assert len(before) == 2                       # FastCAR and EW finished; DWA was killed after epoch 2
    assert len(list((out / "checkpoints").glob("*.ckpt"))) == 1
    resumed = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 already finished" in resumed.stdout and "from its epoch-2 checkpoint" in resumed.stdout
    assert all(mtimes(out)[k] == v for k, v in before.items())   # finished cells were not re-run
    runs = assert_store_sound(out, reference)
    assert runs.resumed_from_epoch.dropna().tolist() == [2]


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    proc = sweep_with_fault(spec_path, out, f"checkpoint_write:cell={DWA}:epoch=2:kill", cache_dir)
    assert proc.returncode == -9
    ckpts = out / "checkpoints"
    assert len(list(ckpts.glob("*.ckpt"))) == 1 and len(list(ckpts.glob(".*.tmp"))) == 1   # epoch 1 + half of 2
    resumed = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert resumed.returncode == 0 and "from its epoch-1 checkpoint" in resumed.stdout
    runs = assert_store_sound(out, reference)
    assert runs.resumed_from_epoch.dropna().tolist() == [1]
    assert not list(ckpts.glob(".*"))   # the interrupted write was cleaned up


def test_sigkill_during_consolidation_loses_nothing(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    proc = sweep_with_fault(spec_path, out, "consolidate:table=epochs:kill", cache_dir)
    assert proc.returncode == -9
    assert len(ResultsStore(out).read("runs")) == 3   # readable from the fragments at once
    again = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert again.returncode == 0 and "3 already finished" in again.stdout
    assert_store_sound(out, reference)
    for name in ("epochs", "predictions"):
        df = pd.read_parquet(out / f"{name}.parquet")
        assert len(df) == len(df.drop_duplicates()) and set(df.run_id) == set(reference.index)


@pytest.mark.parametrize("action,status,words", [("nan", "diverged", "nan"), ("oom", "failed", "out of memory")])
def test_nan_and_out_of_memory_mid_cell_mark_only_that_cell(action, status, words, spec_path, reference, tmp_path,
                                                            cache_dir):
    out = tmp_path / "res"
    proc = sweep_with_fault(spec_path, out, f"train_step:cell={DWA}:epoch=2:step=1:{action}", cache_dir)
    assert proc.returncode == 1 and status in proc.stdout
    runs = ResultsStore(out).read("runs").set_index("run_id")
    bad = runs[runs.weighting == "DWA"].iloc[0]
    assert bad.status == status and bad.failed_epoch == 2 and words in bad.message.lower()
    good = runs[runs.status == "ok"]
    assert len(good) == 2 and (good[METRICS] == reference.loc[good.index, METRICS]).all().all()
    # a failed cell keeps its epoch-1 checkpoint to resume from; a diverged one would only diverge again
    assert len(list((out / "checkpoints").glob("*.ckpt"))) == (status == "failed")
    retried = run_cli("sweep", str(spec_path), "--out", str(out), "--retry-failed", cache=cache_dir)
    assert retried.returncode == 0, retried.stdout
    runs = assert_store_sound(out, reference)   # resumed (failed) or started over (diverged): the same result
    resumed = runs.loc[bad.name, "resumed_from_epoch"]
    assert (resumed == 1) if status == "failed" else pd.isna(resumed)


def test_corrupt_checkpoint_restarts_the_cell_and_says_so(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    assert sweep_with_fault(spec_path, out, f"epoch_end:cell={DWA}:epoch=2:kill", cache_dir).returncode == -9
    (ckpt,) = (out / "checkpoints").glob("*.ckpt")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])   # truncated, as by a full disk
    resumed = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = assert_store_sound(out, reference)
    dwa = runs[runs.weighting == "DWA"].iloc[0]
    assert pd.isna(dwa.resumed_from_epoch)
    assert f"checkpoint {ckpt} is unreadable" in dwa.message and "restarted from epoch 0" in dwa.message


def test_incompatible_schema_version_is_refused_and_untouched(spec_path, tmp_path, cache_dir):
    out = tmp_path / "res"
    out.mkdir()
    (out / "store.json").write_text('{"schema_version": 1}')
    (out / "runs.parquet").write_bytes(b"PAR1 old")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "schema version 1" in line and str(out) in line and "another --out" in line
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_two_sweeps_on_one_folder_the_second_is_refused(spec_path, reference, tmp_path, cache_dir):
    out = tmp_path / "res"
    env = {**os.environ, "MTLBENCH_CACHE": str(cache_dir), "MTLBENCH_FAULT": "cell_start:cell=FastCAR:sleep=15"}
    first = subprocess.Popen([sys.executable, "-m", "mtlbench", "sweep", str(spec_path), "--out", str(out)],
                             env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = out / ".lock"
    deadline = time.time() + 300
    while time.time() < deadline and not (lock.exists() and lock.read_text() == str(first.pid)):
        time.sleep(0.1)
    second = run_cli("sweep", str(spec_path), "--out", str(out), cache=cache_dir)
    assert first.wait(timeout=900) == 0
    assert second.returncode == 2
    assert f"is in use by another sweep (pid {first.pid})" in second.stderr
    assert_store_sound(out, reference)


def test_keep_checkpoints_and_force(spec_path, tmp_path, cache_dir):
    out = tmp_path / "res"
    assert run_cli("sweep", str(spec_path), "--out", str(out), "--keep-checkpoints", cache=cache_dir).returncode == 0
    assert len(list((out / "checkpoints").glob("*.ckpt"))) == 3   # FastCAR, EW, DWA: the epoch-2 checkpoints
    forced = run_cli("sweep", str(spec_path), "--out", str(out), "--force", cache=cache_dir)
    assert forced.returncode == 0 and "resumed" not in forced.stdout   # --force starts over
    assert not list((out / "checkpoints").glob("*.ckpt"))
