"""How much of building a cell's model is filling its initial weights: each architecture x decoder built seeded on the
CPU, as a run builds it, against the same build on PyTorch's meta device, where modules get parameters of the right
shapes but no memory is allocated and no values are drawn. The difference is the weights' memory touched for the
first time and the random draws (PyTorch's CPU generator fills tensors serially, one value at a time), which a
seeded run cannot skip or reorder without changing its numbers.

Examples::

    python benchmarks/construction.py                        # every architecture x both decoders, EW, 32 px
    python benchmarks/construction.py --architectures HPS,CGC --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.models.decoders import DECODERS
from mtlbench.models.mtl import build_mtl_model

CPU, META = torch.device("cpu"), torch.device("meta")


def build_seconds(architecture: str, decoder: str, device: torch.device, img_size: int) -> tuple[float, int]:
    """Seconds to build the cell's model on ``device`` (seeded as a run is), and its parameter count."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):   # on meta, tensors made inside the constructors stay on meta too
        built = build_mtl_model(architecture, "EW", decoder, num_classes=6, img_size=img_size, device=device)
    seconds = time.perf_counter() - t0
    return seconds, sum(p.numel() for p in built.module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", default="all", help="comma-separated, or 'all'")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="builds per device; the fastest counts")
    args = ap.parse_args()
    archs = ARCHITECTURES.names() if args.architectures == "all" else args.architectures.split(",")
    print(f"{'architecture':<14}{'decoder':<10}{'params':>12}{'build s':>10}{'meta s':>9}{'draws %':>9}")
    shares = []
    for arch in archs:
        for decoder in DECODERS.names():
            real, params = min(build_seconds(arch, decoder, CPU, args.img_size) for _ in range(args.repeats))
            try:
                meta = min(build_seconds(arch, decoder, META, args.img_size)[0] for _ in range(args.repeats))
            except NotImplementedError as exc:   # a constructor that reads values (MTAL compares its trunks)
                print(f"{arch:<14}{decoder:<10}{params:>12,}{real:>10.3f}  no meta build: "
                      f"{str(exc).splitlines()[0][:60]}")
                continue
            shares.append(1 - meta / real)
            print(f"{arch:<14}{decoder:<10}{params:>12,}{real:>10.3f}{meta:>9.3f}{100 * shares[-1]:>9.1f}")
    print(f"filling the initial weights: {100 * min(shares):.0f}-{100 * max(shares):.0f} % of a build")


if __name__ == "__main__":
    main()
