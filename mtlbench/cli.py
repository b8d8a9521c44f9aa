"""The ``mtlbench`` command line (Typer + Rich)."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtlbench.errors import ConfigError, DataWarning, MtlbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="Benchmark multi-task learning (classify + regress a property) and FastCAR, through LibMTL.")
data_app = typer.Typer(no_args_is_help=True, help="Fetch, inspect or synthesise data sets.")
app.add_typer(data_app, name="data")
# Redirected to a file, Rich would lay tables out for 80 columns and cut the numbers; a log has room.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140)
err_console = Console(stderr=True)

DATA_HELP = ("data set: 'default' (embedded synthetic set, no network), 'steel' (fetched with `mtlbench data "
             "fetch`), a folder in the published layout, or a .csv / .xlsx / .parquet table")
OVERLAP_HELP = "allow an image in two splits (same path or same file content); otherwise an error"


def _cache(cache_dir: Optional[Path]) -> Optional[str]:
    return str(cache_dir) if cache_dir else None


# -- data ---------------------------------------------------------------------------------------------------------
@data_app.command("fetch")
def data_fetch(
    url: str = typer.Option(None, help="archive URL (https://, file://) or local path; default: the public repository"),
    dest: Optional[Path] = typer.Option(None, help="target folder; default: <cache>/datasets/advanced-steel-property"),
    cache_dir: Optional[Path] = typer.Option(None, envvar="MTLBENCH_CACHE", help="cache folder"),
    force: bool = typer.Option(False, help="download again even if a verified copy exists"),
) -> None:
    """Download the Advanced Steel Property data set, verify it (3 sheets, 4536 images) and unpack it."""
    from mtlbench.data import default_cache_dir
    from mtlbench.data.fetch import DEFAULT_URL, fetch

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = dest or root / "datasets" / "advanced-steel-property"
    path = fetch(url or DEFAULT_URL, target, force=force)
    console.print(f"data set ready at [bold]{path}[/] (use --data steel or --data {path})")


@data_app.command("info")
def data_info(
    path: str = typer.Argument(..., help=DATA_HELP),
    batch_size: Optional[int] = typer.Option(None, min=1, help="also warn about classes with fewer training "
                                             "images than this batch size"),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    cache_dir: Optional[Path] = typer.Option(None, envvar="MTLBENCH_CACHE", help="cache folder"),
) -> None:
    """Per-split, per-class image counts, target min / mean / max, and the data checks' findings."""
    from mtlbench.data import summarize
    from mtlbench.data.checks import check_report
    from mtlbench.data.load import DataRef, load_data

    ref = DataRef(path, {"allow_overlap": True} if allow_overlap else {}, cache_dir=_cache(cache_dir))
    # the checks' section below lists the warnings, after the counts
    table, _ = load_data(ref, batch_size=batch_size, show_warnings=False)
    frame = summarize(table)
    out = Table(title=f"{table.name} ({len(table.frame)} images, {table.num_classes} classes, "
                      f"fingerprint {table.fingerprint()})")
    for col in frame.columns:
        out.add_column(str(col), justify="right" if frame[col].dtype.kind in "if" else "left")
    for _, row in frame.iterrows():
        out.add_row(*[f"{v:.1f}" if isinstance(v, float) else str(v) for v in row])
    console.print(out)
    colour = {"warning": "yellow", "ok": "green", "info": "default"}
    for level, text in check_report(table, batch_size):
        console.print(f"[{colour[level]}]{'checks passed' if level == 'ok' else level}:[/] {escape(text)}",
                      highlight=False, soft_wrap=True)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="folder to write (published layout: sheets + class folders)"),
    image_size: int = typer.Option(64, "--image-size", help="image side in pixels"),
    per_class: str = typer.Option("30,6,6", help="images per class for train,valid,test"),
    seed: int = typer.Option(0, help="random seed (same seed, same data)"),
) -> None:
    """Write a deterministic synthetic data set in the published layout."""
    from mtlbench.data.synth import write_synthetic

    try:
        counts = tuple(int(x) for x in per_class.split(","))
        assert len(counts) == 3 and min(counts) >= 1
    except (ValueError, AssertionError):
        raise ConfigError(f"--per-class must be three positive integers like 30,6,6, got {per_class!r}") from None
    path = write_synthetic(out, per_class=counts, image_size=image_size, seed=seed)  # type: ignore[arg-type]
    console.print(f"synthetic data set written to [bold]{path}[/]")


# -- fastcar ------------------------------------------------------------------------------------------------------
def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        seeds = ()
    if not seeds:
        raise ConfigError(f"--seeds must be integers separated by commas, like 0,1,2; got {text!r}")
    return seeds


@app.command()
def fastcar(
    data: str = typer.Option("default", help=DATA_HELP),
    epochs: int = typer.Option(100, help="training epochs (the paper: 100)"),
    batch_size: int = typer.Option(32, help="batch size (not stated in the paper)"),
    img_size: int = typer.Option(224, help="image side; 224 = native, use 64 on a CPU"),
    seeds: str = typer.Option("0", "--seeds", "--seed", help="random seed(s), e.g. 0 or 0,1,2: one run per seed"),
    gap: float = typer.Option(50.0, help="hardness units between consecutive shifted class ranges"),
    max_attempts: int = typer.Option(5, help="one-epoch-test attempts before continuing with the best"),
    preset: str = typer.Option("paper", help="paper (the paper's settings) or steady (BatchNorm statistics "
                                             "re-estimated on 16 training batches before each evaluation)"),
    label_scale: Optional[str] = typer.Option(None, help="hybrid labels in hardness units (raw, the paper's) or "
                                                         "in [-1, 1] (unit); overrides the preset"),
    bn_reestimate_batches: Optional[int] = typer.Option(
        None, help="re-estimate BatchNorm statistics on N training batches before each evaluation (0: as trained, "
                   "the paper's); overrides the preset"),
    pretrained: bool = typer.Option(False, help="start from torchvision's ImageNet weights (local torch cache)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    max_steps: Optional[int] = typer.Option(None, help="cap on training steps per epoch (quick runs)"),
    amp: bool = typer.Option(False, help="bf16 autocast (CUDA, or a CPU with native bf16); losses and metrics stay float32"),
    channels_last: bool = typer.Option(False, help="channels-last memory format"),
    compile: bool = typer.Option(False, help="torch.compile the model (CPU: needs a C++ compiler)"),
    out: Path = typer.Option(Path("results/fastcar"), help="results folder"),
    force: bool = typer.Option(False, help="run again a seed whose run has finished"),
    retry_failed: bool = typer.Option(False, help="run again a seed whose run failed"),
    checkpoint_every: int = typer.Option(1, help="epochs between mid-run checkpoints (0: none)"),
    keep_checkpoints: bool = typer.Option(False, help="keep the last checkpoint after the run finishes"),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP),
    cache_dir: Optional[Path] = typer.Option(None, envvar="MTLBENCH_CACHE", help="cache folder"),
) -> None:
    """Run FastCAR: label transformation, one-epoch test, single-task ResNet-18 regressor, inverse transform.

    Through the sweep driver: a finished run is skipped, an interrupted one resumes from its checkpoint."""
    from mtlbench.config import FASTCAR_PRESETS, FastCARSettings, TrainingProtocol
    from mtlbench.sweep.runner import run_sweep
    from mtlbench.sweep.spec import SweepSpec
    from mtlbench.ui import RichSweepUI, result_table, seed_summary

    if preset not in FASTCAR_PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; allowed: {', '.join(FASTCAR_PRESETS)}")
    preset_protocol, preset_fastcar = (dict(d) for d in FASTCAR_PRESETS[preset])
    if bn_reestimate_batches is not None:
        preset_protocol["bn_reestimate_batches"] = bn_reestimate_batches
    if label_scale is not None:
        preset_fastcar["label_scale"] = label_scale
    protocol = TrainingProtocol(epochs=epochs, batch_size=batch_size, img_size=img_size, pretrained=pretrained,
                        device=device, max_steps_per_epoch=max_steps, amp=amp, channels_last=channels_last,
                        compile=compile, checkpoint_every=checkpoint_every, **preset_protocol)
    spec = SweepSpec(name="fastcar", data={"source": data, **({"allow_overlap": True} if allow_overlap else {})},
                     protocol=protocol, architectures=(), weightings=(), decoders=(), seeds=_seeds(seeds),
                     fastcar=FastCARSettings(gap=gap, max_attempts=max_attempts, **preset_fastcar))
    if pretrained:
        from mtlbench.models.encoder import load_imagenet_state
        load_imagenet_state()   # fail now, with the clear message, not after decoding the data
    outcome = run_sweep(spec, out, force=force, retry_failed=retry_failed, cache_dir=_cache(cache_dir),
                        ui=RichSweepUI(console), keep_checkpoints=keep_checkpoints)
    rows = [r.row for r in outcome.results]
    if rows:
        console.print(result_table(rows, "FastCAR: test metrics at the best validation epoch"))
        if (line := seed_summary(rows)) is not None:
            console.print(line + " (mean ± sample std [min-max], test metrics at the best validation epoch)",
                          highlight=False)
    for cell in outcome.plan.done:
        console.print(f"seed {cell.config.seed}: already finished (run {cell.run_id}); --force runs it again")
    console.print(f"records in [bold]{out}[/]")
    if not outcome.all_ok:
        bad = [r for r in outcome.results if r.status != "ok"]
        raise MtlbenchError(f"FastCAR run {bad[0].status}: {bad[0].message}")


# -- sweep --------------------------------------------------------------------------------------------------------
@app.command()
def sweep(
    spec: str = typer.Argument(..., help="a TOML spec path, or a shipped spec name (paper, demo, smoke, landscape, tree, ...)"),
    only: Optional[List[str]] = typer.Option(None, help="filter cells, e.g. arch=MTAN,weighting=IMTL|EW"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and how many are finished; run nothing"),
    out: Optional[Path] = typer.Option(None, help="results folder; default results/<spec name>"),
    force: bool = typer.Option(False, help="re-run finished cells"),
    retry_failed: bool = typer.Option(False, help="re-run cells recorded as failed (each from its last checkpoint, "
                                      "if it has one) or diverged (from the start)"),
    resume_diverged: bool = typer.Option(False, help="keep a diverged cell's checkpoint and resume it on "
                                         "--retry-failed, instead of starting over"),
    executor: str = typer.Option("sequential", help="sequential, local or ray"),
    workers: int = typer.Option(1, help="worker processes (local executor)"),
    gpus: Optional[str] = typer.Option(None, help="GPU ids to use, e.g. 0,1 (default: all visible)"),
    workers_per_gpu: int = typer.Option(1, help="cells at once per GPU (local executor)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (ray executor); default: local"),
    device: Optional[str] = typer.Option(None, help="override the spec's device: auto, cpu, cuda, cuda:N"),
    data: Optional[str] = typer.Option(None, help="override the spec's data source: default, steel, a folder or a table"),
    checkpoint_every: Optional[int] = typer.Option(None, help="epochs between mid-run checkpoints (0: none); "
                                                   "default: the spec's protocol.checkpoint_every (1)"),
    keep_checkpoints: bool = typer.Option(False, help="keep each cell's last checkpoint after it finishes"),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="checkpoint folder (default <out>/checkpoints; "
                                                  "shared storage for a Ray cluster)"),
    cpus_per_cell: Optional[int] = typer.Option(None, help="CPUs a Ray task declares (default: 1 with GPUs, "
                                                "else a whole node)"),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help=OVERLAP_HELP + " (the spec's "
                                       "data.allow_overlap)"),
    cache_dir: Optional[Path] = typer.Option(None, envvar="MTLBENCH_CACHE", help="cache folder"),
) -> None:
    """Train the grid of architectures x weightings x decoders (and FastCAR) from a spec; resumable."""
    from mtlbench.sweep.executors import EXECUTORS
    from mtlbench.sweep.runner import dry_run as plan_only, run_sweep
    from mtlbench.sweep.spec import load_spec, parse_filters
    from mtlbench.ui import RichSweepUI, result_table

    s = load_spec(spec).with_overrides(source=data, allow_overlap=allow_overlap, device=device,
                                       checkpoint_every=checkpoint_every)
    filters = parse_filters(only)
    EXECUTORS.entry(executor)
    target = out or Path("results") / s.name
    if dry_run:
        cells = plan_only(s, target, filters=filters, force=force, retry_failed=retry_failed,
                          cache_dir=_cache(cache_dir), checkpoint_dir=checkpoint_dir).cells
        t = Table(title=f"sweep {s.name}: {len(cells)} cells, {sum(c.done for c in cells)} finished")
        for col in ("#", "run", "done", "recorded", "checkpoint"):
            t.add_column(col)
        for i, c in enumerate(cells, 1):
            t.add_row(str(i), escape(c.config.label), "yes" if c.done else "", c.recorded or "",
                      "resumes from it" if c.resumable else "")
        console.print(t)
        return
    options = {"workers": workers, "workers_per_gpu": workers_per_gpu, "address": address,
               "gpus": [int(g) for g in gpus.split(",")] if gpus else None, "cpus_per_cell": cpus_per_cell}
    outcome = run_sweep(s, target, filters=filters, force=force, retry_failed=retry_failed, executor=executor,
                        executor_options=options, cache_dir=_cache(cache_dir),
                        ui=RichSweepUI(console), keep_checkpoints=keep_checkpoints,
                        checkpoint_dir=checkpoint_dir, resume_diverged=resume_diverged)
    rows = [r.row for r in outcome.results]
    if rows:
        shown = sorted(rows, key=lambda r: (r["kind"] != "fastcar", -(r.get("best_accuracy") or -1)))
        console.print(result_table(shown[:15], f"sweep {s.name}: top cells by accuracy (of {len(rows)} run now)"))
    c = outcome.counts()
    console.print(f"{len(outcome.plan.cells)} cells: {len(outcome.plan.done)} were finished before, ran "
                  f"{len(rows)}: [green]{c['ok']} ok[/], [red]{c['failed']} failed[/], "
                  f"[yellow]{c['diverged']} diverged[/]"
                  + (f", {c['not_applicable']} not applicable" if c["not_applicable"] else "")
                  + f". Results in [bold]{target}[/]")
    if not outcome.all_ok:
        raise typer.Exit(1)


# -- list ---------------------------------------------------------------------------------------------------------
@app.command("list")
def list_methods() -> None:
    """The architectures, weightings, decoders and executors, with their papers, who implements each, and their
    default hyper-parameters."""
    from mtlbench.methods.architectures import ARCHITECTURES
    from mtlbench.methods.weightings import WEIGHTINGS
    from mtlbench.models.decoders import DECODERS
    from mtlbench.sweep.executors import EXECUTORS

    for registry in (ARCHITECTURES, WEIGHTINGS, DECODERS, EXECUTORS):
        t = Table(title=f"{registry.kind}s ({len(registry)})", show_lines=False)
        for col in ("name", "what", "reference", "implemented by", "defaults"):
            t.add_column(col, overflow="fold")
        for e in registry:
            t.add_row(e.name, e.summary, e.reference, e.library or "mtlbench", ", ".join(
                f"{k}={v}" + (f" (one of {'|'.join(map(str, e.choices[k]))})" if k in e.choices else "")
                for k, v in e.defaults.items()))
        console.print(t)


# -- report -------------------------------------------------------------------------------------------------------
@app.command()
def report(
    results: List[Path] = typer.Argument(..., help="one or more results folders (merged)"),
    out: Optional[Path] = typer.Option(None, help="output folder; default <first results folder>/report"),
    format: Optional[List[str]] = typer.Option(None, "--format", help="png, svg, md, csv, html (repeatable)"),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="accuracy, mse, mape, time (repeatable)"),
) -> None:
    """Render the paper's heatmaps and Table 1 (PNG, SVG, Markdown, CSV, one self-contained HTML)."""
    from mtlbench.report.render import render_report
    from mtlbench.report.tables import summary_rich_table

    kwargs = {}
    if format:
        kwargs["formats"] = tuple(format)
    if metric:
        kwargs["metrics"] = tuple(metric)
    result = render_report(list(results), out, **kwargs)
    console.print(summary_rich_table(result.summary))
    for line in result.missing:
        console.print(f"[yellow]note:[/] {line}")
    console.print(f"report written to [bold]{result.out_dir}[/] ({len(result.files)} files; open report.html)")


# -- recommend ----------------------------------------------------------------------------------------------------
@app.command()
def recommend(
    results: List[Path] = typer.Argument(..., help="one or more results folders (merged) holding the two-task "
                                         "models Tree-b0 .. Tree-b4 and HPS (branch points b = 0 .. 5)"),
    weighting: str = typer.Option("EW", help="the weighting whose pair runs build the pair table"),
    decoder: str = typer.Option("decoder1", help="the decoder whose pair runs build the pair table"),
    target_scaling: str = typer.Option("none", help="the target scaling of the pair runs: none or standard"),
    budget_backbones: Optional[float] = typer.Option(None, "--budget-backbones", help="budget C: backbone MACs <= "
                                                     "C x one ResNet-18 trunk (2 = independent models)"),
    max_gmacs: Optional[float] = typer.Option(None, "--max-gmacs", help="budget: backbone MACs <= G x 1e9, at the "
                                              "runs' image side"),
    max_mparams: Optional[float] = typer.Option(None, "--max-mparams", help="budget: backbone parameters <= "
                                                "P x 1e6"),
    top_k: int = typer.Option(3, "--top-k", help="recommend (and with --verify train) the K best layouts that fit"),
    blocks: str = typer.Option("coarse", help="branching blocks: coarse (stem + 4 ResNet stages) or fine (stem + "
                               "8 basic blocks; needs a pair table with fine branch points)"),
    cls_metrics: str = typer.Option("accuracy", help="validation metrics of task cls, comma-separated: accuracy"),
    reg_metrics: str = typer.Option("mae,mape", help="validation metrics of task reg, comma-separated: mae, "
                                    "mape, mse (lower is better)"),
    plan: bool = typer.Option(False, "--plan", help="list the two-task cells still missing and write them as a "
                              "sweep spec (<out>/treemtl/plan.toml) for `mtlbench sweep`; rank nothing"),
    verify: bool = typer.Option(False, "--verify", help="train the recommended layouts with an unused seed into "
                                "the first results folder and report the Spearman and Pearson correlations of "
                                "predicted and trained scores"),
    data: str = typer.Option("default", help="data set of --plan's spec and of --verify's runs (the pair runs' "
                             "data: " + DATA_HELP + ")"),
    device: Optional[str] = typer.Option(None, help="--verify: override the runs' device (auto, cpu, cuda, cuda:N)"),
    out: Optional[Path] = typer.Option(None, help="tables go to <out>/treemtl/; default: the first results folder"),
    cache_dir: Optional[Path] = typer.Option(None, envvar="MTLBENCH_CACHE", help="cache folder"),
) -> None:
    """TreeMTL's architecture recommender: the pair table from trained two-task models, layouts ranked by their
    estimated accuracy under a compute budget, and optionally trained to check the ranking.

    Writes pair_table.parquet, task_weights.parquet and recommendations.parquet into <out>/treemtl/."""
    from mtlbench.treemtl import from_results as fr
    from mtlbench.treemtl.display import (correlation_lines, pair_rich_table, ranking_rich_table,
                                          weights_rich_table)

    budget = fr.Budget(backbones=budget_backbones, gmacs=max_gmacs, mparams=max_mparams)
    if blocks not in fr.BLOCKS:
        raise ConfigError(f"--blocks must be one of {', '.join(fr.BLOCKS)}, got {blocks!r}")
    if top_k < 1:
        raise ConfigError(f"--top-k must be a positive integer, got {top_k}")
    metrics = fr.parse_metrics(cls_metrics, reg_metrics)
    target = out or results[0]
    sel = fr.select_runs(results, weighting, decoder, target_scaling, allow_empty=plan)
    for line in sel.notes:
        console.print(f"[yellow]note:[/] {escape(line)}", highlight=False, soft_wrap=True)
    n_cells = len(fr.COARSE_ARCHITECTURES) * len(sel.seeds)
    console.print(f"pair runs of {sel.label}: {n_cells - len(sel.missing)} of {n_cells} cells finished ok "
                  f"(6 models x seeds {', '.join(map(str, sel.seeds))})", highlight=False)
    for cell in sel.missing:
        console.print(f"[yellow]missing:[/] {escape(cell.describe())}", highlight=False, soft_wrap=True)
    if plan:
        path = fr.write_plan(sel, target, data)
        if path is None:
            console.print("nothing is missing: no plan written")
        else:
            console.print(f"plan written to [bold]{path}[/] ({escape(sel.protocol_source)}); run it with "
                          f"`mtlbench sweep {path} --out {results[0]}`", highlight=False, soft_wrap=True)
        return
    pair = fr.build_pair_table(sel, metrics)
    console.print(pair_rich_table(pair))
    fr.write_tables(target, pair)   # the pair table even when the ranking below cannot be made
    ranking = fr.rank_layouts(pair, budget=budget, top_k=top_k, blocks=blocks)
    console.print(weights_rich_table(ranking))
    if not ranking.recommended:
        fr.write_tables(target, pair, ranking)
        console.print(ranking_rich_table(ranking))
        raise ConfigError(f"no layout fits the budget {ranking.budget.label} (the cheapest, HPS, needs "
                          f"{ranking.one_backbone_macs / 1e9:.3g} GMACs, {ranking.one_backbone_params / 1e6:.3g} M "
                          f"params)")
    if len(ranking.recommended) < top_k:
        console.print(f"[yellow]note:[/] only {len(ranking.recommended)} layout(s) fit the budget "
                      f"{ranking.budget.label}, fewer than --top-k {top_k}", highlight=False)
    verification = None
    if verify:
        from mtlbench.ui import RichSweepUI

        verification = fr.verify(pair, ranking, results[0], data=data, cache_dir=_cache(cache_dir), device=device,
                                 ui=RichSweepUI(console))
    console.print(ranking_rich_table(ranking, verification))
    if verification is not None:
        for line in correlation_lines(verification):
            console.print(escape(line), highlight=False, soft_wrap=True)
    paths = fr.write_tables(target, pair, ranking, verification)
    console.print(f"tables written to [bold]{paths[0].parent}[/]: {', '.join(p.name for p in paths)}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Data warnings as one ``warning:`` line on the console, like the report's notes; others as Python shows them."""
    if issubclass(category, DataWarning):
        console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    # Worker processes (local executor) inherit these: glibc then keeps freed gradient-sized blocks instead of
    # unmapping them, which halves the step time of gradient weightings on a CPU (README, Performance).
    from mtlbench.heap import KEEP, keep_freed_blocks

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", KEEP)
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", KEEP)
    keep_freed_blocks()   # this process too (glibc read the variables before Python started)
    warnings.showwarning = _show_warning
    try:
        app()
    except MtlbenchError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]: finished runs are kept; run the same command to resume")
        sys.exit(130)
