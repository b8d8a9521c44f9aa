"""Numerics of the speed options: channels-last and bf16 autocast against float32, torch.compile against eager,
and the loss weights kept on the device (read once per epoch). All on CPU, 32 px, batch <= 8, 1-3 steps."""

from __future__ import annotations

import contextlib
import functools
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

from mtlbench.config import Protocol
from mtlbench.data import DeviceData, read_published, write_synthetic
from mtlbench.errors import ConfigError
from mtlbench.fastcar.transform import LabelTransform
from mtlbench.models.mtl import Regressor, build_mtl_model
from mtlbench.train.learners import FastCARLearner, MTLLearner
from mtlbench.train.loop import Trainer, make_adam

CPU = torch.device("cpu")
SIDE, BATCH, STEPS, CLASSES, LR = 32, 8, 3, 3, 1e-3

# How the tolerances are compared. Per step, every variant starts from the float32 run's parameters with the same
# dropout masks ("teacher-forced"), so its losses and gradients measure that step's numerics alone. Run freely, the
# trajectories part quickly on this tiny problem whatever the precision: Adam's first steps move each parameter by
# about lr whatever its gradient's size, so rounding-level gradients still move parameters by O(lr) (after 3 free
# steps even channels-last float32 is 5 % off in loss); the free runs are compared on their parameter updates.
#
# channels-last changes only the memory layout: oneDNN picks other convolution kernels, i.e. another summation order.
# Measured: losses within 4e-6 relative, gradients within 2e-5 (relative L2). 1e-4 / 1e-3 leave a wide margin and
# still catch a layout bug, which gives O(1) errors.
CHANNELS_LAST_LOSS_RTOL = 1e-4
CHANNELS_LAST_GRAD_RTOL = 1e-3
# bf16 keeps 8 significand bits (<= 0.2 % per rounding; accumulation stays float32, measured 0.4 % on one
# convolution's weight gradient). At random initialisation the outputs are small sums of many signed terms and
# BatchNorm over 8 samples divides by small spreads, so the relative errors grow through ResNet-18's ~20 layers:
# measured task losses within 3.7 % (HPS+EW) and 0.06 % (FastCAR) per step, gradients 25-45 % apart in L2 with
# cosine 0.89-0.97. The tolerances allow that with margin (and other CPUs' bf16 kernels) and still reject
# what matters: a NaN, a loss of the wrong scale, a gradient unrelated to float32's (cosine ~ 0).
BF16_LOSS_RTOL = 0.10
BF16_GRAD_MIN_COS = 0.8
# bf16 must change the numbers at all (autocast active on CPU): its loss deviation exceeds float32's rounding.
BF16_MIN_LOSS_DEV = 1e-4
# Free runs, STEPS Adam steps: ||theta_variant - theta_fp32|| / ||theta_fp32 - theta_0||. Measured 0.04 for
# channels-last and 0.32-0.40 for bf16 (Adam turns the rounding-level gradient elements into +-lr moves);
# independent updates of the same size would give ~1.4.
CHANNELS_LAST_UPDATE_RTOL = 0.2
BF16_UPDATE_RTOL = 0.75

# torch.compile against eager, one step from the same parameters, the same dropout masks (fallback_random).
# Measured: losses within 1.3e-5, gradients within 3e-4 (relative L2): Inductor fuses and reorders float32 sums.
COMPILE_LOSS_ATOL = 1e-4
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
    gen = torch.Generator().manual_seed(1)
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


def free_run(make: Callable[..., Any], **variant: bool) -> torch.Tensor:
    """STEPS Adam steps on the fixed batch: the final parameters."""
    learner = make(**variant)
    optimizer = make_adam(list(learner.module.parameters()), LR, 1e-4)
    batch = fixed_batch(variant.get("channels_last", False))
    for k in range(STEPS):
        step(learner, batch, 100 + k)
        optimizer.step()
    return flat_params(learner.module)


# ---------------------------------------------------------------------------------------------------------------
# channels-last and bf16 autocast against float32
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [mtl_learner, fastcar_learner], ids=["HPS+EW", "FastCAR"])
def test_channels_last_and_bf16_track_float32(make):
    variants = {"channels_last": {"channels_last": True}, "bf16": {"channels_last": True, "amp": True}}
    ref = make()  # the float32 run: a free run too
    learners = {name: make(**v) for name, v in variants.items()}
    optimizer = make_adam(list(ref.module.parameters()), LR, 1e-4)
    start = flat_params(ref.module)
    dev: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for k in range(STEPS):
        for name, learner in learners.items():  # from the float32 run's current parameters and buffers
            learner.module.load_state_dict(ref.module.state_dict())
            losses = step(learner, fixed_batch(variants[name]["channels_last"]), 100 + k)
            dev[name].append((losses, flat_grads(learner.module)))
        ref_losses = step(ref, fixed_batch(False), 100 + k)
        ref_grads = flat_grads(ref.module)
        optimizer.step()
        for name in variants:
            losses, grads = dev[name][-1]
            loss_dev = float(np.max(np.abs(losses - ref_losses) / np.abs(ref_losses)))
            dev[name][-1] = (loss_dev, rel(grads, ref_grads), float(F.cosine_similarity(grads, ref_grads, dim=0)))
    cl, bf = np.array(dev["channels_last"]), np.array(dev["bf16"])
    print(f"\n{make.__name__} per step (loss rel dev, grad rel dev, grad cos):\n channels-last {cl.round(6).tolist()}"
          f"\n bf16 {bf.round(4).tolist()}")
    assert cl[:, 0].max() < CHANNELS_LAST_LOSS_RTOL
    assert cl[:, 1].max() < CHANNELS_LAST_GRAD_RTOL
    assert np.isfinite(bf).all()
    assert bf[:, 0].max() < BF16_LOSS_RTOL
    assert bf[:, 2].min() > BF16_GRAD_MIN_COS
    assert bf[:, 0].max() > BF16_MIN_LOSS_DEV, "bf16 autocast changed nothing: is it active on CPU?"

    final = flat_params(ref.module)
    update = (final - start).norm()
    cl_dev = float((free_run(make, channels_last=True) - final).norm() / update)
    bf_dev = float((free_run(make, channels_last=True, amp=True) - final).norm() / update)
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
    x, labels, targets = fixed_batch(False)
    batch = (x[:4], labels[:4], targets[:4])
    eager, compiled = mtl_learner(weighting), mtl_learner(weighting, compile=True)
    assert compiled.module is not compiled.forward and isinstance(compiled.module, nn.Module)
    assert compiled.module.state_dict().keys() == eager.module.state_dict().keys()  # no "_orig_mod." prefix
    results = []
    for learner in (eager, compiled):
        losses = step(learner, batch, 100)
        results.append((losses, flat_grads(learner.module)))
    loss_dev = float(np.max(np.abs(results[1][0] - results[0][0])))
    grad_dev = rel(results[1][1], results[0][1])
    print(f"\n{weighting}: compiled vs eager, loss {loss_dev:.2e} abs, gradient {grad_dev:.2e} rel")
    assert loss_dev < COMPILE_LOSS_ATOL
    assert grad_dev < COMPILE_GRAD_RTOL


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
    protocol = Protocol(epochs=1, batch_size=4, img_size=SIDE, max_steps_per_epoch=3, device="cpu")
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
