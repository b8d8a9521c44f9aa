"""Drive a sweep: plan the cells, skip finished ones, execute, write each result atomically, consolidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlbench.config import RunConfig
from mtlbench.environment import check_amp, resolve_device
from mtlbench.errors import ConfigError
from mtlbench.records.store import ResultsStore
from mtlbench.run_record import CellResult
from mtlbench.data import decode_images
from mtlbench.data.load import DataRef, load_data
from mtlbench.sweep.executors import SweepContext, make_executor
from mtlbench.sweep.spec import SweepSpec, matches
from mtlbench.train.checkpoint import CheckpointPolicy


@dataclass
class PlannedCell:
    config: RunConfig
    run_id: str
    done: bool
    recorded: str | None = None   # the status of its stored run, where the plan read them
    resumable: bool = False       # pending, with a checkpoint to continue from


@dataclass
class Plan:
    cells: list[PlannedCell]

    @property
    def pending(self) -> list[PlannedCell]:
        return [c for c in self.cells if not c.done]

    @property
    def done(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.done]


@dataclass
class SweepOutcome:
    plan: Plan
    results: list[CellResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "failed": 0, "diverged": 0, "not_applicable": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def all_ok(self) -> bool:
        return all(r.status in ("ok", "not_applicable") for r in self.results)


class SweepUI:
    """Callbacks the CLI implements with Rich; the default does nothing."""

    def start(self, plan: Plan) -> None: ...
    def cell_start(self, cfg: RunConfig) -> None: ...
    def cell_done(self, result: CellResult) -> None: ...
    def progress(self, event: str, info: dict[str, Any]) -> None: ...
    def finish(self, outcome: SweepOutcome) -> None: ...


def plan_sweep(spec: SweepSpec, store: ResultsStore | None, fingerprint: str, *,
               filters: dict[str, set[str]] | None = None, force: bool = False, retry_failed: bool = False,
               read_status: bool = False, checkpoints: CheckpointPolicy | None = None) -> Plan:
    """The cells of ``spec`` and whether each is done; writes nothing. ``store`` None: no results folder yet. The
    stored runs' statuses are read (into :attr:`PlannedCell.recorded`) when ``retry_failed`` needs them, or when
    ``read_status`` asks; with ``checkpoints``, a pending cell that has one is marked :attr:`PlannedCell.resumable`."""
    finished = store.finished() if store is not None else set()
    recorded: dict[str, str] = {}
    settings: dict[str, str] = {}
    if finished:
        runs = store.read("runs")   # type: ignore[union-attr]
        recorded = dict(zip(runs["run_id"], runs["status"]))
        if "setting" in runs:
            settings = {r: s for r, s in zip(runs["run_id"], runs["setting"]) if isinstance(s, str) and s}
    retried = ("failed", "diverged") if retry_failed else ()
    cells = []
    for cfg in spec.cells():
        if filters and not matches(cfg, filters):
            continue
        rid = cfg.run_id(fingerprint)
        if rid in finished and not force and settings.get(rid, "") != cfg.setting:
            # The same settings make the same run, whichever spec asks; its record says where the report shows
            # it (Table 1, or the ablation table), so one run cannot be both.
            def where(s: str) -> str:
                return f"the ablation setting {s}" if s else "a spec's own setting"
            raise ConfigError(f"run {rid} ({cfg.label}) is recorded in {store.root} under "  # type: ignore[union-attr]
                              f"{where(settings.get(rid, ''))}, and this sweep asks for it under {where(cfg.setting)}; "
                              f"write this sweep to another --out folder")
        done = rid in finished and not force and recorded.get(rid) not in retried
        resumable = not done and not force and checkpoints is not None and checkpoints.exists(rid)
        cells.append(PlannedCell(cfg, rid, done=done, recorded=recorded.get(rid), resumable=resumable))
    return Plan(cells)


def dry_run(spec: SweepSpec, out: Path, *, filters: dict[str, set[str]] | None = None, force: bool = False,
            retry_failed: bool = False, cache_dir: str | None = None, checkpoint_dir: Path | None = None) -> Plan:
    """What :func:`run_sweep` would do, read from the data and the results folder (if any); nothing is written."""
    table, _ = load_data(DataRef.from_spec_data(spec.data, spec.protocol.img_size, cache_dir),
                         batch_size=spec.protocol.batch_size)
    store = ResultsStore(out, create=False) if Path(out).is_dir() else None
    root = checkpoint_dir or (store.checkpoints_dir if store is not None else None)
    return plan_sweep(spec, store, table.fingerprint(), filters=filters, force=force, retry_failed=retry_failed,
                      read_status=True, checkpoints=CheckpointPolicy(root) if root else None)


def run_sweep(spec: SweepSpec, out: Path, *, filters: dict[str, set[str]] | None = None, force: bool = False,
              retry_failed: bool = False, executor: str = "sequential", executor_options: dict | None = None,
              cache_dir: str | None = None, ui: SweepUI | None = None, keep_checkpoints: bool = False,
              checkpoint_dir: Path | None = None, resume_diverged: bool = False) -> SweepOutcome:
    """Run the pending cells of ``spec`` into the results folder ``out``.

    Cells save a checkpoint every ``spec.protocol.checkpoint_every`` epochs under ``checkpoint_dir`` (default
    ``out/checkpoints``); an interrupted cell continues from its checkpoint. What happens to a checkpoint once its
    cell is recorded is :class:`~mtlbench.train.checkpoint.CheckpointPolicy`'s to say (``keep_checkpoints``,
    ``resume_diverged``). Overrides of the spec (device, data, checkpoint frequency) are applied by
    :meth:`SweepSpec.with_overrides` before this is called."""
    ui = ui or SweepUI()
    store = ResultsStore(out)
    ref = DataRef.from_spec_data(spec.data, spec.protocol.img_size, cache_dir)
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else store.checkpoints_dir
    policy = CheckpointPolicy(ckpt_root, spec.protocol.checkpoint_every, keep_checkpoints)
    with store.lock():
        store.clean_temporaries()
        policy.clean_temporaries()
        dev = resolve_device(spec.protocol.device)
        check_amp(dev, spec.protocol.amp)
        if executor == "sequential":
            table, data = load_data(ref, dev, batch_size=spec.protocol.batch_size)
        else:   # decode once here; workers memory-map the cache
            table, data = load_data(ref, batch_size=spec.protocol.batch_size)
            decode_images(table, ref.side, ref.cache_dir)
        plan = plan_sweep(spec, store, table.fingerprint(), filters=filters, force=force, retry_failed=retry_failed)
        outcome = SweepOutcome(plan)
        ui.start(plan)
        for cell in plan.pending:
            policy.before_run(cell.run_id, recorded=cell.recorded, force=force, resume_diverged=resume_diverged)
        ctx = SweepContext(name=spec.name, data_ref=ref, table=table, data=data, device=spec.protocol.device,
                           checkpoint_dir=str(ckpt_root.resolve()))

        def on_result(result: CellResult) -> None:
            store.write_cell(result.run_id, result.tables)   # atomic: this cell is now finished for good
            policy.after_run(result.run_id, result.status, resume_diverged=resume_diverged)
            outcome.results.append(result)
            ui.cell_done(result)

        try:
            if plan.pending:
                make_executor(executor, **(executor_options or {})).run(
                    [c.config for c in plan.pending], ctx, ui.cell_start, on_result, ui.progress)
        finally:
            store.consolidate()
        ui.finish(outcome)
    return outcome
