"""Training throughput of every registered loss weighting against EW and against the floor, in one process.

For each weighting three lanes take turns, a few steps each, round robin: the weighting's own model, one EW model
of the same architecture and decoder (the reference, kept across weightings), and the floor (a pure ResNet-18
forward + backward + Adam step, as in speed.py), so that the drift of a shared machine's speed hits all three
alike. Every model first trains two short past epochs, so that stateful weightings are timed on their steady
path (LibMTL 1.1.5's GradNorm runs EW in its first epoch, DWA weighs equally in its first two) with a real loss
history.

Before the turns, the EW reference's step is split by synchronised timers into its forward (batch to task
losses), its backward (the weighting's ``backward``) and its Adam step. A weighting that back-propagates ``k``
times through the shared encoder per step (counted with a gradient hook on its first shared parameter) has an
arithmetic limit of (F + B) / (F + k B) of EW's rate; the table shows how close each one comes.

"% of EW" is the ratio of the lanes' totals. A burst of load on a shared machine during one turn moves it by a few
points, so the last columns give the ratio within each round of turns: its median, which such a burst does not
move, and its range.

Examples::

    python benchmarks/weightings.py                                  # CPU, 64 px, HPS, decoder1, all weightings
    python benchmarks/weightings.py --arch MTAN --weightings EW,PCGrad,Nash-MTL
    python benchmarks/weightings.py --device cuda --img-size 224 --amp --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.environment import check_amp, device_name
from mtlbench.errors import ConfigError
from mtlbench.heap import keep_freed_blocks
from mtlbench.methods.architectures import ARCHITECTURES
from mtlbench.methods.weightings import WEIGHTINGS
from mtlbench.models.decoders import DECODERS
from mtlbench.models.mtl import build_mtl_model
from mtlbench.train.learners import MTLLearner
from mtlbench.train.loop import make_adam, sync

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (Lane, add_timing_args, data_source, floor_step, interleaved,  # noqa: E402  (the shared timer)
                    resident_batches, timing_settings, turn_ratios)

CPU_STEPS = 16
PAST_EPOCHS = 2   # DWA reads the last two epochs' mean losses; GradNorm leaves its EW phase after the first
Batches = Callable[[], Any]


@dataclass
class Cell:
    """One weighting's model, its learner and optimiser, trained past its first epochs."""

    learner: MTLLearner
    opt: torch.optim.Optimizer

    @property
    def samples(self) -> int:
        """Batches per step (MoDo, SDMGrad: 3)."""
        return self.learner.samples_per_step

    def step(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> None:
        """One optimizer step. A weighting that takes k batches a step gets this batch k times: the arithmetic is
        that of k distinct batches, and every lane reads one batch per step."""
        self.opt.zero_grad(set_to_none=True)
        if self.samples == 1:
            self.learner.train_step(x, labels, targets)
        else:
            self.learner.train_step_samples([(x, labels, targets)] * self.samples)
        self.opt.step()


def build_cell(arch: str, weighting: str, decoder: str, data: DeviceData, side: int, device: torch.device,
               args: argparse.Namespace, batches: Batches) -> Cell:
    """A fresh model (seed 0) with ``PAST_EPOCHS`` epochs of ``--epoch-steps`` steps behind it: the loop's own
    ``start_epoch`` / ``end_epoch`` record each one's mean task losses, as a real run does."""
    torch.manual_seed(0)
    built = build_mtl_model(arch, weighting, decoder, num_classes=data.num_classes, img_size=side, device=device)
    module = built.module
    if args.channels_last:
        module.to(memory_format=torch.channels_last)
    epochs = PAST_EPOCHS + 1
    learner = MTLLearner(module, built.backward_kwargs, epochs=epochs, amp=args.amp, samples=built.samples)
    cell = Cell(learner, make_adam([p for p in module.parameters() if p.requires_grad], 1e-3, 1e-4))
    it = iter(batches())
    for epoch in range(1, PAST_EPOCHS + 1):
        learner.start_epoch(epoch, epochs)
        total = torch.zeros(len(learner.task_names), device=device)
        for _ in range(args.epoch_steps):
            cell.opt.zero_grad(set_to_none=True)
            losses, _ = learner.train_step_samples([next(it)[:3] for _ in range(learner.samples_per_step)])
            cell.opt.step()
            total += losses.float()
        learner.end_epoch(epoch, (total / args.epoch_steps).cpu().numpy())
    learner.start_epoch(epochs, epochs)
    return cell


def encoder_passes(cell: Cell, batches: Batches) -> int:
    """Backward passes through the shared encoder per batch: how often its first shared parameter receives a
    gradient in one step, over the step's batches (EW: 1; a weighting that needs one gradient per task: the number
    of tasks)."""
    first = next(iter(cell.learner.module.get_share_params()))
    count = [0]

    def hook(grad: torch.Tensor) -> None:
        count[0] += 1

    handle = first.register_hook(hook)
    try:
        cell.step(*next(iter(batches())))
    finally:
        handle.remove()
    return count[0] // cell.samples


def split_step(cell: Cell, batches: Batches, steps: int, device: torch.device) -> tuple[float, float, float]:
    """Mean seconds of the step's forward (batch to task losses), backward (the weighting's ``backward``) and
    Adam step, each between device synchronisations (which the timed turns do not have)."""
    module = cell.learner.module
    plain = module.backward
    spent = {"backward": 0.0}

    def timed_backward(losses: torch.Tensor, **kwargs: Any) -> Any:
        sync(device)
        t0 = time.perf_counter()
        out = plain(losses, **kwargs)
        sync(device)
        spent["backward"] += time.perf_counter() - t0
        return out

    module.backward = timed_backward   # an instance attribute: the learner calls module.backward
    fwd_bwd = adam = 0.0
    it = iter(batches())
    try:
        for _ in range(steps):
            batch = next(it)
            sync(device)
            t0 = time.perf_counter()
            cell.opt.zero_grad(set_to_none=True)
            cell.learner.train_step(*batch)
            sync(device)
            t1 = time.perf_counter()
            cell.opt.step()
            sync(device)
            fwd_bwd += t1 - t0
            adam += time.perf_counter() - t1
    finally:
        del module.backward
    return (fwd_bwd - spent["backward"]) / steps, spent["backward"] / steps, adam / steps


def limit_factor(fwd: float, bwd: float, passes: int) -> float:
    """The arithmetic limit of a step with ``passes`` backward passes, as a fraction of EW's (one pass) rate."""
    return (fwd + bwd) / (fwd + passes * bwd)


def names(arg: str | None, registry: Any) -> list[str]:
    """Canonical registry names from a comma-separated list (all when None); an unknown name stops the script."""
    if not arg:
        return registry.names()
    try:
        return list(dict.fromkeys(registry.canonical(n.strip()) for n in arg.split(",") if n.strip()))
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "weighting", CPU_STEPS)
    ap.add_argument("--data", default=None, help="data set spec; default: the steel set if present, else default")
    ap.add_argument("--arch", default="HPS", help=f"architecture: {', '.join(ARCHITECTURES.names())}")
    ap.add_argument("--weightings", default=None, help="comma-separated subset (default: every registered one)")
    ap.add_argument("--decoder", default="decoder1", help=f"decoder: {', '.join(DECODERS.names())}")
    ap.add_argument("--epoch-steps", type=int, default=2,
                    help=f"steps in each of the {PAST_EPOCHS} past epochs every model trains before it is timed")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per lane before each weighting's turns")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16)")
    args = ap.parse_args()
    keep_freed_blocks()   # as the mtlbench CLI does: freed gradient buffers are reused, not faulted afresh

    device, side, steps, block = timing_settings(args, CPU_STEPS)
    try:
        check_amp(device, args.amp)
        arch, decoder = ARCHITECTURES.canonical(args.arch), DECODERS.canonical(args.decoder)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    weightings = names(args.weightings, WEIGHTINGS)
    if args.epoch_steps < 1:
        raise SystemExit("--epoch-steps must be at least 1")
    b = args.batch_size
    table = resolve_dataset(data_source(args.data))
    data = DeviceData.from_table(table, side, device)
    batches = resident_batches(data, b, device, args.channels_last)
    print(f"device {device_name(device)}, data {table.name} ({len(table.split('train'))} train images), {side} px, "
          f"batch {b}, {arch}, {decoder}, {steps} timed steps per lane in turns of {block}, {PAST_EPOCHS} past "
          f"epochs of {args.epoch_steps} steps, amp {'on' if args.amp else 'off'}, channels-last "
          f"{'on' if args.channels_last else 'off'}, torch {torch.__version__}")

    ew = build_cell(arch, "EW", decoder, data, side, device, args, batches)
    x0, _, t0 = next(batches())
    floor = floor_step(x0, t0, device, channels_last=args.channels_last, amp=args.amp)
    Lane(ew.step, batches, device).warm_up(args.warmup)
    fwd, bwd, adam = split_step(ew, batches, steps, device)
    print(f"EW step, synchronised, mean of {steps}: forward F = {1e3 * fwd:.2f} ms, backward B = {1e3 * bwd:.2f} ms "
          f"(B/F = {bwd / fwd:.2f}), Adam {1e3 * adam:.2f} ms")
    print(f"arithmetic limit with k backward passes through the shared encoder: (F+B)/(F+kB) of EW's rate; "
          f"k=2: {limit_factor(fwd, bwd, 2):.3f}")
    print(f"{'weighting':12s} {'img/s':>8s} {'EW img/s':>9s} {'% of EW':>8s} {'floor img/s':>12s} {'% of floor':>11s} "
          f"{'passes':>7s} {'limit img/s':>12s} {'% of limit':>11s} {'% of EW by turn: median':>24s} {'min-max':>11s}")

    ew_rates, floor_rates, failed = [], [], []
    for name in weightings:
        try:
            cell = build_cell(arch, name, decoder, data, side, device, args, batches)
            passes = encoder_passes(cell, batches)
            lanes = [Lane(cell.step, batches, device), Lane(ew.step, batches, device),
                     Lane(floor, batches, device)]
            interleaved(lanes, steps, block, args.warmup)
            rate = lanes[0].images_per_s(b * cell.samples)
            ew_rate, floor_rate = (lane.images_per_s(b) for lane in lanes[1:])
            by_turn = [100 * r for r in turn_ratios(lanes[0], b * cell.samples, lanes[1], b)]
        except Exception as exc:  # noqa: BLE001 — one weighting failing must not hide the others' rows
            failed.append(name)
            print(f"{name:12s} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            traceback.print_exc(file=sys.stderr)
            continue
        finally:
            cell = lanes = None   # free the model before the next one is built
        ew_rates.append(ew_rate)
        floor_rates.append(floor_rate)
        if passes > 1:
            limit = ew_rate * limit_factor(fwd, bwd, passes)
            limit_cols = f"{limit:12.1f} {100 * rate / limit:11.1f}"
        else:
            limit_cols = f"{'-':>12s} {'-':>11s}"
        print(f"{name:12s} {rate:8.1f} {ew_rate:9.1f} {100 * rate / ew_rate:8.1f} {floor_rate:12.1f} "
              f"{100 * rate / floor_rate:11.1f} {passes:7d} {limit_cols} {statistics.median(by_turn):24.1f} "
              f"{min(by_turn):5.1f}-{max(by_turn):5.1f}")
    if ew_rates:
        print(f"in the same turns, EW ran at {min(ew_rates):.1f}-{max(ew_rates):.1f} img/s and the floor at "
              f"{min(floor_rates):.1f}-{max(floor_rates):.1f} img/s")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
