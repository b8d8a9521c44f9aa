"""The one driver of a run, FastCAR or one MTL cell, from configuration to the rows of every record table.

Every caller (the sweep's executors, ``mtlbench fastcar`` through the sweep, tests, benchmark scripts) runs a run
through :func:`run_cell`. A kind of run is a function that builds the run's trainer (setting
:attr:`RunRecord.trainer`), resumes it from a checkpoint if there is one, and returns the epoch callback that saves
the next; the driver trains and records. ``run_cell`` never raises for a failing run: an exception, an
out-of-memory or a NaN / inf loss becomes a ``runs`` row with status ``failed`` or ``diverged``, the message and
the epoch, so a sweep can go on. A cell whose weighting cannot train its architecture is recorded, untrained, as
``not_applicable`` with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from mtlbench import faults
from mtlbench.config import RunConfig
from mtlbench.fastcar.run import train_fastcar
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS, not_applicable
from mtlbench.models.mtl import build_mtl_model
from mtlbench.run_record import CellResult, RunRecord, seed_everything
from mtlbench.train.learners import MTLLearner
from mtlbench.train.loop import EpochFn, ProgressFn, Trainer

__all__ = ["CellResult", "RUN_KINDS", "run_cell", "train_mtl", "why_not_applicable"]


def train_mtl(run: RunRecord, progress: ProgressFn | None) -> EpochFn | None:
    """One grid cell: LibMTL's architecture x weighting on the ResNet-18 encoder, cross-entropy + MSE."""
    cfg, table, data = run.cfg, run.table, run.data
    p = cfg.protocol
    seed_everything(cfg.seed)
    built = build_mtl_model(cfg.architecture, cfg.weighting, cfg.decoder, num_classes=data.num_classes,
                            img_size=p.img_size, device=data.device, pretrained=p.pretrained,
                            arch_args=cfg.arch_args, weight_args=cfg.weight_args)
    if p.channels_last:
        built.module.to(memory_format=torch.channels_last)
    run.row["hparams_json"] = json.dumps(built.hparams, sort_keys=True, default=str)
    run.row.update(structure(cfg.architecture, built.module, p.img_size))
    if getattr(built.module, "identical_start", False):
        run.note(f"{cfg.architecture}'s task networks start identical (pretrained or init = identical): each filter "
                 f"and its counterpart in the other task have similarity 1, so a merge with rho < 1 ties them all and "
                 f"{cfg.architecture} becomes HPS with per-task BatchNorm")
    mean, std = 0.0, 1.0
    if cfg.target_scaling == "standard":
        stats = table.target_stats("train")
        mean, std = stats["mean"], stats["std"] or 1.0
    learner = MTLLearner(built.module, built.backward_kwargs, epochs=p.epochs, target_mean=mean,
                         target_std=std, amp=p.amp, compile=p.compile, samples=built.samples)
    run.trainer = Trainer(learner, data, p, seed=cfg.seed, progress=progress, name=cfg.cell_name)
    saved = run.saved()
    if saved is not None:
        run.resume(run.trainer, saved)
    return run.saver()


def why_not_applicable(cfg: RunConfig) -> str | None:
    """Why this cell's weighting cannot train its architecture, or None (FastCAR always applies)."""
    if cfg.kind != "mtl":
        return None
    return not_applicable(ARCHITECTURES.entry(cfg.architecture), WEIGHTINGS.entry(cfg.weighting))


def structure(architecture: str, module: torch.nn.Module, img_size: int) -> dict[str, Any]:
    """What a cell's model shares: backbone and shared parameter counts, and for TreeMTL's tree models the branch
    point, the layout and the backbone's MACs."""
    decoders = sum(p.numel() for p in module.decoders.parameters())
    out: dict[str, Any] = {
        "backbone_params": sum(p.numel() for p in module.parameters()) - decoders,
        "shared_params": sum(p.numel() for p in module.get_share_params())}
    k = ARCHITECTURES.entry(architecture).trait("branch_point")
    if k is not None:
        from mtlbench.treemtl.costs import branch_layout, resnet18_stage_costs, tree_cost
        from mtlbench.treemtl.layouts import layout_key

        task_num = len(module.task_name)
        out.update(branch_point=int(k), layout=layout_key(branch_layout(k, task_num)),
                   backbone_macs=float(tree_cost(k, resnet18_stage_costs(img_size), task_num).macs))
    return out


#: How each kind of run builds its trainer (``RunConfig.kind``).
RUN_KINDS: dict[str, Callable[[RunRecord, ProgressFn | None], EpochFn | None]] = {
    "mtl": train_mtl, "fastcar": train_fastcar}


def run_cell(cfg: RunConfig, table: Any, data: Any, *, sweep: str | None = None, concurrency: int = 1,
             progress: ProgressFn | None = None, checkpoint_dir: Path | None = None,
             executor: str | None = None) -> CellResult:
    """Train one run on ``data`` (the :class:`~mtlbench.data.DeviceData` of ``table``) and return its records."""
    run = RunRecord(cfg, table, data, sweep=sweep, concurrency=concurrency, checkpoint_dir=checkpoint_dir,
                    executor=executor)
    reason = why_not_applicable(cfg)
    if reason is not None:
        run.row.update(status="not_applicable", message=reason)
        return run.finish()
    try:
        on_epoch = RUN_KINDS[cfg.kind](run, progress)
        run.set_up()
        faults.hit("cell_start", cell=cfg.cell_name)
        assert run.trainer is not None
        run.trainer.fit(on_epoch=on_epoch)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 — failure isolation: any error becomes this cell's record
        run.fail(exc)
    return run.finish()
