"""The record of one run as it happens: its typed ``runs`` row, its other tables, its checkpoint, its timing and
memory, and how a failure becomes a row (status ``failed`` or ``diverged``, message, epoch) instead of an error."""

from __future__ import annotations

import json
import math
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlbench.config import RunConfig
from mtlbench.environment import environment
from mtlbench.errors import Diverged, MtlbenchError
from mtlbench.memory import PeakMemory
from mtlbench.records.rows import Row
from mtlbench.records.schema import METRICS, SCHEMA_VERSION
from mtlbench.stability import stability
from mtlbench.train.checkpoint import CheckpointError, CheckpointPolicy, RunCheckpoint
from mtlbench.train.loop import Predictions, Trainer


@dataclass
class CellResult:
    run_id: str
    status: str
    message: str | None
    tables: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def row(self) -> dict:
        return self.tables["runs"][0]


def seed_everything(seed: int) -> None:
    """Model initialisation and LibMTL's weightings (PCGrad, GradVac shuffle with ``random``) read global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def config_row(cfg: RunConfig, run_id: str, *, sweep: str | None, **more: Any) -> Row:
    """The ``runs`` columns a run's configuration alone gives (also the whole row of a run whose worker was lost)."""
    return Row("runs", {
        "run_id": run_id, "sweep": sweep, "kind": cfg.kind, "status": "ok", "architecture": cfg.architecture,
        "variant": cfg.variant, "setting": cfg.setting or None, "weighting": cfg.weighting, "decoder": cfg.decoder,
        "target_scaling": cfg.target_scaling if cfg.kind == "mtl" else None, "seed": cfg.seed,
        "config_json": cfg.to_json(), "schema_version": SCHEMA_VERSION}, **more)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def failure_message(exc: BaseException, epoch: int) -> str:
    """One line naming what failed: out of memory, mtlbench's own message, or the exception and where it rose."""
    if _is_oom(exc):
        return f"out of memory in epoch {epoch}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if isinstance(exc, MtlbenchError):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}{where}"


def prediction_rows(run_id: str, which: str, preds: Predictions, relpaths: list[str]) -> list[Row]:
    return [Row("predictions", run_id=run_id, checkpoint=which, index=int(i), relpath=relpaths[int(i)],
                true_class=int(tc), pred_class=int(pc), true_target=float(tt), pred_target=float(pt))
            for i, tc, pc, tt, pt in zip(preds.index, preds.true_class, preds.pred_class, preds.true_target,
                                         preds.pred_target)]


class RunRecord:
    """Bookkeeping of one run. A kind of run (:mod:`mtlbench.runs`) builds its trainer, sets :attr:`trainer`,
    trains; :meth:`finish` turns the trainer's history and final predictions into the record tables."""

    def __init__(self, cfg: RunConfig, table: Any, data: Any, *, sweep: str | None, concurrency: int,
                 checkpoint_dir: Path | None = None, executor: str | None = None) -> None:
        self.cfg, self.table, self.data = cfg, table, data
        self.run_id = cfg.run_id(table.fingerprint())
        self.device = data.device
        p = cfg.protocol
        self.checkpoint = RunCheckpoint(CheckpointPolicy(checkpoint_dir, p.checkpoint_every), self.run_id,
                                        cell=cfg.cell_name, epochs=p.epochs, device=self.device)
        self.trainer: Trainer | None = None
        self.label_search_s = 0.0
        self.t0 = time.perf_counter()
        self.started = self.t0   # unlike t0, not moved back by a resumed checkpoint's elapsed time
        counts = {s: len(data.splits[s].labels) for s in ("train", "valid", "test")}
        self.row = config_row(
            cfg, self.run_id, sweep=sweep, epochs=p.epochs, batch_size=p.batch_size, img_size=p.img_size,
            pretrained=p.pretrained, dataset=table.name, data_fingerprint=table.fingerprint(),
            num_classes=data.num_classes, n_train=counts["train"], n_valid=counts["valid"], n_test=counts["test"],
            concurrency=concurrency, executor=executor, started_at=datetime.now(timezone.utc),
            **environment(self.device))
        self.tables: dict[str, list[dict]] = {"epochs": [], "weights": [], "predictions": [], "label_search": [],
                                              "sharing": []}
        self.memory = PeakMemory(self.device)   # this run's own peak, not the worker process's

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def set_up(self) -> None:
        """The trainer is built (and resumed): the run's setup time ends here. What the trainer and the checkpoint
        already counted in this process is not setup: FastCAR's accepted label-search attempt has trained and
        validated epoch 1 (train_s, eval_s) and written its checkpoint (checkpoint_s). A resumed trainer's counts
        are the earlier processes'."""
        counted = self.checkpoint.seconds
        if self.trainer is not None and self.row.get("resumed_from_epoch") is None:
            counted += self.trainer.state.train_s + self.trainer.state.eval_s
        self.row["setup_s"] = time.perf_counter() - self.started - counted

    def note(self, text: str) -> None:
        self.row["message"] = f"{self.row['message']}; {text}" if self.row.get("message") else text

    # -- checkpoints --------------------------------------------------------------------------------------------
    def saved(self) -> dict[str, Any] | None:
        """This run's checkpoint, if one can be used; an unusable one is noted in the record and ignored."""
        try:
            return self.checkpoint.load()
        except CheckpointError as exc:
            self.note(f"{exc}; restarted from epoch 0")
            return None

    def resume(self, trainer: Trainer, payload: dict[str, Any]) -> None:
        try:
            self.checkpoint.resume(trainer, payload)
        except CheckpointError as exc:   # refused before anything was loaded: the trainer is still fresh
            self.note(f"{exc}; restarted from epoch 0")
            return
        self.t0 -= payload["elapsed_s"]   # total_s counts the interrupted process's time too
        self.row["resumed_from_epoch"] = payload["epoch"]

    def saver(self, extra: Any = dict) -> Any:
        return self.checkpoint.saver(self.elapsed, extra)

    # -- outcome ------------------------------------------------------------------------------------------------
    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, Diverged):
            self.row.update(status="diverged", message=str(exc), failed_epoch=exc.epoch)
            return
        epoch = (self.trainer.epoch + 1) if self.trainer is not None else 0
        self.row.update(status="failed", message=failure_message(exc, epoch), failed_epoch=epoch)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def finish(self) -> CellResult:
        trainer = self.trainer
        if trainer is not None:
            st = trainer.state
            self.tables["epochs"] = [Row("epochs", e, run_id=self.run_id) for e in st.epochs]
            self.tables["weights"] = [Row("weights", w, run_id=self.run_id) for w in st.weights]
            self.tables["sharing"] = [Row("sharing", r, run_id=self.run_id) for r in st.sharing]
            self.row["epochs_run"] = len(st.epochs)
            self.row.update(stability(st.epochs))
            if self.row["status"] == "ok":
                best, last = trainer.final_predictions()
                relpaths = list(self.table.split("test")["relpath"])
                for which, preds in (("best", best), ("last", last)):
                    m = preds.metrics(self.data.num_classes)
                    for key in METRICS:
                        self.row[f"{which}_{key}"] = m[key]
                    self.row[f"{which}_confusion_json"] = json.dumps(m["confusion"])
                    self.tables["predictions"] += prediction_rows(self.run_id, which, preds, relpaths)
                self.row["best_epoch"] = st.best_epoch
                t_latency = time.perf_counter()
                b1, bb = trainer.latency_ms()
                self.row.update(latency_b1_ms=b1, latency_batch_ms=bb,
                                latency_s=time.perf_counter() - t_latency)
            self.row.update(train_s=st.train_s, eval_s=st.eval_s if math.isfinite(st.eval_s) else None,
                            epoch_mean_s=st.train_s / max(len(st.epochs), 1),
                            train_images_per_s=st.images / st.train_s if st.train_s > 0 else None,
                            params=sum(p.numel() for p in trainer.module.parameters()))
            unique = getattr(trainer.module, "unique_trunk_params", None)
            if callable(unique):  # an architecture that ties kernels across tasks (MTAL)
                self.row.update(unique_trunk_params=int(unique()),
                                kernel_share_ratio=float(trainer.module.share_ratio()))
            state = getattr(trainer.module, "architecture_state", None)
            if callable(state):  # what an architecture learned about its own structure, e.g. LTB's tree
                self.row["arch_state_json"] = json.dumps(state(), sort_keys=True)
        peak_mb, method = self.memory.stop()
        self.row.update(label_search_s=self.label_search_s, total_s=self.elapsed(),
                        checkpoint_s=self.checkpoint.seconds, peak_mem_mb=peak_mb, peak_mem_method=method,
                        finished_at=datetime.now(timezone.utc))
        return CellResult(self.run_id, self.row["status"], self.row.get("message"),
                          {"runs": [self.row], **self.tables})
