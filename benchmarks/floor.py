"""The floor under the speed options: a pure ResNet-18 forward + backward + Adam step in float32 eager, against the
same step with channels-last, torch.compile, both, and bf16 autocast, taking turns in one process on one batch.

It answers whether an option can lift mtlbench above the float32 floor on this machine (on a 2-core AVX2 CPU none
does: see README, Performance). bf16 on a CPU without native bf16 is emulated and about 30x slower; it runs only
with ``--variants`` naming it. Examples::

    python benchmarks/floor.py                                   # CPU, 64 px, batch 32
    python benchmarks/floor.py --device cuda --img-size 224 --variants fp32,channels_last,bf16,channels_last+bf16
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Lane, add_timing_args, floor_step, interleaved, timing_settings  # noqa: E402  (the shared timer)

from mtlbench.environment import cpu_has_native_bf16, device_name  # noqa: E402

OPTIONS = ("channels_last", "compile", "bf16")
CPU_STEPS = 20


def make_step(variant: str, x: torch.Tensor, t: torch.Tensor, device: torch.device):
    """One training step of a fresh ResNet-18 regressor with the options ``variant`` names (``+``-joined)."""
    opts = set() if variant == "fp32" else set(variant.split("+"))
    unknown = opts - set(OPTIONS)
    if unknown:
        raise SystemExit(f"unknown variant option {sorted(unknown)[0]!r}; use fp32 or {', '.join(OPTIONS)} joined by +")
    return floor_step(x, t, device, channels_last="channels_last" in opts, amp="bf16" in opts,
                      compile="compile" in opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "variant", CPU_STEPS)
    ap.add_argument("--variants", default=None,
                    help="comma-separated; default: fp32, channels_last, compile, channels_last+compile, and bf16 "
                         "where the device has native bf16")
    args = ap.parse_args()

    device, side, steps, block = timing_settings(args, CPU_STEPS)
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    variants = (args.variants.split(",") if args.variants else
                ["fp32", "channels_last", "compile", "channels_last+compile"] + (["bf16"] if native_bf16 else []))
    b = args.batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, side, side, generator=gen).to(device)
    t = torch.randn(b, generator=gen).to(device)
    print(f"device {device_name(device)}, {side} px, batch {b}, {steps} timed steps per variant in turns of {block}, "
          f"torch {torch.__version__}, native bf16: {'yes' if native_bf16 else 'no'}")
    lanes = [Lane(make_step(v, x, t, device), lambda: itertools.repeat(()), device)
             for v in variants]
    interleaved(lanes, steps, block, warmup=3)
    fp32 = lanes[variants.index("fp32")].images_per_s(b) if "fp32" in variants else None
    print(f"{'variant':24s} {'img/s':>8s} {'vs fp32':>8s}")
    for v, lane in zip(variants, lanes):
        rate = lane.images_per_s(b)
        print(f"{v:24s} {rate:8.1f} {f'{rate / fp32:.2f}x' if fp32 else '-':>8s}")


if __name__ == "__main__":
    main()
