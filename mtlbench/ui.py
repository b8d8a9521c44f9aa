"""Rich live progress and result tables for the CLI."""

from __future__ import annotations

import math
import statistics
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from mtlbench.config import RunConfig, cell_name, shown_architecture
from mtlbench.run_record import CellResult
from mtlbench.sweep.runner import Plan, SweepOutcome, SweepUI


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def result_table(rows: list[dict], title: str) -> Table:
    """Best-validation-epoch test metrics of finished runs."""
    table = Table(title=title, header_style="bold")
    for col, justify in (("run", "left"), ("status", "left"), ("accuracy %", "right"), ("MAPE %", "right"),
                         ("MSE", "right"), ("MAE", "right"), ("within 8 %", "right"), ("best epoch", "right"),
                         ("time s", "right")):
        # The run name stays whole when the console is narrow; the number columns give way first.
        table.add_column(col, justify=justify, no_wrap=col == "run")  # type: ignore[arg-type]
    for r in rows:
        # a scaling other than none tells apart the cells of a target_scaling axis
        scaling = r.get("target_scaling") if r.get("target_scaling") not in (None, "none") else None
        arch = shown_architecture(r["architecture"], r.get("variant")) if r["kind"] == "mtl" else None
        name = escape(cell_name(arch, r.get("weighting"), r.get("decoder"), scaling))
        if r.get("setting"):
            name += escape(f" [{r['setting']}]")
        if r.get("seed") not in (None, 0):
            name += f" seed {r['seed']}"
        colour = {"ok": "green", "failed": "red", "diverged": "yellow", "not_applicable": "dim"}.get(r["status"], "white")
        table.add_row(name, f"[{colour}]{r['status']}[/]", _fmt(r.get("best_accuracy")), _fmt(r.get("best_mape")),
                      _fmt(r.get("best_mse"), 1), _fmt(r.get("best_mae")), _fmt(r.get("best_within8"), 1),
                      _fmt(r.get("best_epoch")), _fmt(r.get("total_s"), 1))
    return table


def seed_summary(rows: list[dict]) -> str | None:
    """"over the 3 seeds run now: accuracy 84.90 ± 5.20 [78.10-90.30] %, ...": the runs that finished ok, mean ±
    sample std [min-max]; None with fewer than two."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if len(ok) < 2:
        return None
    parts = []
    for key, label, unit in (("best_accuracy", "accuracy", " %"), ("best_mape", "MAPE", " %"),
                             ("total_s", "time", " s")):
        values = [float(r[key]) for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
        if len(values) < 2:
            continue
        mean, std = statistics.fmean(values), statistics.stdev(values)
        parts.append(f"{label} {mean:.2f} ± {std:.2f} [{min(values):.2f}-{max(values):.2f}]{unit}")
    return f"over the {len(ok)} seeds run now: " + ", ".join(parts) if parts else None


class RichSweepUI(SweepUI):
    """Overall bar with ETA and counts of ok / failed / diverged, and one epoch bar per running cell (several at
    once under the local and Ray executors) with its latest validation metrics."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.counts = {"ok": 0, "failed": 0, "diverged": 0, "not_applicable": 0}
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                             console=console)
        self.overall = None
        self.cells: dict[str, Any] = {}   # cell label -> its bar

    def start(self, plan: Plan) -> None:
        self.console.print(f"{len(plan.cells)} cells: {len(plan.done)} already finished, "
                           f"{len(plan.pending)} to run")
        self.bars.start()
        self.overall = self.bars.add_task("sweep", total=len(plan.pending), info=self._counts())

    def _counts(self) -> str:
        c = self.counts
        text = f"[green]ok {c['ok']}[/] [red]failed {c['failed']}[/] [yellow]diverged {c['diverged']}[/]"
        return text + (f" [dim]n/a {c['not_applicable']}[/]" if c["not_applicable"] else "")

    def cell_start(self, cfg: RunConfig) -> None:
        # a run's own epochs: FastCAR may train longer than the grid ([fastcar.protocol])
        self.cells[cfg.label] = self.bars.add_task(escape(cfg.label[:48]), total=cfg.protocol.epochs, info="")

    def progress(self, event: str, info: dict[str, Any]) -> None:  # type: ignore[override]
        bar = self.cells.get(info.get("cell", ""))
        if event == "label_search":   # FastCAR's one-epoch test
            verdict = "[green]accepted[/]" if info["accepted"] else "[yellow]too steep[/]"
            self.bars.console.print(f"label search attempt {info['attempt']}: gap {info['gap']:.2f}, mean |grad| "
                                    f"{info['mean_grad']:.4f} -> {verdict} ({info['seconds']:.1f} s)")
        elif event == "epoch" and bar is not None:
            self.bars.update(bar, completed=info["epoch"], info=(
                f"loss {info['train_loss']:.4g}  val acc {info['val_accuracy']:.1f}%  MAPE {info['val_mape']:.1f}%"))

    def cell_done(self, result: CellResult) -> None:
        label = RunConfig.from_json(result.row["config_json"]).label if result.row.get("config_json") else None
        if label in self.cells:
            self.bars.remove_task(self.cells.pop(label))
        self.counts[result.status] = self.counts.get(result.status, 0) + 1
        self.bars.advance(self.overall)
        self.bars.update(self.overall, info=self._counts())
        if result.status == "not_applicable":
            pass   # counted on the sweep's bar; the reason is in the record and the report
        elif result.status != "ok":
            self.bars.console.print(f"[red]{result.status}[/] {result.run_id}: {result.message}")
        elif result.row.get("resumed_from_epoch"):
            self.bars.console.print(f"resumed {result.run_id} from its epoch-{result.row['resumed_from_epoch']} "
                                    f"checkpoint{': ' + result.message if result.message else ''}")
        elif result.message:
            self.bars.console.print(f"note {result.run_id}: {result.message}")

    def finish(self, outcome: SweepOutcome) -> None:
        self.bars.stop()
