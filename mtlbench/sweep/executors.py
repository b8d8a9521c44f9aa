"""Executors run a sweep's cells and hand each :class:`CellResult` to the driver, which alone writes the store.

- ``sequential`` (default): in this process, one cell after another, sharing the decoded data set.
- ``local``: ``--workers N`` separate processes (spawned); with GPUs, worker ``i`` uses GPU ``i % n_gpus``.
- ``ray``: one Ray task per cell with its CPU / GPU resources declared (``pip install mtlbench[ray]``).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from mtlbench.config import RunConfig
from mtlbench.data.load import DataRef, load_data
from mtlbench.errors import ConfigError
from mtlbench.heap import keep_freed_blocks
from mtlbench.memory import freeze_long_lived
from mtlbench.registry import Registry
from mtlbench.run_record import CellResult, config_row
from mtlbench.runs import run_cell
from mtlbench.train.loop import ProgressFn

ResultFn = Callable[[CellResult], None]
StartFn = Callable[[RunConfig], None]


@dataclass
class SweepContext:
    name: str
    data_ref: DataRef
    table: Any = None          # loaded in the driver (sequential executor reuses it)
    data: Any = None
    device: str = "auto"
    checkpoint_dir: str | None = None   # where cells keep mid-run checkpoints (shared storage on a cluster)

    def cell_options(self, executor: str, concurrency: int = 1) -> dict[str, Any]:
        """The keyword arguments of :func:`~mtlbench.runs.run_cell` every executor passes."""
        return {"sweep": self.name, "concurrency": concurrency, "executor": executor,
                "checkpoint_dir": Path(self.checkpoint_dir) if self.checkpoint_dir else None}


class Executor(Protocol):
    def run(self, cells: list[RunConfig], ctx: SweepContext, on_start: StartFn, on_result: ResultFn,
            progress: ProgressFn | None = None) -> None: ...


EXECUTORS: Registry = Registry("executor")

#: Events a worker sends to the driver's view (per-step events stay in the worker: one message per step would cost
#: more than it shows).
RELAYED = ("epoch", "label_search")


class CellEvents:
    """A cell's progress callback that tags each event with the cell's label and puts it on ``queue`` (a
    multiprocessing manager's queue, or Ray's actor-backed queue): picklable, so it travels to the worker."""

    def __init__(self, queue: Any, cell: str) -> None:
        self.queue, self.cell = queue, cell

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event in RELAYED:
            self.queue.put((event, {**info, "cell": self.cell}))


def tagged(progress: ProgressFn | None, cell: str) -> ProgressFn | None:
    """``progress`` with the cell's label added to each event (the view keeps one bar per running cell)."""
    if progress is None:
        return None
    return lambda event, info: progress(event, {**info, "cell": cell})


@EXECUTORS.register("sequential", summary="one cell after another in this process (default)")
class SequentialExecutor:
    def __init__(self, **_: Any) -> None:
        pass

    def run(self, cells, ctx, on_start, on_result, progress=None):
        freeze_long_lived()
        try:
            for cfg in cells:
                on_start(cfg)
                on_result(run_cell(cfg, ctx.table, ctx.data, progress=tagged(progress, cfg.label),
                                   **ctx.cell_options("sequential")))
        finally:   # this process may live on (a notebook, a test session): what it frees later is collected again
            gc.unfreeze()


# -- local processes ----------------------------------------------------------------------------------------------
_WORKER: dict[Any, Any] = {}   # per worker process: the data it loaded once (not shared with the driver)


def worker_data(ref: DataRef, device: str) -> tuple[Any, Any]:
    """The data set in this worker process, loaded (memory-mapped from the decode cache) on first use."""
    from mtlbench.environment import resolve_device

    key = (ref, device)
    if _WORKER.get("data_key") != key:   # one data set per worker: a new sweep's replaces the last
        dev = resolve_device(device)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)
        _WORKER["data"], _WORKER["data_key"] = load_data(ref, dev, show_warnings=False), key
        freeze_long_lived()
    return _WORKER["data"]


def _worker_init(ref: DataRef, device: str, threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    keep_freed_blocks()
    _WORKER["device"] = device
    worker_data(ref, device)


def _worker_run(cfg_json: str, ctx: SweepContext, concurrency: int, events: Any = None) -> CellResult:
    table, data = worker_data(ctx.data_ref, _WORKER["device"])
    cfg = RunConfig.from_json(cfg_json)
    progress = CellEvents(events, cfg.label) if events is not None else None
    return run_cell(cfg, table, data, progress=progress, **ctx.cell_options("local", concurrency))


def drain(events: Any, progress: ProgressFn | None) -> None:
    """Hand every queued worker event to the driver's view, without waiting."""
    if events is None or progress is None:
        return
    while True:
        try:
            event, info = events.get_nowait()
        except Exception:  # noqa: BLE001 — queue.Empty (multiprocessing) or ray.util.queue.Empty
            return
        progress(event, info)


@EXECUTORS.register("local", summary="--workers N separate processes; GPUs assigned round-robin")
class LocalExecutor:
    def __init__(self, workers: int = 2, gpus: list[int] | None = None, workers_per_gpu: int = 1, **_: Any) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.workers, self.gpus, self.workers_per_gpu = workers, gpus, workers_per_gpu

    def _devices(self, ctx: SweepContext) -> list[str]:
        gpus = self.gpus if self.gpus is not None else list(range(torch.cuda.device_count()))
        if ctx.device.startswith("cpu") or not gpus:
            return ["cpu"] * self.workers
        n = max(self.workers, len(gpus) * self.workers_per_gpu)
        return [f"cuda:{gpus[i % len(gpus)]}" for i in range(n)]

    def run(self, cells, ctx, on_start, on_result, progress=None):
        devices = self._devices(ctx)
        per_device = {d: devices.count(d) for d in devices}
        threads = max(1, (mp.cpu_count() or 1) // len(devices))
        spawn = mp.get_context("spawn")
        pools = {d: ProcessPoolExecutor(max_workers=per_device[d], mp_context=spawn, initializer=_worker_init,
                                        initargs=(ctx.data_ref, d, threads)) for d in per_device}
        queue = list(cells)
        running: dict[Future, tuple[RunConfig, str]] = {}
        slots = dict(per_device)
        manager = spawn.Manager() if progress is not None else None   # workers' epoch events reach the view
        events = manager.Queue() if manager is not None else None
        try:
            while queue or running:
                for d in list(slots):
                    while slots[d] > 0 and queue:
                        cfg = queue.pop(0)
                        on_start(cfg)
                        fut = pools[d].submit(_worker_run, cfg.to_json(), _portable(ctx), per_device[d], events)
                        running[fut] = (cfg, d)
                        slots[d] -= 1
                done, _ = wait(list(running), timeout=0.25 if events is not None else None,
                               return_when=FIRST_COMPLETED)
                drain(events, progress)
                for fut in done:
                    cfg, d = running.pop(fut)
                    slots[d] += 1
                    try:
                        on_result(fut.result())
                    except Exception as exc:  # a lost worker: record the cell, go on
                        on_result(lost_worker_result(cfg, ctx, exc))
        finally:
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)
            if manager is not None:
                manager.shutdown()


# -- Ray ----------------------------------------------------------------------------------------------------------
def _ray_run(cfg_json: str, ctx: SweepContext, device: str, threads: int, concurrency: int,
             events: Any = None) -> CellResult:
    """One cell as a Ray task. Ray reuses worker processes, so the data is loaded once per worker."""
    torch.set_num_threads(max(1, threads))
    keep_freed_blocks()
    table, data = worker_data(ctx.data_ref, device)
    cfg = RunConfig.from_json(cfg_json)
    progress = CellEvents(events, cfg.label) if events is not None else None
    return run_cell(cfg, table, data, progress=progress, **ctx.cell_options("ray", concurrency))


@EXECUTORS.register("ray", summary="one Ray task per cell with its CPUs / GPUs declared; --address for a cluster")
class RayExecutor:
    """Each cell is a Ray task; results come back to the driver, which alone writes the store.

    Ray retries a task only when its worker process or node is lost (``max_retries``), never for an exception
    (``retry_exceptions=False``): a cell that fails deterministically is recorded once as failed. A task lost
    beyond its retries is recorded as failed ("worker lost") and the sweep goes on. Cells on other nodes need
    mtlbench installed there and the data source (and checkpoint folder) at the same path."""

    def __init__(self, address: str | None = None, workers_per_gpu: int = 1, cpus_per_cell: int | None = None,
                 max_retries: int = 3, **_: Any) -> None:
        if workers_per_gpu < 1:
            raise ConfigError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
        self.address, self.workers_per_gpu, self.max_retries = address, workers_per_gpu, max_retries
        self.cpus_per_cell = cpus_per_cell

    def run(self, cells, ctx, on_start, on_result, progress=None):
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'mtlbench[ray]'") from None
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False, configure_logging=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address or 'local'}: {exc}") from None
        try:
            self._run(ray, cells, ctx, on_start, on_result, progress)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, cells, ctx, on_start, on_result, progress=None):
        total = ray.cluster_resources()
        gpus = 0.0 if ctx.device.startswith("cpu") else float(total.get("GPU", 0.0))
        if gpus:
            num_gpus, device, concurrency = 1.0 / self.workers_per_gpu, "cuda", self.workers_per_gpu
            num_cpus = self.cpus_per_cell or 1
        else:
            # CPU cells: by default each gets every CPU of the largest node, like the sequential executor.
            num_gpus, device, concurrency = 0.0, "cpu", 1
            node_cpus = max((n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1)
            num_cpus = self.cpus_per_cell or int(node_cpus)
        task = ray.remote(_ray_run).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.max_retries,
                                            retry_exceptions=False)
        # Keep about as many tasks in flight as the cluster can run, so "started" in the progress view is true.
        slots = total.get("GPU", 0.0) * self.workers_per_gpu if gpus else total.get("CPU", 1.0) / num_cpus
        window = max(1, int(slots))
        shipped = ray.put(_portable(ctx))
        events = None
        if progress is not None:   # Ray's own actor-backed queue carries the tasks' epoch events to the view
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
        queue, pending = list(cells), {}
        while queue or pending:
            while queue and len(pending) < window:
                cfg = queue.pop(0)
                on_start(cfg)
                pending[task.remote(cfg.to_json(), shipped, device, int(num_cpus), concurrency, events)] = cfg
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.25 if events is not None else None)
            drain(events, progress)
            for ref in done:
                cfg = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:   # raised inside the task, outside run_cell
                    result = lost_worker_result(cfg, ctx, exc.as_instanceof_cause(), reason="task failed")
                except Exception as exc:  # noqa: BLE001 — worker or node lost beyond its retries
                    result = lost_worker_result(cfg, ctx, exc)
                on_result(result)
        if events is not None:
            drain(events, progress)
            events.shutdown()


def _portable(ctx: SweepContext) -> SweepContext:
    """The context without the driver's loaded data, to send to workers."""
    return SweepContext(ctx.name, ctx.data_ref, device=ctx.device, checkpoint_dir=ctx.checkpoint_dir)


def lost_worker_result(cfg: RunConfig, ctx: SweepContext, exc: BaseException, reason: str = "worker lost"
                       ) -> CellResult:
    """The record of a cell whose worker died (or whose task failed outside ``run_cell``)."""
    from datetime import datetime, timezone

    run_id = cfg.run_id(ctx.table.fingerprint()) if ctx.table is not None else cfg.run_id("unknown")
    row = config_row(cfg, run_id, sweep=ctx.name, status="failed",
                     message=" ".join(f"{reason}: {type(exc).__name__}: {exc}".split())[:500],
                     finished_at=datetime.now(timezone.utc))
    return CellResult(run_id, "failed", row["message"], {"runs": [row]})


def make_executor(name: str, **options: Any) -> Executor:
    return EXECUTORS.get(name)(**options)
