"""float32's own noise on this CPU, against which tests/test_numerics.py checks channels-last and torch.compile.

For each of N batches, STEPS teacher-forced steps (tests/test_numerics.py's protocol): the gradient deviation of
float32 NCHW through ATen's convolution against oneDNN's (the noise floor), and of channels-last against the closer
of the two; the ratio of their medians (the test bounds it by NOISE_FACTOR) and the steps with a ReLU-boundary flip
(a deviation above 1e-4). Run it on a new CPU family before loosening anything, e.g.::

    python benchmarks/numerics_noise.py --batches 30
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/numerics_noise.py --batches 30   # oneDNN's AVX2 kernels only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_numerics as tn  # noqa: E402  (the test's own protocol and tolerances)

FLIP = 1e-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--model", choices=("mtl", "fastcar"), default="mtl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    make = tn.mtl_learner if args.model == "mtl" else tn.fastcar_learner
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, {args.model}, "
          f"{args.batches} batches x {tn.STEPS} steps; bound: median ratio <= {tn.NOISE_FACTOR:g}, "
          f"every step < {tn.FLIP_RTOL:g}")
    ratios, worst, flips, fails = [], 0.0, 0, 0
    for b in range(1, args.batches + 1):
        tn.BATCH_SEED = b
        steps = tn.teacher_forced(make, {"channels_last": tn.Variant(channels_last=True),
                                         "float32_aten": tn.FLOAT32_ATEN})
        floor = tn.deviation(steps["float32_aten"], steps["float32"])[:, 1]
        cl = tn.deviation(steps["channels_last"], steps["float32"], steps["float32_aten"])[:, 1]
        ratio = float(np.median(cl) / np.median(floor))
        ok = ratio <= tn.NOISE_FACTOR and cl.max() < tn.FLIP_RTOL
        ratios.append(ratio)
        worst = max(worst, float(cl.max()), float(floor.max()))
        flips += int((cl > FLIP).sum())
        fails += not ok
        print(f"batch {b:3d}: floor {np.array2string(floor, precision=1)}  channels-last "
              f"{np.array2string(cl, precision=1)}  median ratio {ratio:.2f}{'' if ok else '  FAIL'}", flush=True)
    print(f"median ratio {min(ratios):.2f}-{max(ratios):.2f}; channels-last steps with a flip: {flips}; largest "
          f"deviation {worst:.2e}; failing batches: {fails} of {args.batches}")


if __name__ == "__main__":
    main()
