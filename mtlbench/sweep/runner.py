"""Drive a sweep: plan the cells, skip finished ones, execute, write each result atomically, consolidate."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mtlbench.config import RunConfig
from mtlbench.environment import check_amp, resolve_device
from mtlbench.records.store import ResultsStore
from mtlbench.runs import CellResult
from mtlbench.data import DeviceData, decode_images, resolve_dataset
from mtlbench.sweep.executors import DataRef, SweepContext, make_executor
from mtlbench.sweep.spec import SweepSpec, matches
from mtlbench.train.checkpoint import CheckpointPolicy, clean_temporaries, discard


@dataclass
class PlannedCell:
    config: RunConfig
    run_id: str
    done: bool
    recorded: str | None = None   # the status of its stored run, where the plan read them


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
        out = {"ok": 0, "failed": 0, "diverged": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def all_ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)


class SweepUI:
    """Callbacks the CLI implements with Rich; the default does nothing."""

    def start(self, plan: Plan) -> None: ...
    def cell_start(self, cfg: RunConfig) -> None: ...
    def cell_done(self, result: CellResult) -> None: ...
    def progress(self, event: str, info: dict[str, Any]) -> None: ...
    def finish(self, outcome: SweepOutcome) -> None: ...


def data_ref(spec: SweepSpec, cache_dir: str | None) -> DataRef:
    options = {k: v for k, v in spec.data.items() if k != "source"}
    return DataRef(source=str(spec.data["source"]), options=options, side=spec.protocol.img_size,
                   cache_dir=cache_dir)


def plan_sweep(spec: SweepSpec, store: ResultsStore, fingerprint: str, *, filters: dict[str, set[str]] | None = None,
               force: bool = False, retry_failed: bool = False, read_status: bool = False) -> Plan:
    """The cells of ``spec`` and whether each is done. The stored runs' statuses are read (into
    :attr:`PlannedCell.recorded`) when ``retry_failed`` needs them, or when ``read_status`` asks."""
    finished = store.finished()
    recorded: dict[str, str] = {}
    if (retry_failed or read_status) and finished:
        runs = store.read("runs")
        recorded = dict(zip(runs["run_id"], runs["status"]))
    retried = ("failed", "diverged") if retry_failed else ()
    cells = []
    for cfg in spec.cells():
        if filters and not matches(cfg, filters):
            continue
        rid = cfg.run_id(fingerprint)
        done = rid in finished and not force and recorded.get(rid) not in retried
        cells.append(PlannedCell(cfg, rid, done=done, recorded=recorded.get(rid)))
    return Plan(cells)


def run_sweep(spec: SweepSpec, out: Path, *, filters: dict[str, set[str]] | None = None, force: bool = False,
              retry_failed: bool = False, executor: str = "sequential", executor_options: dict | None = None,
              device: str | None = None, cache_dir: str | None = None, ui: SweepUI | None = None,
              checkpoint_every: int | None = None, keep_checkpoints: bool = False,
              checkpoint_dir: Path | None = None, resume_diverged: bool = False) -> SweepOutcome:
    """Run the pending cells of ``spec`` into the results folder ``out``.

    Cells save a checkpoint every ``checkpoint_every`` epochs (default: the spec's) under ``checkpoint_dir``
    (default ``out/checkpoints``); an interrupted cell continues from its checkpoint. A cell that finished ok loses
    its checkpoint unless ``keep_checkpoints``; a failed one keeps it, so that ``retry_failed`` resumes it; a diverged
    one loses it (resuming would reproduce the divergence) unless ``resume_diverged``."""
    ui = ui or SweepUI()
    if device:
        spec = replace(spec, protocol=replace(spec.protocol, device=device))
    if checkpoint_every is not None:
        spec = replace(spec, protocol=replace(spec.protocol, checkpoint_every=checkpoint_every))
    store = ResultsStore(out)
    ref = data_ref(spec, cache_dir)
    with store.lock():
        store.clean_temporaries()
        if checkpoint_dir:
            clean_temporaries(Path(checkpoint_dir))
        dev = resolve_device(spec.protocol.device)
        check_amp(dev, spec.protocol.amp)
        table = resolve_dataset(ref.source, cache_dir=ref.cache_dir, table_options=ref.options or None,
                                batch_size=spec.protocol.batch_size)   # where the data meets the protocol
        if executor == "sequential":
            data = DeviceData.from_table(table, ref.side, dev, cache_dir=ref.cache_dir)
        else:
            decode_images(table, ref.side, ref.cache_dir)  # decode once here; workers memory-map the cache
            data = None
        plan = plan_sweep(spec, store, table.fingerprint(), filters=filters, force=force, retry_failed=retry_failed)
        outcome = SweepOutcome(plan)
        ui.start(plan)
        ckpt_root = Path(checkpoint_dir) if checkpoint_dir else store.checkpoints_dir
        policy = CheckpointPolicy(ckpt_root, spec.protocol.checkpoint_every, keep_checkpoints)
        if force:   # a forced re-run starts over, not from a kept checkpoint
            for cell in plan.pending:
                discard(replace(policy, keep=False), cell.run_id)
        elif not resume_diverged:   # a diverged cell kept from an earlier --resume-diverged run starts over
            for cell in plan.pending:
                if cell.recorded == "diverged":
                    discard(replace(policy, keep=False), cell.run_id)
        ctx = SweepContext(name=spec.name, data_ref=ref, table=table, data=data, device=spec.protocol.device,
                           checkpoint_dir=str(ckpt_root.resolve()))

        def on_result(result: CellResult) -> None:
            store.write_cell(result.run_id, result.tables)   # atomic: this cell is now finished for good
            if result.status == "ok" or (result.status == "diverged" and not resume_diverged):
                discard(policy, result.run_id)
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
