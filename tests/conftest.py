"""Shared fixtures: a per-session cache, tiny synthetic data sets, and the smoke sweep run once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED_STEEL = REPO.parent / "shared" / "datasets" / "advanced-steel-property"
# Tests on the real data set run where it lies beside the checkout and are skipped elsewhere; where it must be there
# (CI, which has ../shared: .ci/run sets MTLBENCH_REQUIRE_REAL_DATA=1) its absence fails them instead of skipping.
needs_real = pytest.mark.skipif(not SHARED_STEEL.is_dir() and os.environ.get("MTLBENCH_REQUIRE_REAL_DATA") != "1",
                                reason=f"real data set not present at {SHARED_STEEL}")

# Tests measure behaviour, not speed: one thread avoids OpenMP thrashing when pytest shares the CPU.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["MTLBENCH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set in the published layout: 6 classes x (8, 3, 3) images of 32 px."""
    from mtlbench.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("tiny") / "data", per_class=(8, 3, 3), image_size=32, seed=1)


def run_cli(*args: str, cache: Path, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTLBENCH_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mtlbench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=timeout)


# A few HPS cells on the tiny data: 32 px, batch 8, 2 steps per epoch.
SMALL = """
name = "small"
[data]
source = "{data}"
[protocol]
epochs = {epochs}
batch_size = 8
img_size = 32
max_steps_per_epoch = 2
latency_repeats = 1
[axes]
architectures = ["HPS"]
weightings = {weightings}
decoders = ["decoder1"]
[fastcar]
enabled = {fastcar}
"""


def small_spec(tmp_path: Path, data: Path, *, weightings='["EW", "UW", "DWA", "RLW", "GLS"]', epochs=1,
               fastcar="true", extra="") -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL.format(data=data, weightings=weightings, epochs=epochs, fastcar=fastcar) + extra)
    return path


#: The torch threads of each smoke worker: the local executor gives each of its 2 workers half the cores. Another
#: executor reproduces the smoke rows bit for bit only with the same thread count (tests/test_ray.py).
SMOKE_THREADS = max(1, (os.cpu_count() or 1) // 2)


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The shipped smoke sweep (every registered cell + FastCAR), run once per session through the real CLI, on the
    local executor with 2 worker processes (each with half the cores' threads: see SMOKE_THREADS)."""
    out = tmp_path_factory.mktemp("smoke") / "results"
    proc = run_cli("sweep", "smoke", "--out", str(out), "--executor", "local", "--workers", "2", cache=cache_dir,
                   timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture
def hps_step():
    """One training step of an HPS x ``weighting`` x decoder1 model on random data (``samples`` batches of it, for a
    weighting that takes several a step): (weights, model)."""

    from mtlbench.models.mtl import build_mtl_model

    def step(weighting: str, samples: int = 1, **weight_args):
        torch.manual_seed(0)
        built = build_mtl_model("HPS", weighting, "decoder1", num_classes=3, img_size=32,
                                device=torch.device("cpu"), weight_args=weight_args or None)
        model = built.module.train()
        losses = []
        for _ in range(samples):
            x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)
            out = model(x)
            losses.append(torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                                       nn.functional.mse_loss(out["reg"].reshape(-1), targets)]))
        model.zero_grad(set_to_none=True)
        w = model.backward(losses[0] if samples == 1 else losses, **{**built.backward_kwargs})
        grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        return w, model

    return step
