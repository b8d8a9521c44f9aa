"""Numerics of the speed options: channels-last and bf16 autocast against float32, torch.compile against eager,
and the loss weights kept on the device (read once per epoch). All on CPU, 32 px, batch <= 8, 1-3 steps."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.config import TrainingProtocol
from mtlbench.data import DeviceData, read_published, write_synthetic
from mtlbench.errors import ConfigError
from mtlbench.fastcar.transform import LabelTransform
from mtlbench.fastcar.learner import FastCARLearner
from mtlbench.fastcar.model import Regressor
from mtlbench.models.mtl import build_mtl_model
from mtlbench.train.learners import MTLLearner
from mtlbench.train.loop import Trainer, make_adam

CPU = torch.device("cpu")
SIDE, BATCH, CLASSES, LR = 32, 8, 3, 1e-3
BATCH_SEED = 1
# Teacher-forced steps compared per variant, and Adam steps of the free runs.
STEPS, FREE_STEPS = 5, 3

# How the tolerances are derived. Per step, every variant starts from the float32 run's parameters with the same
# dropout masks ("teacher-forced"), so its losses and gradients measure that step's numerics alone.
#
# float32 is only defined up to its summation order, and it has two kinds of noise:
# - continuous: another convolution algorithm (oneDNN's NCHW against ATen's own convolution, both float32 NCHW)
#   moves the gradients by ~1e-5 (relative L2);
# - discrete: a ReLU input within ~1e-6 of zero changes sign under the other rounding, and the whole gradient of that
#   element is kept or dropped. At 32 px and batch 8, BatchNorm spreads one such flip (e.g. one of the 16,384 inputs of
#   layer2.1's last ReLU) over every encoder layer: the gradient moves by 1e-3 to 2e-2. Measured, float32 NCHW against
#   float32 NCHW (oneDNN against ATen), 40 batches x 3 steps: 5 of 120 steps at 8e-4 to 1.5e-2, the rest 3e-6 to
#   2e-5; the same with oneDNN limited to AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2): 6 of 75 steps, up to 1.8e-2.
#   Channels-last shows the same two kinds at the same rates (up to 1.8e-2), never at other steps' rounding level.
#   Which steps flip depends on the CPU's kernels: that is why a fixed per-step bound of 1e-3 failed on an AVX-512 /
#   AMX Xeon (one step of three at 1.6e-2) and passed on AVX2 and AMD AVX-512 machines.
#
# So channels-last's gradients are checked against the continuous noise floor measured in the same test on the same
# machine: the median over steps (robust to a minority of steps with a flip) of its deviation is at most
# NOISE_FACTOR x the median deviation of float32 NCHW computed by ATen's convolution instead of oneDNN's. Its
# deviation at a step is taken against the closer of the two float32 runs, so that a flip of the reference alone
# (both other runs then agree with each other) is not counted against it. Measured ratio of the medians: 0.36-5.4
# over 80 runs of 5 steps (HPS+EW on 30 batches with default and with AVX2-only oneDNN kernels, FastCAR on 20),
# 16 of whose channels-last steps had a flip; none exceeded the bound. Every step, flips included, stays below
# FLIP_RTOL, 5x the largest flip measured (a layout bug gives O(1) deviations, cosine ~0).
NOISE_FACTOR = 10.0
FLIP_RTOL = 0.1
# Losses are not moved by a flip (the flipped value is ~1e-6): float32 sums of ~1e4 terms round to ~1e-5 relative;
# measured 3e-6 to 4e-6 for channels-last.
CHANNELS_LAST_LOSS_RTOL = 1e-4
# bf16 keeps 8 significand bits (<= 0.2 % per rounding; accumulation stays float32, measured 0.4 % on one
# convolution's weight gradient). At random initialisation the outputs are small sums of many signed terms and
# BatchNorm over 8 samples divides by small spreads, so the relative errors grow through ResNet-18's ~20 layers:
# measured task losses within 3.7 % (HPS+EW) and 0.06 % (FastCAR) per step, gradients 25-45 % apart in L2 with
# cosine 0.89-0.97, on AVX2 (emulated bf16) and on AVX512-BF16 (native) alike. The tolerances allow that with margin
# and still reject what matters: a NaN, a loss of the wrong scale, a gradient unrelated to float32's (cosine ~ 0).
BF16_LOSS_RTOL = 0.10
BF16_GRAD_MIN_COS = 0.8
# bf16 must change the numbers at all (autocast active on CPU): its loss deviation exceeds float32's rounding.
BF16_MIN_LOSS_DEV = 1e-4
# Free runs, FREE_STEPS Adam steps: ||theta_variant - theta_fp32|| / ||theta_fp32 - theta_0||. Adam's first steps
# move each parameter by about lr whatever its gradient's size, so rounding-level gradient differences still move
# parameters by O(lr): measured 0.04 for channels-last and for ATen-against-oneDNN float32 alike, 0.32-0.40 for bf16;
# independent updates of the same size would give ~1.4.
CHANNELS_LAST_UPDATE_RTOL = 0.2
BF16_UPDATE_RTOL = 0.75

# torch.compile against eager, from the same parameters, the same dropout masks (fallback_random). Inductor fuses
# and reorders float32 sums (BatchNorm statistics among them), further from eager than another convolution
# algorithm is: measured losses within 1.3e-5 (relative to losses of ~1), gradients within 3e-4 (relative L2) per step. The median over steps
# must stay within COMPILE_GRAD_RTOL, every step (a ReLU flip, as above) within FLIP_RTOL.
COMPILE_LOSS_RTOL = 1e-4
COMPILE_GRAD_RTOL = 5e-3


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin against the other load, and a
    32 px ResNet-18 step takes 3 s instead of 0.2 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fixed_batch(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(BATCH_SEED)
    # Images that differ as real ones do (coarse structure, per-image contrast and brightness), not i.i.d. pixel
    # noise: noise images pool to nearly the same features, and BatchNorm over such a batch divides by a spread that
    # is mostly rounding.
    coarse = F.interpolate(torch.randn(BATCH, 3, 4, 4, generator=gen), size=SIDE, mode="bilinear")
    scale = 0.5 + 1.5 * torch.rand(BATCH, 1, 1, 1, generator=gen)
    shift = torch.randn(BATCH, 1, 1, 1, generator=gen)
    x = scale * coarse + shift + 0.3 * torch.randn(BATCH, 3, SIDE, SIDE, generator=gen)
    labels = torch.arange(BATCH) % CLASSES
    targets = 300.0 + 100.0 * labels.float() + 20.0 * torch.rand(BATCH, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels, targets


def seed(value: int = 0) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def mtl_learner(weighting: str = "EW", *, channels_last: bool = False, **kwargs: Any) -> MTLLearner:
    seed()
    built = build_mtl_model("HPS", weighting, "decoder1", num_classes=CLASSES, img_size=SIDE, device=CPU)
    if channels_last:
        built.module.to(memory_format=torch.channels_last)
    # standard target scaling, as a sweep spec can ask: the MSE is O(1) like the cross-entropy
    return MTLLearner(built.module, built.backward_kwargs, epochs=1, target_mean=350.0, target_std=100.0, **kwargs)


def fastcar_learner(*, channels_last: bool = False, **kwargs: Any) -> FastCARLearner:
    _, labels, targets = fixed_batch(False)
    transform = LabelTransform.fit(labels.numpy(), targets.numpy(), CLASSES, 50.0)
    seed()
    module = Regressor()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return FastCARLearner(module, transform, **kwargs)


def flat_params(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])


def flat_grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in module.parameters()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def step(learner: Any, batch: tuple[torch.Tensor, ...], mask_seed: int) -> np.ndarray:
    learner.module.train()
    learner.module.zero_grad(set_to_none=True)
    seed(mask_seed)  # the same dropout masks in every variant
    losses, _ = learner.train_step(*batch)
    return losses.double().numpy()


@dataclass(frozen=True)
class Variant:
    """How a variant computes the same step: memory layout, bf16 autocast, or ATen's convolution (the noise floor)."""

    channels_last: bool = False
    amp: bool = False
    aten_conv: bool = False  # float32 NCHW through ATen's own convolution instead of oneDNN's: another algorithm
    compile: bool = False

    def make(self, make: Callable[..., Any]) -> Any:
        return make(channels_last=self.channels_last, amp=self.amp, **({"compile": True} if self.compile else {}))

    def context(self) -> contextlib.AbstractContextManager:
        return torch.backends.mkldnn.flags(enabled=False) if self.aten_conv else contextlib.nullcontext()


FLOAT32_ATEN = Variant(aten_conv=True)


Step = tuple[np.ndarray, torch.Tensor]  # (task losses, flat gradient) of one step


def teacher_forced(make: Callable[..., Any], variants: dict[str, Variant]) -> dict[str, list[Step]]:
    """STEPS steps of the float32 NCHW run (``"float32"``); at each, every variant computes the same step from the
    float32 run's parameters. Per run, per step: (task losses, flat gradient)."""
    ref = make()
    learners = {name: v.make(make) for name, v in variants.items()}
    optimizer = make_adam(list(ref.module.parameters()), LR, 1e-4)
    steps: dict[str, list[Step]] = {name: [] for name in ("float32", *variants)}
    for k in range(STEPS):
        for name, learner in learners.items():
            learner.module.load_state_dict(ref.module.state_dict())
            with variants[name].context():
                losses = step(learner, fixed_batch(variants[name].channels_last), 100 + k)
            steps[name].append((losses, flat_grads(learner.module)))
        steps["float32"].append((step(ref, fixed_batch(False), 100 + k), flat_grads(ref.module)))
        optimizer.step()
    return steps


def deviation(run: list[Step], *refs: list[Step]) -> np.ndarray:
    """Per step: (max relative task-loss deviation, relative L2 gradient deviation, gradient cosine) of ``run``
    against the closest of ``refs`` at that step (by gradient). Against two float32 references, a step where one
    reference alone had a ReLU flip is measured against the other."""
    rows = []
    for k, (losses, grads) in enumerate(run):
        best = min((ref[k] for ref in refs), key=lambda r: rel(grads, r[1]))
        rows.append((float(np.max(np.abs(losses - best[0]) / np.abs(best[0]))), rel(grads, best[1]),
                     float(F.cosine_similarity(grads, best[1], dim=0))))
    return np.array(rows)


def free_run(make: Callable[..., Any], variant: Variant = Variant()) -> torch.Tensor:
    """FREE_STEPS Adam steps on the fixed batch: the final parameters."""
    learner = variant.make(make)
    optimizer = make_adam(list(learner.module.parameters()), LR, 1e-4)
    batch = fixed_batch(variant.channels_last)
    for k in range(FREE_STEPS):
        with variant.context():
            step(learner, batch, 100 + k)
        optimizer.step()
    return flat_params(learner.module)


def assert_tracks_float32(grad_dev: np.ndarray, floor: np.ndarray, what: str) -> None:
    """Rounding level at the median step (against the measured floor), a ReLU flip at most at every step."""
    assert np.median(grad_dev) <= NOISE_FACTOR * np.median(floor), (
        f"{what}: median gradient deviation {np.median(grad_dev):.2e} > {NOISE_FACTOR:g} x float32's own noise "
        f"floor {np.median(floor):.2e} (oneDNN against ATen convolution, the same steps)")
    assert grad_dev.max() < FLIP_RTOL, f"{what}: a step's gradient is {grad_dev.max():.2e} off float32's"


# ---------------------------------------------------------------------------------------------------------------
# channels-last and bf16 autocast against float32
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [mtl_learner, fastcar_learner], ids=["HPS+EW", "FastCAR"])
def test_channels_last_and_bf16_track_float32(make):
    variants = {"channels_last": Variant(channels_last=True), "bf16": Variant(channels_last=True, amp=True),
                "float32_aten": FLOAT32_ATEN}
    steps = teacher_forced(make, variants)
    floor = deviation(steps["float32_aten"], steps["float32"])
    # against both float32 algorithms: a flip of the oneDNN reference alone does not count against channels-last
    cl = deviation(steps["channels_last"], steps["float32"], steps["float32_aten"])
    bf = deviation(steps["bf16"], steps["float32"])
    print(f"\n{make.__name__} per step (loss rel dev, grad rel dev, grad cos):\n channels-last {cl.round(6).tolist()}"
          f"\n bf16 {bf.round(4).tolist()}\n float32 ATen convolution (noise floor) {floor.round(6).tolist()}")
    assert floor[:, 1].max() > 0, "ATen's convolution gave oneDNN's exact gradients: the noise floor measures nothing"
    assert cl[:, 0].max() < CHANNELS_LAST_LOSS_RTOL
    assert_tracks_float32(cl[:, 1], floor[:, 1], "channels-last")
    assert np.isfinite(bf).all()
    assert bf[:, 0].max() < BF16_LOSS_RTOL
    assert bf[:, 2].min() > BF16_GRAD_MIN_COS
    assert bf[:, 0].max() > BF16_MIN_LOSS_DEV, "bf16 autocast changed nothing: is it active on CPU?"

    start = flat_params(make().module)
    final = free_run(make)
    update = (final - start).norm()
    cl_dev = float((free_run(make, variants["channels_last"]) - final).norm() / update)
    bf_dev = float((free_run(make, variants["bf16"]) - final).norm() / update)
    print(f" free runs, distance / update norm: channels-last {cl_dev:.3f}, bf16 {bf_dev:.3f}")
    assert cl_dev < CHANNELS_LAST_UPDATE_RTOL
    assert bf_dev < BF16_UPDATE_RTOL


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------

@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (None when it can): Inductor's CPU kernels need a C++ compiler."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx!r} not on PATH): torch.compile's CPU backend needs one"
    try:
        torch.compile(lambda t: torch.sin(t) + 1.0)(torch.randn(4))
    except Exception as exc:  # noqa: BLE001 — any failure means compile cannot work on this machine
        return f"torch.compile does not work here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


@pytest.fixture(scope="module")
def inductor() -> Iterator[None]:
    """Inductor with its own persistent cache folder and eager's random numbers.

    Own cache: Inductor's on-disk cache keys a compiled backward without the donated-buffer setting, so an
    artifact another process compiled with donated buffers (torch's default) would be reused by the learners, which
    turn them off; a separate folder keeps the test hermetic (and warm after its first run: ~70 s cold on 2 busy
    cores, ~10 s warm). ``fallback_random``: the compiled dropout draws the same masks as eager."""
    import torch._inductor.config as inductor_config

    folder = Path(tempfile.gettempdir()) / f"mtlbench-test-inductor-{os.getuid()}"
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # older torch: the environment variable alone
        @contextlib.contextmanager
        def temporary_cache_dir(directory: str) -> Iterator[None]:
            old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
            try:
                yield
            finally:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR") if old is None else os.environ.update(
                    TORCHINDUCTOR_CACHE_DIR=old)
    donated = torch._functorch.config.donated_buffer  # the learners turn it off process-wide
    with temporary_cache_dir(str(folder)), inductor_config.patch(fallback_random=True):
        reason = compile_unavailable()
        if reason:
            pytest.skip(reason)
        yield
    torch._dynamo.reset()
    torch._functorch.config.donated_buffer = donated


@pytest.mark.parametrize("weighting", ["EW", "PCGrad"])
def test_compiled_learner_matches_eager(inductor, weighting):
    """PCGrad back-propagates each task loss through the compiled graph (retain_graph): a backward compiled with
    donated buffers would corrupt the second one, so the learner turns donation off."""
    make = functools.partial(mtl_learner, weighting)
    compiled = make(compile=True)
    assert compiled.module is not compiled.forward and isinstance(compiled.module, nn.Module)
    assert compiled.module.state_dict().keys() == make().module.state_dict().keys()  # no "_orig_mod." prefix
    steps = teacher_forced(make, {"compiled": Variant(compile=True)})
    dev = deviation(steps["compiled"], steps["float32"])
    print(f"\n{weighting}: compiled vs eager per step (loss rel dev, grad rel dev, grad cos) {dev.round(6).tolist()}")
    assert dev[:, 0].max() < COMPILE_LOSS_RTOL
    assert np.median(dev[:, 1]) < COMPILE_GRAD_RTOL
    assert dev[:, 1].max() < FLIP_RTOL


class _TinyMTL(nn.Module):
    """A two-head model with a LibMTL-style ``backward``: enough for the learner, quick to (fail to) compile."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3 * SIDE * SIDE, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.body(x.flatten(1))) * 0.75
        return {"cls": h[:, :CLASSES], "reg": h[:, -1]}

    def backward(self, losses: torch.Tensor, **kwargs: Any) -> None:
        losses.sum().backward()


def test_compile_failure_is_a_one_line_config_error(inductor):
    import torch._inductor.config as inductor_config

    learner = MTLLearner(_TinyMTL(), {}, epochs=1, compile=True)
    x, labels, targets = fixed_batch(False)
    no_compiler = inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False})
    with no_compiler, pytest.raises(ConfigError, match=r"^--compile: torch\.compile failed: .*C\+\+ compiler") as info:
        learner.train_step(x[:2], labels[:2], targets[:2])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# loss weights: a device tensor per step, mean / std per epoch read once
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_device_data(tmp_path_factory) -> DeviceData:
    root = write_synthetic(tmp_path_factory.mktemp("numerics") / "syn", per_class=(4, 2, 1), image_size=SIDE,
                           seed=2)
    return DeviceData.from_table(read_published(root, name="tiny"), SIDE, CPU,
                                 cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("weighting", ["RLW", "MoCo"])  # LibMTL's numpy weights; mtlbench's device tensor
def test_epoch_weights_are_the_mean_and_std_of_the_step_weights(tiny_device_data, weighting):
    data = tiny_device_data
    seed()
    built = build_mtl_model("HPS", weighting, "decoder1", num_classes=data.num_classes, img_size=SIDE, device=CPU)
    learner = MTLLearner(built.module, built.backward_kwargs, epochs=1)
    seen: list[torch.Tensor] = []
    train_step = learner.train_step

    def recording_step(*args: torch.Tensor) -> tuple[torch.Tensor, Any]:
        losses, w = train_step(*args)
        assert isinstance(w, torch.Tensor) and w.dtype == torch.float32 and w.device == CPU and w.shape == (2,)
        seen.append(w.clone())
        return losses, w

    learner.train_step = recording_step  # type: ignore[method-assign]
    protocol = TrainingProtocol(epochs=1, batch_size=4, img_size=SIDE, max_steps_per_epoch=3, device="cpu")
    trainer = Trainer(learner, data, protocol, seed=0)
    trainer.train_epoch()
    assert len(seen) == 3
    steps = torch.stack(seen).double().numpy()
    rows = trainer.state.weights
    assert [r["task"] for r in rows] == ["cls", "reg"]
    for i, row in enumerate(rows):
        assert row["weight"] == pytest.approx(steps[:, i].mean(), rel=1e-12)
        assert row["weight_std"] == pytest.approx(steps[:, i].std(), rel=1e-12, abs=1e-15)
    assert steps.std(0).max() > 0 or weighting != "RLW"  # RLW draws new weights every step
