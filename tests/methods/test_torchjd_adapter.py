"""The adapter's device-side dual-cone projector solves the same problem as torchjd's default (quadprog) one."""

from __future__ import annotations

import pytest
import torch

from mtlbench.methods.torchjd_adapter import TorchDualConeProjector, gramian_of

quadprog = pytest.importorskip("torchjd.linalg").QuadprogProjector


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_projector_equals_torchjds_quadprog_projector(seed: int, tasks: int):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(tasks, 40, generator=g, dtype=torch.float64)
    grads[1] = -0.7 * grads[0] + 0.3 * grads[1]          # a conflicting pair
    gram = gramian_of(grads)
    u = torch.eye(tasks, dtype=torch.float64)
    for eps in (1e-4, 1e-3):
        ours = TorchDualConeProjector(norm_eps=eps, reg_eps=eps)(u, gram)
        theirs = quadprog(norm_eps=eps, reg_eps=eps)(u, gram)
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-7)
