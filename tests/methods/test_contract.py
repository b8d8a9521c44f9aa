"""Contracts every registered method keeps, driven by the registries (``mtlbench.methods.registry``).

- every weighting trains LibMTL's HPS on a tiny encoder (the loss drops), and every weighting runs on CUDA under
  LTB, keeping its gradients and weights on the device;
- torchjd's property-tester style, on :mod:`method_probes`' contract probe (two tasks whose shared gradients are
  exactly a chosen pair ``g_1, g_2``), after one ``backward``: (a) the returned weights, if any, are finite; (b) the
  shared parameter's gradient is finite; (c) for the methods listed in :data:`CONIC`, that gradient lies in the cone
  of the task gradients, ``sum_i w_i g_i`` with ``w_i >= 0``.

Each weighting declares in its own file, with the trait ``conic``, why it promises a conic combination (or False);
:func:`test_every_weighting_is_classified` fails for a newly registered weighting that does not say.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from method_probes import (
    TinyEncoder,
    TinyResNet,
    build,
    contract_model,
    contract_input,
    contract_step,
    past_first_epochs,
    task_losses,
    toy_problem,
)
from scipy.optimize import nnls
from torch import nn

import mtlbench.methods  # noqa: F401  (imports every method module, so both registries are complete)
from mtlbench.libmtl_compat import compose
from mtlbench.methods.registry import ARCHITECTURES, WEIGHTINGS

#: Every weighting declares the trait ``conic`` where it registers: why its shared gradient is a conic combination
#: ``sum_i w_i g_i`` (``w_i >= 0``) of the current task gradients after one backward, or False where it promises none.
CONIC = {e.name: e.trait("conic") for e in WEIGHTINGS if e.trait("conic")}
NOT_CONIC = {e.name for e in WEIGHTINGS if e.trait("conic", None) is False}

#: (g_1, g_2) pairs: conflicting, aligned, badly scaled (1e4 apart) and nearly opposite task gradients.
GRADIENT_PAIRS = {
    "conflicting": [[1.0, 0.2, -0.5, 0.3, 0.0], [-0.8, 0.5, 0.4, -0.1, 0.2]],
    "aligned": [[1.0, 0.5, 0.2, 0.0, 0.1], [0.7, 0.9, -0.1, 0.3, 0.0]],
    "scaled": [[100.0, 3.0, -20.0, 5.0, 1.0], [-0.02, 0.05, 0.01, 0.0, -0.03]],
    "opposite": [[1.0, 0.0, 0.5, 0.0, 0.0], [-2.0, 0.01, -1.0, 0.0, 0.0]],
}

EPS = torch.finfo(torch.float32).eps


def weighting_ids(entries) -> list[str]:
    return [e.name for e in entries]


def seed_everything(seed: int = 0) -> None:
    """RLW draws with torch, GradDrop with ``torch.rand_like``, PCGrad / GradVac shuffle with ``random``."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def returns_device_tensor(entry) -> bool:
    """mtlbench's own weightings (written here or through torchjd) return their weights as a device tensor (no host
    sync per step); LibMTL 1.1.5's return a numpy array (GradDrop: None)."""
    return not entry.library.startswith("LibMTL")


def check_weights(entry, w, device: torch.device, task_num: int = 2) -> None:
    if returns_device_tensor(entry):
        assert isinstance(w, torch.Tensor) and w.shape == (task_num,) and w.device.type == device.type, (entry.name, w)
        assert torch.isfinite(w).all(), (entry.name, w)
    elif w is not None:
        w = np.asarray(w, dtype=np.float64)
        assert w.shape == (task_num,) and np.isfinite(w).all(), (entry.name, w)


def cone_residual(grads: torch.Tensor, combined: torch.Tensor) -> tuple[float, float]:
    """(distance of ``combined`` from the cone ``{G^T w : w >= 0}``, its float32 rounding tolerance).

    The distance is nonnegative least squares' residual (in float64, on the float32 task gradients the method saw).
    A conic combination formed in float32 from ``m`` products ``w_i g_i``, summed and stored, carries per coordinate
    at most ``m + 1`` roundings of relative size ``eps`` of the magnitude of its terms; in norm that is at most
    ``(m + 1) eps (sum_i w_i |g_i| + |d|)``, with ``w`` NNLS' weights (to first order)."""
    G = grads.double().numpy()
    d = combined.detach().double().cpu().numpy()
    w, residual = nnls(G.T, d)
    scale = float((w * np.linalg.norm(G, axis=1)).sum() + np.linalg.norm(d))
    return float(residual), (len(G) + 1) * float(EPS) * scale


# ---------------------------------------------------------------------------------------------------------------
# the classification itself
# ---------------------------------------------------------------------------------------------------------------

def test_every_weighting_is_classified():
    names = set(WEIGHTINGS.names())
    assert not set(CONIC) & set(NOT_CONIC)
    unclassified = names - set(CONIC) - set(NOT_CONIC)
    assert not unclassified, f"{sorted(unclassified)}: declare the trait conic=<why> or conic=False where they register"
    assert {"GradDrop", "Aligned-MTL"} <= NOT_CONIC and {"EW", "PCGrad", "UPGrad", "Nash-MTL"} <= set(CONIC)
    assert {"HPS", "LTB"} <= set(ARCHITECTURES.names())


# ---------------------------------------------------------------------------------------------------------------
# (a) finite weights, (b) finite shared gradient, (c) the cone of the task gradients
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", list(GRADIENT_PAIRS))
@pytest.mark.parametrize("entry", list(WEIGHTINGS), ids=weighting_ids(WEIGHTINGS))
def test_weights_and_shared_gradient_are_finite(entry, pair):
    grads = torch.tensor(GRADIENT_PAIRS[pair], dtype=torch.float32)
    seed_everything()
    model = contract_model(entry.obj, grads, rep_grad=bool(entry.trait("rep_grad", False)))
    w, shared = contract_step(model, **entry.defaults)
    check_weights(entry, w, torch.device("cpu"))                                            # (a)
    assert shared is not None and shared.shape == grads.shape[1:] and torch.isfinite(shared).all(), shared  # (b)
    for t in model.task_name:
        for p in model.decoders[t].parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (t, p.grad)


@pytest.mark.parametrize("pair", list(GRADIENT_PAIRS))
@pytest.mark.parametrize("entry", [e for e in WEIGHTINGS if e.name in CONIC],
                         ids=weighting_ids(e for e in WEIGHTINGS if e.name in CONIC))
def test_shared_gradient_is_a_conic_combination_of_the_task_gradients(entry, pair):
    grads = torch.tensor(GRADIENT_PAIRS[pair], dtype=torch.float32)
    seed_everything()
    model = contract_model(entry.obj, grads, rep_grad=bool(entry.trait("rep_grad", False)))
    _, shared = contract_step(model, **entry.defaults)
    residual, tol = cone_residual(grads, shared)
    assert residual <= tol, (entry.name, CONIC[entry.name], residual, tol)                   # (c)


SAMPLED = [e for e in WEIGHTINGS if e.trait("samples", 1) > 1]


def test_sampled_weightings_take_the_batches_the_registry_says():
    """The trait ``samples`` (what the trainer draws) and the class's sample roles (what its backward reads) agree."""
    for entry in WEIGHTINGS:
        roles = getattr(entry.obj, "SAMPLE_ROLES", None)
        assert entry.trait("samples", 1) == (max(roles) + 1 if roles else 1), entry.name
    assert {e.name for e in SAMPLED} >= {"MoDo", "SDMGrad"}


@pytest.mark.parametrize("pair", list(GRADIENT_PAIRS))
@pytest.mark.parametrize("entry", SAMPLED, ids=weighting_ids(SAMPLED))
def test_sampled_step_is_finite_and_conic(entry, pair):
    """(a)-(c) for a step on ``samples`` batches (a list of loss vectors, each with its own graph)."""
    grads = torch.tensor(GRADIENT_PAIRS[pair], dtype=torch.float32)
    seed_everything()
    model = contract_model(entry.obj, grads)
    model.zero_grad(set_to_none=True)
    losses = []
    for _ in range(entry.trait("samples")):
        out = model(contract_input(model))
        losses.append(torch.stack([out[t].sum() for t in model.task_name]))
    w = model.backward(losses, **entry.defaults)
    check_weights(entry, w, torch.device("cpu"))
    shared = model.encoder.theta.grad
    assert shared is not None and torch.isfinite(shared).all(), shared
    if entry.name in CONIC:
        residual, tol = cone_residual(grads, shared)
        assert residual <= tol, (entry.name, residual, tol)


def test_the_cone_check_rejects_a_non_conic_gradient():
    """The tolerance separates: GradDrop's per-coordinate masks leave the cone by far more than float32 rounding, and
    a combination with a negative weight is outside it."""
    grads = torch.tensor(GRADIENT_PAIRS["conflicting"], dtype=torch.float32)
    residual, tol = cone_residual(grads, grads[0] - 0.5 * grads[1])
    assert residual > 100 * tol
    residual, tol = cone_residual(grads, 0.3 * grads[0] + 2.0 * grads[1])
    assert residual <= tol
    entry = WEIGHTINGS.entry("GradDrop")
    seed_everything()
    model = contract_model(entry.obj, grads, rep_grad=True)
    _, shared = contract_step(model, **entry.defaults)
    residual, tol = cone_residual(grads, shared)
    assert residual > 100 * tol


# ---------------------------------------------------------------------------------------------------------------
# every weighting in training (HPS, tiny encoder)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", list(WEIGHTINGS), ids=weighting_ids(WEIGHTINGS))
def test_weighting_trains_hps(entry):
    torch.manual_seed(0)
    random.seed(0)
    model = build(ARCHITECTURES.get("HPS"), entry.obj, TinyEncoder, TinyEncoder.feature_dim,
                  rep_grad=bool(entry.trait("rep_grad", False)))
    model.train()
    past_first_epochs(model)  # GradNorm / DWA run their weighting step (GradNorm's loss_scale gets a gradient)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y_cls, y_reg = toy_problem()
    history = []
    samples = entry.trait("samples", 1)
    for step in range(15):
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(model, x, y_cls, y_reg)
        history.append(float(losses.detach().sum()))
        if samples > 1:   # as many batches as it takes a step: the toy set's thirds, each with its own graph
            losses = [task_losses(model, xs, cs, rs) for xs, cs, rs in
                      zip(x.chunk(samples), y_cls.chunk(samples), y_reg.chunk(samples))]
        w = model.backward(losses, **entry.defaults)
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            check_weights(entry, w, torch.device("cpu"))
        optimizer.step()
    with torch.no_grad():
        final = float(task_losses(model, x, y_cls, y_reg).sum())
    assert final < 0.9 * history[0], (history[0], final)


# ---------------------------------------------------------------------------------------------------------------
# device-agnostic (runs where CUDA is available)
# ---------------------------------------------------------------------------------------------------------------

def ltb_two_steps(entry, dev: torch.device):
    """Two backward steps of LTB x ``entry`` on ``dev``: (last returned weights, model)."""
    decoders = nn.ModuleDict({t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n))
                              for t, n in (("cls", 3), ("reg", 1))})
    model = compose(ARCHITECTURES.get("LTB"), entry.obj)(task_name=["cls", "reg"], encoder_class=TinyResNet,
                                                          decoders=decoders,
                                                          rep_grad=bool(entry.trait("rep_grad", False)),
                                                          multi_input=False, device=dev).to(dev)
    past_first_epochs(model)
    x, y_cls, y_reg = (t.to(dev) for t in toy_problem(4, 32))
    for _ in range(2):  # the second step exercises the state kept across steps
        model.zero_grad(set_to_none=True)
        w = model.backward(task_losses(model, x, y_cls, y_reg), **entry.defaults)
    return w, model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("entry", list(WEIGHTINGS), ids=weighting_ids(WEIGHTINGS))
def test_methods_on_cuda(entry):
    seed_everything()
    w, model = ltb_two_steps(entry, torch.device("cuda"))
    check_weights(entry, w, torch.device("cuda"))
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.device.type == "cuda" and torch.isfinite(p.grad).all(), name
