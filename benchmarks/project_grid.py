"""GPU-hours of a sweep spec's grid, projected from measured step rates and counted arithmetic.

A cell's training time is its images (train images x epochs) over its rate. The rate of architecture A, weighting W
and decoder D is EW's measured rate on HPS + Decoder-1 (``--ew-img-s``, or the EW row of a
``benchmarks/weightings.py`` log) scaled by
- W's measured fraction of EW's rate (the log's "% of EW"; a weighting the log lacks takes the mean of its kind:
  per-task gradients or loss level), and
- the FLOPs of HPS + Decoder-1's training step over A + D's (forward and backward, counted by torch's
  FlopCounterMode on one image at the spec's size: arithmetic, not a measurement).
Evaluation adds one forward (a third of a step's FLOPs) over the validation images each epoch and the test images
twice. FastCAR counts as HPS + EW with Decoder-1 (its one regression head costs less). The figure assumes one
cell per GPU; two per GPU gave 1.6x the throughput on an H200 (README, Performance). Example::

    python benchmarks/project_grid.py --spec paper --log docs/gpu-h200-2026-11-30/weightings.log
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlbench.methods.registry import WEIGHTINGS
from mtlbench.models.mtl import build_mtl_model
from mtlbench.sweep.spec import load_spec

ROW = re.compile(r"^(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s")


def fraction_of_ew(log: Path) -> dict[str, float]:
    """Each weighting's rate as a fraction of EW's, from a weightings.py log."""
    out = {}
    for line in log.read_text().splitlines():
        m = ROW.match(line)
        if m and m.group(1) in WEIGHTINGS:
            out[m.group(1)] = float(m.group(4)) / 100.0
    return out


def ew_rate(log: Path) -> float:
    for line in log.read_text().splitlines():
        m = ROW.match(line)
        if m and m.group(1) == "EW":
            return float(m.group(2))
    raise SystemExit(f"{log}: no EW row")


def step_flops(architecture: str, decoder: str, img_size: int) -> float:
    """Forward + backward FLOPs of one image through the architecture x decoder (EW's plain sum of losses)."""
    torch.manual_seed(0)
    built = build_mtl_model(architecture, "EW", decoder, num_classes=6, img_size=img_size,
                            device=torch.device("cpu"))
    model = built.module.train()
    x = torch.randn(2, 3, img_size, img_size)   # 2: batch norm needs more than one value per channel
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        (out["cls"].sum() + out["reg"].sum()).backward()
    return counter.get_total_flops() / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="paper")
    ap.add_argument("--log", type=Path, required=True, help="a benchmarks/weightings.py log (its EW row and % of EW)")
    ap.add_argument("--ew-img-s", type=float, default=None, help="EW's rate on HPS + Decoder-1 (default: the log's)")
    ap.add_argument("--train-images", type=int, default=3240)
    ap.add_argument("--valid-images", type=int, default=648)
    ap.add_argument("--test-images", type=int, default=648)
    args = ap.parse_args()
    spec = load_spec(args.spec)
    p = spec.protocol
    frac = fraction_of_ew(args.log)
    rate_ew = args.ew_img_s or ew_rate(args.log)
    kinds: dict[bool, list[float]] = defaultdict(list)
    for name, f in frac.items():
        kinds[bool(WEIGHTINGS.entry(name).trait("gradients", False))].append(f)
    kind_mean = {k: sum(v) / len(v) for k, v in kinds.items()}
    flops: dict[tuple[str, str], float] = {}
    base = step_flops("HPS", "decoder1", p.img_size)
    seconds = 0.0
    per_arch: dict[str, float] = defaultdict(float)
    cells = spec.cells()
    for cfg in cells:
        arch, dec = ("HPS", "decoder1") if cfg.kind == "fastcar" else (cfg.architecture, cfg.decoder)
        if (arch, dec) not in flops:
            flops[(arch, dec)] = step_flops(arch, dec, p.img_size)
        w = "EW" if cfg.kind == "fastcar" else cfg.weighting
        f = frac.get(w, kind_mean[bool(WEIGHTINGS.entry(w).trait("gradients", False))])
        rate = rate_ew * f * base / flops[(arch, dec)]
        eval_images = (args.valid_images * p.epochs + 2 * args.test_images) / 3.0
        s = (args.train_images * p.epochs) / rate + eval_images * base / flops[(arch, dec)] / rate_ew
        seconds += s
        per_arch[arch if cfg.kind == "mtl" else "FastCAR"] += s
    print(f"spec {spec.name}: {len(cells)} runs, {p.epochs} epochs of {args.train_images} images at {p.img_size} px; "
          f"EW on HPS + Decoder-1 at {rate_ew:.0f} img/s ({args.log})")
    print("step FLOPs per image relative to HPS + Decoder-1: " + ", ".join(
        f"{a}/{d} {v / base:.2f}" for (a, d), v in sorted(flops.items())))
    for arch, s in sorted(per_arch.items(), key=lambda kv: -kv[1]):
        print(f"  {arch:14s} {s / 3600:7.1f} GPU-hours")
    print(f"total: {seconds / 3600:.1f} GPU-hours at one cell per GPU; {seconds / 3600 / 1.6:.1f} with two cells per "
          f"GPU (1.6x throughput measured on an H200)")


if __name__ == "__main__":
    main()
