"""The benchmarks' shared timer: lanes of training steps taking turns in one process, the pure ResNet-18 floor
step, the device / size / step arguments with per-device defaults, and the data the benchmarks default to.

speed.py, floor.py and weightings.py import it; nothing here is a benchmark of its own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from mtlbench.data import DeviceData
from mtlbench.environment import resolve_device
from mtlbench.fastcar.model import Regressor
from mtlbench.train.learners import autocast_for
from mtlbench.train.loop import make_adam, sync

REPO = Path(__file__).resolve().parents[1]
STEEL = REPO.parent / "shared" / "datasets" / "advanced-steel-property"


class Lane:
    """One timed training path. Lanes of a case run in alternating blocks of steps, so that every path sees the
    same machine: a shared CPU's speed drifts by 20 % over minutes, more than some of the differences measured.
    Fetching the batch is inside the timed region (it is the baseline's data pipeline)."""

    def __init__(self, step: Callable[..., Any], batches: Callable[[], Iterable[tuple]], device: torch.device) -> None:
        self.step, self.batches, self.device = step, batches, device
        self.it: Iterator[tuple] = iter(batches())
        self.blocks: list[tuple[int, float]] = []   # (steps, seconds) of each timed turn

    def _next(self) -> tuple:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.batches())
            return next(self.it)

    def warm_up(self, n: int) -> None:
        for _ in range(n):
            self.step(*self._next())
        sync(self.device)

    def run(self, n: int) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            self.step(*self._next())
        sync(self.device)
        self.blocks.append((n, time.perf_counter() - t0))

    def images_per_s(self, batch: int) -> float:
        return sum(n for n, _ in self.blocks) * batch / sum(sec for _, sec in self.blocks)


def turn_ratios(lane: Lane, batch: int, ref: Lane, ref_batch: int) -> list[float]:
    """``lane``'s rate over ``ref``'s in each round of turns (the lanes ran their turns back to back): a burst of
    load on a shared machine spoils one round's ratio, not the whole comparison, so their median is robust where
    the ratio of the totals is not."""
    return [(n * batch / sec) / (n_ref * ref_batch / sec_ref)
            for (n, sec), (n_ref, sec_ref) in zip(lane.blocks, ref.blocks, strict=True)]


def interleaved(lanes: list[Lane], steps: int, block: int, warmup: int) -> None:
    """Warm every lane up, then run ``steps`` timed steps on each, ``block`` at a time, round robin."""
    for lane in lanes:
        lane.warm_up(warmup)
    done = 0
    while done < steps:
        n = min(block, steps - done)
        for lane in lanes:
            lane.run(n)
        done += n


def add_timing_args(ap: argparse.ArgumentParser, unit: str, cpu_steps: int) -> None:
    """The arguments the benchmarks share: device, image side, batch, timed steps per ``unit``, steps per turn."""
    ap.add_argument("--device", default="auto")
    ap.add_argument("--img-size", type=int, default=None, help="default: 64 on CPU, 224 on CUDA")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None,
                    help=f"timed steps per {unit} (default: {cpu_steps} CPU, 60 CUDA)")
    ap.add_argument("--block", type=int, default=None,
                    help=f"steps per turn; the {unit}s' lanes take turns (default: 4 CPU, 10 CUDA)")


def timing_settings(args: argparse.Namespace, cpu_steps: int) -> tuple[torch.device, int, int, int]:
    """Device, image side, timed steps and steps per turn, with the defaults of the device's kind."""
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    side = args.img_size or (224 if cuda else 64)
    steps = args.steps or (60 if cuda else cpu_steps)
    block = args.block or (10 if cuda else 4)
    return device, side, steps, block


def data_source(arg: str | None) -> str:
    """``--data`` as given, else the steel set where it sits beside the repository, else the embedded set."""
    return arg or (str(STEEL) if STEEL.exists() else "default")


def resident_batches(data: DeviceData, batch: int, device: torch.device, channels_last: bool
                     ) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """mtlbench's own input path: shuffled (images, labels, targets) batches of the device-resident train split."""
    gen = torch.Generator(device=device)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for x, labels, targets, _ in data.batches("train", batch, shuffle=True, generator=gen, drop_last=True,
                                                   channels_last=channels_last):
            yield x, labels, targets

    return batches


def floor_step(x: torch.Tensor, t: torch.Tensor, device: torch.device, *, channels_last: bool = False,
               amp: bool = False, compile: bool = False) -> Callable[..., None]:
    """The floor: one pure ResNet-18 forward + backward + Adam step of a fresh regressor on the one batch ``x``
    (targets ``t``), with mtlbench's optimiser. The step ignores its arguments, so that a lane can hand it the
    batch the other lanes fetch and time the fetch alike."""
    torch.manual_seed(0)
    model = Regressor().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = make_adam(list(model.parameters()), 1e-3, 0.0)
    forward = torch.compile(model) if compile else model

    def step(*_batch: Any) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_for(device, amp):
            out = forward(x)
        F.mse_loss(out.float(), t).backward()
        opt.step()

    return step
