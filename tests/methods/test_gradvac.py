"""GradVac from the Gramian: LibMTL 1.1.5's GradVac on the same gradients, shuffles and EMA state, a conflict lifted
to its target cosine, and the targets surviving a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from method_probes import assert_equals_stock, probe_model, probe_step

from mtlbench.libmtl_compat import libmtl_weighting
from mtlbench.methods.gradvac import GradVac
from mtlbench.train.checkpoint import attribute_state, load_attribute_state


@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.5, 0.01])
def test_equals_libmtl_gradvac(m, seed, beta):
    # Both keep rho_T in float32 (as LibMTL does); each step's float64 update can round to a neighbouring float32
    # (1.2e-7 apart) and the next steps' adjustments carry that: measured up to 2e-7 relative over these cases.
    assert_equals_stock(GradVac, libmtl_weighting.GradVac, m, seed, rtol=1e-5, beta=beta)


def test_a_conflict_is_lifted_to_the_target_cosine():
    """At the first step the targets are 0: each of a conflicting pair is made orthogonal to the other,
    pc_1 = g_1 - (g_1.g_2 / |g_2|^2) g_2 and pc_2 = g_2 - (g_1.g_2 / |g_1|^2) g_1, and each target moves to beta rho."""
    G = torch.tensor([[1.0, 0.0, 0.2], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    g1, g2 = G
    model = probe_model(GradVac, G)
    grad, w = probe_step(model, G, beta=0.5)
    c12, c21 = float(-(g1 @ g2) / (g2 @ g2)), float(-(g1 @ g2) / (g1 @ g1))
    torch.testing.assert_close(grad, (1 + c21) * g1 + (1 + c12) * g2)
    torch.testing.assert_close(torch.as_tensor(w), torch.tensor([1 + c21, 1 + c12], dtype=torch.float64))
    rho = float(g1 @ g2 / (g1.norm() * g2.norm()))
    torch.testing.assert_close(model.rho_T, torch.tensor([[0.0, 0.5 * rho], [0.5 * rho, 0.0]]))


def test_targets_survive_the_checkpoint_attribute_saver():
    """Two tasks (no shuffle): a model resumed from its saved attributes goes on as if uninterrupted."""
    gen = torch.Generator().manual_seed(0)
    seq = [torch.randn(2, 10, generator=gen, dtype=torch.float64) for _ in range(6)]
    whole = probe_model(GradVac, seq[0])
    expected = [probe_step(whole, G, beta=0.3)[0] for G in seq]
    first = probe_model(GradVac, seq[0])
    for G in seq[:3]:
        probe_step(first, G, beta=0.3)
    buffer = io.BytesIO()
    torch.save(attribute_state(first), buffer)
    buffer.seek(0)
    resumed = probe_model(GradVac, seq[0])
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for G, e in zip(seq[3:], expected[3:]):
        torch.testing.assert_close(probe_step(resumed, G, beta=0.3)[0], e)
    torch.testing.assert_close(resumed.rho_T, whole.rho_T)


def test_end_to_end_step(hps_step):
    w, model = hps_step("GradVac")
    assert isinstance(w, torch.Tensor) and w.shape == (2,) and model.rho_T.shape == (2, 2)
