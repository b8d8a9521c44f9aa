"""ExcessMTL through torchjd: the weights are torchjd's over a sequence of steps, they follow the paper's excess-risk
update (LibMTL main's weights divided by the task count), the weighted loss reaches every part of the model, options
are checked, a model steps, and the state survives a checkpoint."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torchjd.aggregation import ExcessMTLWeighting

from mtlbench.errors import ConfigError
from mtlbench.methods.excess_mtl import EXCESSMTL_DEFAULTS, ExcessMTL
from mtlbench.models.mtl import build_mtl_model
from mtlbench.sweep.spec import parse_spec
from mtlbench.train.checkpoint import attribute_state, load_attribute_state

ONE_CELL = {"axes": {"architectures": ["HPS"], "weightings": ["ExcessMTL"], "decoders": ["decoder1"]},
            "fastcar": {"enabled": False}}


def sequence(m: int, steps: int = 5, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + m)
    return [torch.randn(m, 30, generator=gen, dtype=torch.float64) * (1.0 + i) for i in range(steps)]


def test_defaults_are_libmtl_mains():
    assert EXCESSMTL_DEFAULTS == {"robust_step_size": 1e-2, "ExcessMTL_warmup_steps": 1}


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("step_size,warmup", [(1e-2, 1), (0.5, 0), (1.0, 2)])
def test_adapter_equals_torchjd_over_steps(m, step_size, warmup):
    direct = ExcessMTLWeighting(robust_step_size=step_size, n_warmup_steps=warmup)
    ours = ExcessMTL()
    for G in sequence(m):
        torch.testing.assert_close(ours.weights_for(G, robust_step_size=step_size, ExcessMTL_warmup_steps=warmup),
                                   direct(G))


@pytest.mark.parametrize("m", [2, 3])
def test_paper_update_is_libmtl_mains_over_the_task_count(m):
    """Eqs. 6-7 (excess risk with the AdaGrad diagonal Hessian), scale processing by the first step's risks, Eq. 9:
    written out here as LibMTL main's loop (weights starting at 1, summing to m); ours are those divided by m."""
    eta, ours = 0.3, ExcessMTL()
    sq_sum, baseline, libmtl_w = None, None, torch.ones(m, dtype=torch.float64)
    for step, G in enumerate(sequence(m, steps=6)):
        sq_sum = G ** 2 if sq_sum is None else sq_sum + G ** 2
        risk = torch.stack([(G[i] / torch.sqrt(sq_sum[i] + 1e-7)) @ G[i] for i in range(m)])
        if baseline is None:
            baseline = risk
        else:
            libmtl_w = libmtl_w * torch.exp(eta * risk / baseline)
            libmtl_w = libmtl_w / libmtl_w.sum() * m
        w = ours.weights_for(G, robust_step_size=eta)
        torch.testing.assert_close(w, libmtl_w / m, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
        if step == 0:
            torch.testing.assert_close(w, torch.full((m,), 1.0 / m, dtype=torch.float64))


def test_task_further_from_convergence_gains_weight():
    """A task whose excess risk stays above its baseline while the other's shrinks is up-weighted."""
    ours = ExcessMTL()
    w = None
    for k in range(6):
        G = torch.stack([torch.full((10,), 1.0), torch.full((10,), 0.5 ** k)]).double()
        w = ours.weights_for(G, robust_step_size=1.0)
    assert w[0] > 0.5 > w[1]


@pytest.mark.parametrize("arch", ["HPS", "Cross_stitch", "MMoE"])
def test_weighted_loss_reaches_the_decoders(arch):
    """As LibMTL main: the update is the gradient of sum_i alpha_i L_i over the whole model, decoders included, also
    where task-specific parameters feed both tasks (Cross-stitch's columns, MMoE's gates); assembled from the two
    per-task backward passes (a hook on a shared parameter counts them), without LibMTL's third."""
    torch.manual_seed(0)
    built = build_mtl_model(arch, "ExcessMTL", "decoder1", num_classes=3, img_size=32, device=torch.device("cpu"),
                            weight_args={"ExcessMTL_warmup_steps": 0, "robust_step_size": 1.0})
    model = built.module.eval()  # eval: batch-norm statistics stay put, so the second forward equals the first
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)

    def losses():
        out = model(x)
        return torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                            nn.functional.mse_loss(out["reg"].reshape(-1), targets)])

    model.zero_grad(set_to_none=True)
    passes = []
    hook = next(iter(model.get_share_params())).register_hook(lambda g: passes.append(1))
    w = model.backward(losses(), **built.backward_kwargs)
    hook.remove()
    assert len(passes) == 2
    assert not torch.allclose(w, torch.full_like(w, 0.5))  # warmup 0: the first step already moves the weights
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = torch.autograd.grad((losses() * w).sum(), params, allow_unused=True)
    assert any(n.startswith("decoders") for n in got) and all(p.grad is not None for p in model.get_share_params())
    for n, e in zip(names, expected):
        if e is not None:
            torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-6)


def test_unknown_option_is_refused():
    with pytest.raises(ConfigError, match=r"weight_args\.ExcessMTL: unknown option 'ExcessMTL_robust_step_size'"):
        parse_spec({**ONE_CELL, "weight_args": {"ExcessMTL": {"ExcessMTL_robust_step_size": 0.1}}})
    assert parse_spec({**ONE_CELL, "weight_args": {"ExcessMTL": {"robust_step_size": 0.1}}}).weight_args == {
        "ExcessMTL": {"robust_step_size": 0.1}}


def test_end_to_end_step(hps_step):
    w, model = hps_step("ExcessMTL")
    assert w.shape == (2,) and torch.isfinite(w).all()
    torch.testing.assert_close(w, torch.full((2,), 0.5))  # the first step only sets the baseline (LibMTL main)
    assert model._excessmtl_state["n_steps"] == 1


@pytest.mark.parametrize("warmup", [1, 3])
def test_state_survives_the_checkpoint_attribute_saver(warmup):
    """The state is a plain dict attribute: saved by ``attribute_state``, through torch.save, into a fresh model, the
    sequence goes on as if uninterrupted (also in the middle of a warm-up)."""
    seq, opts = sequence(3, steps=6), {"robust_step_size": 0.5, "ExcessMTL_warmup_steps": warmup}
    whole = ExcessMTL()
    expected = [whole.weights_for(G, **opts) for G in seq]
    first = ExcessMTL()
    for G in seq[:2]:
        first.weights_for(G, **opts)
    buffer = io.BytesIO()
    torch.save(attribute_state(first), buffer)
    buffer.seek(0)
    resumed = ExcessMTL()
    load_attribute_state(resumed, torch.load(buffer, weights_only=False))
    for G, e in zip(seq[2:], expected[2:]):
        torch.testing.assert_close(resumed.weights_for(G, **opts), e)
