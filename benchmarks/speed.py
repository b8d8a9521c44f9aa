"""Training throughput: mtlbench's step against a LibMTL-style baseline and the pure ResNet-18 floor, in one
process, on the same data, model, batch size and machine.

- baseline: what LibMTL's Trainer and examples do: a DataLoader whose Dataset decodes each image with PIL and
  applies torchvision transforms (Resize, ToTensor, Normalize) every epoch; float32; LibMTL 1.1.5's stock
  per-task gradient flattening (a CPU vector per task, copied back to the device).
- mtlbench: the decoded-once uint8 tensors resident on the device, device-side normalisation, the device-side
  gradient path (mtlbench.libmtl_compat), foreach / fused Adam; ``--channels-last``, ``--amp`` and
  ``--compile`` optional.
- floor: a pure ResNet-18 forward + backward + Adam step on one resident batch.

Prints images/s, the ratio to the baseline and the fraction of the floor for HPS+EW, HPS+PCGrad, MTAN+EW and
FastCAR. Examples::

    python benchmarks/speed.py                               # CPU, 64 px, real data if present, else embedded
    python benchmarks/speed.py --device cuda --img-size 224 --amp --channels-last [--compile]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mtlbench.data import DeviceData, resolve_dataset
from mtlbench.data.device import IMAGENET_MEAN, IMAGENET_STD
from mtlbench.environment import check_amp, device_name
from mtlbench.fastcar.transform import LabelTransform
from mtlbench.libmtl_compat import libmtl_architecture as A, libmtl_weighting as W
from mtlbench.models.decoders import build_decoder
from mtlbench.models.encoder import EncoderFactory
from mtlbench.fastcar.learner import FastCARLearner
from mtlbench.fastcar.model import Regressor
from mtlbench.heap import keep_freed_blocks
from mtlbench.models.mtl import build_mtl_model
from mtlbench.train.learners import MTLLearner
from mtlbench.train.loop import make_adam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (Lane, add_timing_args, data_source, floor_step, interleaved,  # noqa: E402  (the shared timer)
                    resident_batches, timing_settings)

CPU_STEPS = 24


class PILDataset(Dataset):
    """LibMTL-example style: decode and transform every image, every epoch."""

    def __init__(self, frame, side: int) -> None:
        self.paths = list(frame["path"])
        self.labels = frame["label"].to_numpy()
        self.targets = frame["target"].to_numpy().astype(np.float32)
        self.tf = transforms.Compose([transforms.Resize((side, side)), transforms.ToTensor(),
                                      transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = self.tf(Image.open(self.paths[i]).convert("RGB"))
        return img, {"cls": int(self.labels[i]), "reg": float(self.targets[i])}


def stock_model(arch, weighting, num_classes: int, side: int, device: torch.device) -> nn.Module:
    """LibMTL's own composition (Trainer._prepare_model), with its stock gradient path."""

    class Stock(arch, weighting):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.init_param()

        def zero_grad_share_params(self):  # LibMTL was written for zero_grad() that zeroes, not frees
            for p in self.get_share_params():
                if p.grad is not None:
                    p.grad.zero_()

    decoders = nn.ModuleDict({"cls": build_decoder("decoder1", num_classes), "reg": build_decoder("decoder1", 1)})
    m = Stock(["cls", "reg"], EncoderFactory(), decoders, False, False, device, img_size=[3, side, side],
              num_experts=[3]).to(device)
    m.epoch, m.train_loss_buffer = 0, np.zeros((2, 1))
    return m


def rss_anon() -> int:
    """This process's private (anonymous) resident memory in bytes; 0 where /proc is absent."""
    status = Path("/proc/self/status")
    if not status.exists():
        return 0
    for line in status.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_args(ap, "case", CPU_STEPS)
    ap.add_argument("--data", default=None, help="data set spec; default: the steel set if present, else default")
    ap.add_argument("--cases", default="HPS+EW,HPS+PCGrad,MTAN+EW,FastCAR")
    ap.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers (LibMTL examples: 2)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or a CPU with native bf16)")
    ap.add_argument("--compile", action="store_true", help="torch.compile mtlbench's models (warm-up compiles)")
    args = ap.parse_args()
    keep_freed_blocks()   # as the mtlbench CLI does: freed gradient buffers are reused, not faulted afresh

    device, side, steps, block = timing_settings(args, CPU_STEPS)
    check_amp(device, args.amp)
    warmup = 3
    b = args.batch_size
    table = resolve_dataset(data_source(args.data))
    cuda_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    anon_before = rss_anon()
    data = DeviceData.from_table(table, side, device)
    uint8_mib = sum(s.images.numel() for s in data.splits.values()) / 2**20
    if device.type == "cuda":
        held = f"{(torch.cuda.memory_allocated(device) - cuda_before) / 2**20:.1f} MiB of GPU memory"
    else:
        held = f"{(rss_anon() - anon_before) / 2**20:.1f} MiB of private host memory (the rest is the shared cache map)"
    train = table.split("train")
    print(f"device {device_name(device)}, data {table.name} ({len(train)} train images), {side} px, batch {b}, "
          f"{steps} timed steps per case, in turns of {block}, torch {torch.__version__}")
    print(f"decoded data set: {uint8_mib:.1f} MiB as uint8; loading it took {held}")

    loader = DataLoader(PILDataset(train, side), batch_size=b, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)

    def baseline_batches():
        for x, y in loader:
            yield (x.to(device, non_blocking=True), y["cls"].to(device), y["reg"].float().to(device))

    fast_batches = resident_batches(data, b, device, args.channels_last)
    x0, _, t0 = next(fast_batches())
    # the floor at the precision and memory format the mtlbench side runs in
    floor_fn = floor_step(x0, t0, device, channels_last=args.channels_last, amp=args.amp)

    print(f"{'case':14s} {'baseline img/s':>15s} {'mtlbench img/s':>15s} {'ratio':>7s} {'floor img/s':>12s} "
          f"{'of floor':>9s}")
    for case in args.cases.split(","):
        torch.manual_seed(0)
        if case == "FastCAR":
            transform = LabelTransform.fit(train["label"].to_numpy(), train["target"].to_numpy(),
                                           data.num_classes, 50.0)
            consts = torch.tensor(transform.constants, device=device)

            base_model = Regressor().to(device)
            base_opt = torch.optim.Adam(base_model.parameters(), 1e-3, weight_decay=1e-4)

            def base_step(x, labels, targets):
                base_opt.zero_grad()
                hybrid = targets + consts[labels].float() - transform.centre
                F.mse_loss(base_model(x), hybrid).backward()
                base_opt.step()

            module = Regressor().to(device)
            if args.channels_last:
                module.to(memory_format=torch.channels_last)
            learner = FastCARLearner(module, transform, amp=args.amp, compile=args.compile)
        else:
            arch, weighting = case.split("+")
            stock = stock_model(getattr(A, arch), getattr(W, weighting), data.num_classes, side, device)
            base_opt = torch.optim.Adam(stock.parameters(), 1e-3, weight_decay=1e-4)

            def base_step(x, labels, targets, stock=stock, base_opt=base_opt):
                base_opt.zero_grad(set_to_none=False)
                out = stock(x)
                losses = torch.zeros(2, device=device)   # LibMTL Trainer's loss vector
                losses[0] = F.cross_entropy(out["cls"], labels)
                losses[1] = F.mse_loss(out["reg"].reshape(-1), targets)
                stock.backward(losses)
                base_opt.step()

            built = build_mtl_model(arch, weighting, "decoder1", num_classes=data.num_classes, img_size=side,
                                    device=device)
            module = built.module
            if args.channels_last:
                module.to(memory_format=torch.channels_last)
            learner = MTLLearner(module, built.backward_kwargs, epochs=1, amp=args.amp, compile=args.compile)
        fast_opt = make_adam(list(module.parameters()), 1e-3, 1e-4)

        def fast_step(x, labels, targets, learner=learner, fast_opt=fast_opt):
            fast_opt.zero_grad(set_to_none=True)
            learner.train_step(x, labels, targets)
            fast_opt.step()

        lanes = [Lane(base_step, baseline_batches, device), Lane(fast_step, fast_batches, device),
                 Lane(floor_fn, fast_batches, device)]
        interleaved(lanes, steps, block, warmup)
        base, fast, floor = (lane.images_per_s(b) for lane in lanes)
        print(f"{case:14s} {base:15.1f} {fast:15.1f} {fast / base:6.2f}x {floor:12.1f} {fast / floor:8.0%}")


if __name__ == "__main__":
    main()
