"""Real results folders with synthetic rows, written through ``ResultsStore.write_cell`` (no mocks): a pair sweep of
Tree-b0 .. Tree-b4 and HPS whose validation metrics are set per run."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from mtlbench.config import TrainingProtocol
from mtlbench.records.store import ResultsStore

ARCHS = ("Tree-b0", "Tree-b1", "Tree-b2", "Tree-b3", "Tree-b4", "HPS")
PROTOCOL = TrainingProtocol(epochs=4, batch_size=8, img_size=32, max_steps_per_epoch=2, latency_repeats=1)


def write_run(store: ResultsStore, arch: str, seed: int, *, acc: float, mae: float | None, mape: float,
              weighting: str = "EW", decoder: str = "decoder1", status: str = "ok", sweep: str = "pairs",
              protocol: TrainingProtocol = PROTOCOL, message: str | None = None, run_id: str | None = None) -> str:
    """One run with 4 epochs: epoch 1 far off (it must not count), epochs 2-4 at value - d, value, value + d (their
    mean is the value: the mean of the last 3 validation evaluations)."""
    rid = run_id or f"{arch.lower()}-{weighting.lower()}-{decoder}-s{seed}-{sweep}"
    cfg = {"kind": "mtl", "protocol": asdict(protocol), "seed": seed, "architecture": arch, "weighting": weighting,
           "decoder": decoder, "target_scaling": "none"}
    run = {"run_id": rid, "sweep": sweep, "kind": "mtl", "status": status, "message": message,
           "architecture": arch, "weighting": weighting, "decoder": decoder, "target_scaling": "none",
           "seed": seed, "epochs": protocol.epochs, "img_size": protocol.img_size, "data_fingerprint": "fp-test",
           "config_json": json.dumps(cfg), "finished_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    epochs = []
    if status == "ok":
        for e, (da, dm) in enumerate([(-30.0, 50.0), (-0.5, -0.25), (0.0, 0.0), (0.5, 0.25)], 1):
            epochs.append({"run_id": rid, "epoch": e, "val_accuracy": acc + da,
                           "val_mae": None if mae is None else mae + dm, "val_mape": mape + dm,
                           "val_mse": 1000.0 + e})
    store.write_cell(rid, {"runs": [run], "epochs": epochs})
    return rid


# Hand-checked values (see test_from_results.test_delta_t_by_hand): per (architecture, seed) accuracy, MAE, MAPE.
HAND = {
    ("Tree-b0", 0): (50.0, 10.0, 20.0), ("Tree-b0", 1): (54.0, 12.0, 20.0),
    ("Tree-b1", 0): (52.0, 11.0, 20.0), ("Tree-b1", 1): (52.0, 11.0, 20.0),
    ("Tree-b2", 0): (57.2, 9.9, 22.0), ("Tree-b2", 1): (52.0, 8.8, 18.0),
    ("Tree-b3", 0): (54.6, 11.0, 21.0), ("Tree-b3", 1): (54.6, 11.0, 21.0),
    ("Tree-b4", 0): (49.4, 12.1, 21.0), ("Tree-b4", 1): (49.4, 12.1, 21.0),
    ("HPS", 0): (46.8, 13.2, 24.0), ("HPS", 1): (46.8, 13.2, 24.0),
}


def pair_folder(root: Path, *, values: dict = HAND, skip: set = frozenset(), failed: set = frozenset(),
                weighting: str = "EW", no_mae: bool = False, **kw) -> Path:
    store = ResultsStore(root)
    for (arch, seed), (acc, mae, mape) in values.items():
        if (arch, seed) in skip:
            continue
        status = "failed" if (arch, seed) in failed else "ok"
        write_run(store, arch, seed, acc=acc, mae=None if no_mae else mae, mape=mape, weighting=weighting,
                  status=status, message="RuntimeError: boom" if status == "failed" else None, **kw)
    store.consolidate()
    return root
