"""Executors run a sweep's cells and hand each :class:`CellResult` to the driver, which alone writes the store.

- ``sequential`` (default): in this process, one cell after another, sharing the decoded data set.
- ``local``: ``--workers N`` separate processes (spawned); with GPUs, worker ``i`` uses GPU ``i % n_gpus``.
- ``ray``: one Ray task per cell with its CPU / GPU resources declared (``pip install mtlbench[ray]``).
"""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol as TypingProtocol

import torch

from mtlbench.config import RunConfig
from mtlbench.errors import ConfigError
from mtlbench.registry import Registry
from mtlbench.runs import CellResult, run_cell
from mtlbench.train.loop import ProgressFn

ResultFn = Callable[[CellResult], None]
StartFn = Callable[[RunConfig], None]


@dataclass(frozen=True)
class DataRef:
    """What a worker needs to load the same data: the source spec, options, image side and cache folder."""

    source: str
    options: dict[str, Any] = field(default_factory=dict)
    side: int = 224
    cache_dir: str | None = None


@dataclass
class SweepContext:
    name: str
    data_ref: DataRef
    table: Any = None          # loaded in the driver (sequential executor reuses it)
    data: Any = None
    device: str = "auto"


class Executor(TypingProtocol):
    def run(self, cells: list[RunConfig], ctx: SweepContext, on_start: StartFn, on_result: ResultFn,
            progress: ProgressFn | None = None) -> None: ...


EXECUTORS: Registry = Registry("executor")


def load_data(ref: DataRef, device: torch.device) -> tuple[Any, Any]:
    from mtlbench.data import DeviceData, resolve_dataset

    table = resolve_dataset(ref.source, cache_dir=ref.cache_dir, table_options=ref.options or None)
    return table, DeviceData.from_table(table, ref.side, device, cache_dir=ref.cache_dir)


@EXECUTORS.register("sequential", summary="one cell after another in this process (default)")
class SequentialExecutor:
    def __init__(self, **_: Any) -> None:
        pass

    def run(self, cells, ctx, on_start, on_result, progress=None):
        for cfg in cells:
            on_start(cfg)
            on_result(run_cell(cfg, ctx.table, ctx.data, sweep=ctx.name, progress=progress))


# -- local processes ----------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}   # per worker process: the data it loaded once (not shared with the driver)


def _worker_init(ref: DataRef, device: str, threads: int) -> None:
    from mtlbench.environment import resolve_device

    torch.set_num_threads(max(1, threads))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    _WORKER["table"], _WORKER["data"] = load_data(ref, dev)


def _worker_run(cfg_json: str, sweep: str, concurrency: int) -> CellResult:
    cfg = RunConfig.from_json(cfg_json)
    return run_cell(cfg, _WORKER["table"], _WORKER["data"], sweep=sweep, concurrency=concurrency)


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
        try:
            while queue or running:
                for d in list(slots):
                    while slots[d] > 0 and queue:
                        cfg = queue.pop(0)
                        on_start(cfg)
                        fut = pools[d].submit(_worker_run, cfg.to_json(), ctx.name, per_device[d])
                        running[fut] = (cfg, d)
                        slots[d] -= 1
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
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


def lost_worker_result(cfg: RunConfig, ctx: SweepContext, exc: BaseException) -> CellResult:
    from datetime import datetime, timezone

    from mtlbench.records.schema import SCHEMA_VERSION

    run_id = cfg.run_id(ctx.table.fingerprint()) if ctx.table is not None else cfg.run_id("unknown")
    row = {"run_id": run_id, "sweep": ctx.name, "kind": cfg.kind, "status": "failed",
           "message": f"worker lost: {type(exc).__name__}: {exc}"[:500], "architecture": cfg.architecture,
           "weighting": cfg.weighting, "decoder": cfg.decoder, "seed": cfg.seed,
           "target_scaling": cfg.target_scaling if cfg.kind == "mtl" else None, "config_json": cfg.to_json(),
           "finished_at": datetime.now(timezone.utc), "schema_version": SCHEMA_VERSION}
    return CellResult(run_id, "failed", row["message"], {"runs": [row]})


def make_executor(name: str, **options: Any) -> Executor:
    return EXECUTORS.get(name)(**options)
