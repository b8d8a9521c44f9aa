"""One run, FastCAR or one MTL cell, from configuration to the rows of every record table.

``run_cell`` never raises for a failing run: an exception, an out-of-memory or a NaN / inf loss becomes a ``runs``
row with status ``failed`` or ``diverged``, the message and the epoch, so a sweep can go on.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mtlbench import faults
from mtlbench.config import FastCARSettings, RunConfig
from mtlbench.environment import environment
from mtlbench.errors import Diverged, MtlbenchError
from mtlbench.fastcar.transform import LabelTransform
from mtlbench.memory import PeakMemory
from mtlbench.models.mtl import Regressor, build_mtl_model
from mtlbench.records.schema import SCHEMA_VERSION
from mtlbench.stability import stability
from mtlbench.train import checkpoint
from mtlbench.train.checkpoint import CheckpointError, CheckpointPolicy
from mtlbench.train.learners import FastCARLearner, MTLLearner
from mtlbench.train.loop import EpochFn, Predictions, ProgressFn, Trainer


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


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def _prediction_rows(run_id: str, which: str, preds: Predictions, relpaths: list[str]) -> list[dict]:
    return [{"run_id": run_id, "checkpoint": which, "index": int(i), "relpath": relpaths[int(i)],
             "true_class": int(tc), "pred_class": int(pc), "true_target": float(tt), "pred_target": float(pt)}
            for i, tc, pc, tt, pt in zip(preds.index, preds.true_class, preds.pred_class, preds.true_target,
                                         preds.pred_target)]


class _Run:
    """Shared bookkeeping of one run."""

    def __init__(self, cfg: RunConfig, table: Any, data: Any, *, sweep: str | None, concurrency: int,
                 checkpoint_dir: Path | None = None, executor: str | None = None) -> None:
        self.cfg, self.table, self.data = cfg, table, data
        self.run_id = cfg.run_id(table.fingerprint())
        self.policy = CheckpointPolicy(checkpoint_dir, cfg.protocol.checkpoint_every)
        self.checkpoint_s = 0.0
        self.device = data.device
        self.started = datetime.now(timezone.utc)
        self.t0 = time.perf_counter()
        counts = {s: len(data.splits[s].labels) for s in ("train", "valid", "test")}
        p = cfg.protocol
        self.row: dict[str, Any] = {
            "run_id": self.run_id, "sweep": sweep, "kind": cfg.kind, "status": "ok",
            "architecture": cfg.architecture, "weighting": cfg.weighting, "decoder": cfg.decoder,
            "target_scaling": cfg.target_scaling if cfg.kind == "mtl" else None, "seed": cfg.seed,
            "epochs": p.epochs, "batch_size": p.batch_size, "img_size": p.img_size, "pretrained": p.pretrained,
            "dataset": table.name, "data_fingerprint": table.fingerprint(), "num_classes": data.num_classes,
            "n_train": counts["train"], "n_valid": counts["valid"], "n_test": counts["test"],
            "config_json": cfg.to_json(), "concurrency": concurrency, "executor": executor,
            "started_at": self.started,
            "schema_version": SCHEMA_VERSION, **environment(self.device)}
        self.tables: dict[str, list[dict]] = {"epochs": [], "weights": [], "predictions": [], "label_search": []}
        self.memory = PeakMemory(self.device)   # this run's own peak, not the worker process's

    def finish(self, trainer: Trainer | None, label_search_s: float = 0.0) -> CellResult:
        if trainer is not None:
            st = trainer.state
            self.tables["epochs"] = [{"run_id": self.run_id, **e} for e in st.epochs]
            self.tables["weights"] = [{"run_id": self.run_id, **w} for w in st.weights]
            self.row["epochs_run"] = len(st.epochs)
            self.row.update(stability(st.epochs))
            if self.row["status"] == "ok":
                best, last = trainer.final_predictions()
                relpaths = list(self.table.split("test")["relpath"])
                for which, preds in (("best", best), ("last", last)):
                    m = preds.metrics(self.data.num_classes)
                    for key in ("accuracy", "mse", "rmse", "mae", "mape", "within8"):
                        self.row[f"{which}_{key}"] = m[key]
                    self.row[f"{which}_confusion_json"] = json.dumps(m["confusion"])
                    self.tables["predictions"] += _prediction_rows(self.run_id, which, preds, relpaths)
                self.row["best_epoch"] = st.best_epoch
                b1, bb = trainer.latency_ms()
                self.row.update(latency_b1_ms=b1, latency_batch_ms=bb)
            self.row.update(train_s=st.train_s, epoch_mean_s=st.train_s / max(len(st.epochs), 1),
                            train_images_per_s=st.images / st.train_s if st.train_s > 0 else None,
                            params=sum(p.numel() for p in trainer.module.parameters()))
            state = getattr(trainer.module, "architecture_state", None)
            if callable(state):  # what an architecture learned about its own structure, e.g. LTB's tree
                self.row["arch_state_json"] = json.dumps(state(), sort_keys=True)
        peak_mb, method = self.memory.stop()
        self.row.update(label_search_s=label_search_s, total_s=time.perf_counter() - self.t0,
                        checkpoint_s=self.checkpoint_s, peak_mem_mb=peak_mb, peak_mem_method=method,
                        finished_at=datetime.now(timezone.utc))
        return CellResult(self.run_id, self.row["status"], self.row.get("message"),
                          {"runs": [self.row], **self.tables})

    def note(self, text: str) -> None:
        self.row["message"] = f"{self.row['message']}; {text}" if self.row.get("message") else text

    # -- checkpoints --------------------------------------------------------------------------------------------
    def saver(self, extra: Callable[[], dict[str, Any]] = dict) -> EpochFn | None:
        """The trainer's ``on_epoch`` callback: a checkpoint every ``checkpoint_every`` epochs (not after the last:
        only the final evaluation would be left to redo)."""
        if not self.policy.enabled:
            return None

        def save(trainer: Trainer) -> None:
            e = trainer.epoch
            if e % self.policy.every or e >= self.cfg.protocol.epochs:
                return
            payload = {"run_id": self.run_id, "epoch": e, "elapsed_s": time.perf_counter() - self.t0,
                       "trainer": trainer.state_dict(), **extra()}
            self.checkpoint_s += checkpoint.save(self.policy.path(self.run_id), payload, cell=self.cfg.cell_name,
                                                 epoch=e)
        return save

    def saved(self) -> dict[str, Any] | None:
        """This run's checkpoint, if one can be used; an unusable one is noted in the record and ignored."""
        if not self.policy.enabled or not self.policy.path(self.run_id).exists():
            return None
        try:
            return checkpoint.load(self.policy.path(self.run_id), self.run_id, self.device)
        except CheckpointError as exc:
            self.note(f"{exc}; restarted from epoch 0")
            return None

    def resume(self, trainer: Trainer, payload: dict[str, Any]) -> None:
        trainer.load_state_dict(payload["trainer"])
        self.t0 -= payload["elapsed_s"]   # total_s counts the interrupted process's time too
        self.row["resumed_from_epoch"] = payload["epoch"]

    def fail(self, exc: BaseException, trainer: Trainer | None) -> None:
        if isinstance(exc, Diverged):
            self.row.update(status="diverged", message=str(exc), failed_epoch=exc.epoch)
            return
        epoch = (trainer.epoch + 1) if trainer is not None else 0
        if _is_oom(exc):
            message = f"out of memory in epoch {epoch}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        elif isinstance(exc, MtlbenchError):
            message = str(exc)
        else:
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
            message = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}{where}"
        self.row.update(status="failed", message=message, failed_epoch=epoch)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def run_mtl(cfg: RunConfig, table: Any, data: Any, *, sweep: str | None = None, concurrency: int = 1,
            progress: ProgressFn | None = None, checkpoint_dir: Path | None = None,
            executor: str | None = None) -> CellResult:
    run = _Run(cfg, table, data, sweep=sweep, concurrency=concurrency, checkpoint_dir=checkpoint_dir,
               executor=executor)
    trainer = None
    try:
        seed_everything(cfg.seed)
        p = cfg.protocol
        built = build_mtl_model(cfg.architecture, cfg.weighting, cfg.decoder, num_classes=data.num_classes,
                                img_size=p.img_size, device=data.device, pretrained=p.pretrained,
                                arch_args=cfg.arch_args, weight_args=cfg.weight_args)
        if p.channels_last:
            built.module.to(memory_format=torch.channels_last)
        run.row["hparams_json"] = json.dumps(built.hparams, sort_keys=True, default=str)
        mean, std = 0.0, 1.0
        if cfg.target_scaling == "standard":
            stats = table.target_stats("train")
            mean, std = stats["mean"], stats["std"] or 1.0
        learner = MTLLearner(built.module, built.backward_kwargs, epochs=p.epochs, target_mean=mean,
                             target_std=std, amp=p.amp, compile=p.compile)
        trainer = Trainer(learner, data, p, seed=cfg.seed, progress=progress, name=cfg.cell_name)
        saved = run.saved()
        if saved is not None:
            run.resume(trainer, saved)
        faults.hit("cell_start", cell=cfg.cell_name)
        trainer.fit(on_epoch=run.saver())
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 — failure isolation: any error becomes this cell's record
        run.fail(exc, trainer)
    return run.finish(trainer)


def _fastcar_trainer(cfg: RunConfig, data: Any, transform: LabelTransform,
                     progress: ProgressFn | None) -> tuple[Trainer, FastCARLearner]:
    p = cfg.protocol
    seed_everything(cfg.seed)
    module = Regressor(p.pretrained).to(data.device)
    if p.channels_last:
        module.to(memory_format=torch.channels_last)
    learner = FastCARLearner(module, transform, amp=p.amp, compile=p.compile)
    return Trainer(learner, data, p, seed=cfg.seed, progress=progress, name=cfg.cell_name), learner


def _label_search(run: _Run, settings: FastCARSettings, progress: ProgressFn | None
                  ) -> tuple[Trainer, LabelTransform, float]:
    """The one-epoch test with bounded retries (sec. 3); returns the chosen attempt's trainer after epoch 1."""
    cfg, table, data = run.cfg, run.table, run.data
    train = table.split("train")
    labels, targets = train["label"].to_numpy(), train["target"].to_numpy()
    gap, search_s = settings.gap, 0.0
    attempts: list[tuple[float, Trainer, LabelTransform]] = []
    for attempt in range(1, settings.max_attempts + 1):
        t0 = time.perf_counter()
        transform = LabelTransform.fit(labels, targets, data.num_classes, gap)
        candidate, learner = _fastcar_trainer(cfg, data, transform, progress)
        learner.track_grad = True
        candidate.fit(1)
        learner.track_grad = False
        mean_grad = learner.mean_grad()
        seconds = time.perf_counter() - t0
        search_s += seconds
        accepted = bool(np.isfinite(mean_grad) and mean_grad < settings.grad_threshold)
        run.tables["label_search"].append({
            "run_id": run.run_id, "attempt": attempt, "gap": gap, "constants_json": json.dumps(
                list(transform.constants)), "centre": transform.centre, "mean_grad": mean_grad,
            "seconds": seconds, "accepted": accepted})
        if progress:
            progress("label_search", {"attempt": attempt, "gap": gap, "mean_grad": mean_grad,
                                      "accepted": accepted, "seconds": seconds})
        attempts.append((mean_grad, candidate, transform))
        if accepted:
            break
        gap *= settings.gap_shrink  # the documented rule: shrink the gaps between class ranges
    if not run.tables["label_search"][-1]["accepted"]:
        # No attempt met the threshold: continue with the smallest mean gradient, and say so in the record.
        best_i = int(np.argmin([a[0] for a in attempts]))
        run.tables["label_search"][best_i]["accepted"] = True
        run.note(f"no label-search attempt met mean gradient < {settings.grad_threshold}; "
                 f"continued with attempt {best_i + 1}")
    else:
        best_i = len(attempts) - 1
    _, trainer, transform = attempts[best_i]
    return trainer, transform, search_s


def run_fastcar(cfg: RunConfig, table: Any, data: Any, *, sweep: str | None = None, concurrency: int = 1,
                progress: ProgressFn | None = None, checkpoint_dir: Path | None = None,
                executor: str | None = None) -> CellResult:
    """FastCAR (sec. 3): label transformation, one-epoch test with bounded retries, then the remaining epochs.
    A checkpoint holds the chosen transform and the search's records, so a resumed run does not search again."""
    settings = cfg.fastcar or FastCARSettings()
    run = _Run(cfg, table, data, sweep=sweep, concurrency=concurrency, checkpoint_dir=checkpoint_dir,
               executor=executor)
    trainer = None
    search_s = 0.0
    try:
        saved = run.saved()
        if saved is not None:
            transform, search_s = saved["transform"], saved["label_search_s"]
            run.tables["label_search"] = saved["label_search"]
            if saved.get("message"):
                run.note(saved["message"])
            trainer, _ = _fastcar_trainer(cfg, data, transform, progress)
            run.resume(trainer, saved)
        else:
            trainer, transform, search_s = _label_search(run, settings, progress)
        run.row["hparams_json"] = json.dumps({"fastcar": asdict(settings), "transform": transform.to_dict()},
                                             default=str)
        search = {"transform": transform, "label_search": run.tables["label_search"], "label_search_s": search_s,
                  "message": run.row.get("message")}
        save = run.saver(lambda: search)
        if save is not None and saved is None:
            save(trainer)   # epoch 1 (the accepted search attempt) is done: keep it
        faults.hit("cell_start", cell=cfg.cell_name)
        trainer.fit(on_epoch=save)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001
        run.fail(exc, trainer)
    return run.finish(trainer, search_s)


def run_cell(cfg: RunConfig, table: Any, data: Any, **kwargs: Any) -> CellResult:
    return (run_fastcar if cfg.kind == "fastcar" else run_mtl)(cfg, table, data, **kwargs)
