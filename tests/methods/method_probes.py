"""Shared probes for the method tests in this folder (imported as ``from method_probes import ...``; pytest's
default import mode puts this folder on ``sys.path``, and it is deliberately not a ``conftest.py``, which would
shadow ``tests/conftest.py`` for ``from conftest import run_cli``).

- :class:`Probe` / :func:`probe_model` / :func:`probe_step`: a shared vector theta with losses ``L_i = g_i . theta +
  head_i``, so the shared gradients are exactly the rows of a chosen Jacobian ``G`` (float64).
- :class:`ContractProbe` / :func:`contract_model` / :func:`contract_step`: the same idea through a real forward
  pass (so representation-gradient methods work too), in float32, for the registry-wide contract tests.
- :class:`TinyEncoder`, :class:`TinyResNet`, :func:`toy_problem`, :func:`build`, :func:`task_losses`: small networks
  and data for training checks.
- :func:`arch_batch`, :func:`arch_losses`, :func:`two_heads`, :func:`step_moves`: what the architecture tests share
  (a random two-task batch, its two losses, the two heads, one checked optimiser step).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_architecture

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# a shared parameter vector with exactly controlled task gradients (float64)
# ---------------------------------------------------------------------------------------------------------------

class Probe(nn.Module):
    """A shared parameter vector theta: with losses L_i = g_i . theta + head_i the shared gradients are exactly G."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))


def probe_model(weighting: type, grads: torch.Tensor):
    task_num, dim = grads.shape
    tasks = [f"t{i}" for i in range(task_num)]
    decoders = nn.ModuleDict({t: nn.Linear(1, 1, bias=False).double() for t in tasks})
    model = compose(libmtl_architecture.HPS, weighting)(task_name=tasks, encoder_class=lambda: Probe(dim),
                                                         decoders=decoders, rep_grad=False, multi_input=False,
                                                         device=CPU)
    with torch.no_grad():
        for t in tasks:
            model.decoders[t].weight.zero_()  # losses = G theta + offset exactly (theta starts at 0)
    return model


def probe_losses(model, grads: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    heads = torch.stack([model.decoders[t].weight.sum() for t in model.task_name])
    losses = grads @ model.encoder.theta + heads
    return losses + offset if offset is not None else losses


def probe_step(model, grads: torch.Tensor, offset: torch.Tensor | None = None, **kwargs):
    for p in model.parameters():
        p.grad = None
    w = model.backward(probe_losses(model, grads, offset), **kwargs)
    # mtlbench's weightings return a device tensor (no host sync per step); numpy here for the references.
    assert isinstance(w, torch.Tensor) and w.device == grads.device
    return model.encoder.theta.grad.clone(), w.cpu().numpy()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def random_jacobian(task_num: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.rand(task_num, 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    return torch.randn(task_num, dim, generator=gen, dtype=torch.float64) * scales


# ---------------------------------------------------------------------------------------------------------------
# the contract probe: controlled task gradients through a real HPS forward (float32, any registered weighting)
# ---------------------------------------------------------------------------------------------------------------

class ContractProbe(nn.Module):
    """An encoder whose representation is its shared parameter vector theta itself (one row per input)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.unsqueeze(0).expand(x.shape[0], -1)


def contract_model(weighting: type, grads: torch.Tensor, *, rep_grad: bool = False, seed: int = 0):
    """HPS x ``weighting`` whose task losses on :func:`contract_input` are ``L_i = g_i . theta + b_i`` (decoder i is a
    linear map with weight ``g_i``): the shared gradient of task i is exactly ``grads[i]`` (float32), also as a
    representation gradient. theta starts random and nonzero (GradDrop reads the representation's sign), the biases
    make every loss positive (GLS takes their product's root, MGDA-loss and MoCo divide or scale by them). The model
    is placed past its first epochs (:func:`past_first_epochs`)."""
    task_num, dim = grads.shape
    tasks = [f"t{i}" for i in range(task_num)]
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, generator=gen, dtype=grads.dtype)
    decoders = nn.ModuleDict({t: nn.Linear(dim, 1).to(grads.dtype) for t in tasks})
    model = compose(libmtl_architecture.HPS, weighting)(task_name=tasks, encoder_class=lambda: ContractProbe(theta),
                                                         decoders=decoders, rep_grad=rep_grad, multi_input=False,
                                                         device=CPU)
    with torch.no_grad():
        for i, t in enumerate(tasks):
            model.decoders[t].weight.copy_(grads[i].unsqueeze(0))
            model.decoders[t].bias.fill_(float((grads[i] @ theta).abs()) + 1.0)
    model.train()
    return past_first_epochs(model)


def past_first_epochs(model):
    """``model`` at its third epoch (of three) with a recorded loss history: GradNorm (epoch >= 1) and DWA
    (epoch > 1) then run their weighting step instead of their first epochs' equal weighting; the other methods
    do not read the epoch. Returns ``model``."""
    task_num = len(model.task_name)
    model.epochs, model.epoch = 3, 2
    model.train_loss_buffer = np.array([[2.0, 1.5, 0.0], [1.0, 0.9, 0.0]][:task_num]
                                       + [[1.0, 1.0, 0.0]] * max(0, task_num - 2))
    return model


def contract_input(model) -> torch.Tensor:
    return torch.zeros(1, 1, dtype=model.encoder.theta.dtype)


def contract_step(model, **kwargs):
    """One ``backward`` on the contract model: (returned weights, the shared parameter's gradient)."""
    model.zero_grad(set_to_none=True)
    out = model(contract_input(model))
    losses = torch.stack([out[t].sum() for t in model.task_name])
    w = model.backward(losses, **kwargs)
    return w, model.encoder.theta.grad


# ---------------------------------------------------------------------------------------------------------------
# small networks and data for training checks
# ---------------------------------------------------------------------------------------------------------------

class TinyEncoder(nn.Module):
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyResNet(nn.Module):
    """The attribute layout of a ResNet trunk (conv1, bn1, relu, maxpool, layer1..layer4) at a fraction of the cost."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), \
            nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def toy_problem(n: int = 32, side: int = 8):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, side, side, generator=gen)
    y_cls = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 2].mean((1, 2)) > 0).long()  # 3 classes
    y_reg = x[:, 1].mean((1, 2), keepdim=False).unsqueeze(1) * 3
    return x, y_cls, y_reg


def build(arch: type, weighting: type, encoder_class, feature_dim: int, pool: bool = False, rep_grad: bool = False,
          **arch_kwargs):
    def head(n_out: int) -> nn.Module:  # feature maps (ResNet trunks) are pooled first
        linear = nn.Linear(feature_dim, n_out)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear) if pool else linear

    decoders = nn.ModuleDict({"cls": head(3), "reg": head(1)})
    return compose(arch, weighting)(task_name=["cls", "reg"], encoder_class=encoder_class, decoders=decoders,
                                    rep_grad=rep_grad, multi_input=False, device=CPU, **arch_kwargs)


def task_losses(model, x, y_cls, y_reg) -> torch.Tensor:
    out = model(x)
    return torch.stack([nn.functional.cross_entropy(out["cls"], y_cls), nn.functional.mse_loss(out["reg"], y_reg)])


# ---------------------------------------------------------------------------------------------------------------
# architecture tests: a random two-task batch, its task losses, the two heads, one checked step
# ---------------------------------------------------------------------------------------------------------------

def arch_batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, class labels (3 classes) and regression targets, from a fixed generator."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, size, size, generator=gen), torch.tensor([0, 1, 2, 0][:n]),
            torch.randn(n, generator=gen))


def arch_losses(out: dict[str, torch.Tensor], labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[cross-entropy, MSE] of a two-task model's outputs."""
    return torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                        nn.functional.mse_loss(out["reg"].reshape(-1), targets)])


def two_heads(decoder: str = "decoder1", num_classes: int = 3) -> nn.ModuleDict:
    from mtlbench.models.decoders import build_decoder

    return nn.ModuleDict({"cls": build_decoder(decoder, num_classes), "reg": build_decoder(decoder, 1)})


def step_moves(model: nn.Module, backward_kwargs: dict, x: torch.Tensor, labels: torch.Tensor,
               targets: torch.Tensor, watched: list[torch.Tensor], what: str) -> None:
    """One SGD step of a composed model: finite losses, every shared parameter and no other given a finite gradient
    by the weighting, and every ``watched`` parameter moved."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in watched]
    opt.zero_grad(set_to_none=True)
    losses = arch_losses(model(x), labels, targets)
    model.backward(losses, **backward_kwargs)
    assert torch.isfinite(losses).all(), what
    assert all(p.grad is not None for p in model.get_share_params()), what
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), what
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, watched)), what


def graddrop_leak_one_equals_ew(model: nn.Module, reference: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                                targets: torch.Tensor) -> None:
    """GradDrop with leak 1 keeps every representation gradient: ``model`` (GradDrop, rep_grad) must then give the
    gradients of ``reference`` (the same weights under EW), up to float32 round-off from a different summation order
    (a backward pass per task into the trunk instead of one). Call after seeding the RNG before ``model(x)``."""
    out = model(x)
    model.zero_grad(set_to_none=True)
    model.backward(arch_losses(out, labels, targets), leak=1.0)
    reference.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    reference.backward(arch_losses(reference(x), labels, targets))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()), msg=name)


# ---------------------------------------------------------------------------------------------------------------
# a method rewritten from LibMTL 1.1.5's against LibMTL's own class
# ---------------------------------------------------------------------------------------------------------------

def assert_equals_stock(ours: type, stock: type, task_num: int, seed: int, steps: int = 4, rtol: float = 1e-7,
                        offset: torch.Tensor | None = None, dtype: torch.dtype = torch.float64, **kwargs) -> None:
    """``ours`` and LibMTL's ``stock`` class on the probe, over ``steps`` steps of random task gradients (float64),
    with the same ``random`` draws: equal shared gradients and weights to ``rtol`` (float64 rounding by default; a
    method with float32 state passes a bound for that state's rounding). ``offset`` is added to the losses; ``dtype``
    float32 for a stock class that runs only in float32."""
    import random

    gen = torch.Generator().manual_seed(seed)
    seq = [random_jacobian(task_num, 20, seed + 100 * k) * torch.randn(task_num, 1, generator=gen, dtype=torch.float64)
           .sign() for k in range(steps)]
    seq = [G.to(dtype) for G in seq]
    offset = offset.to(dtype) if offset is not None else None
    a, b = probe_model(ours, seq[0]).to(dtype), probe_model(stock, seq[0]).to(dtype)
    b.load_state_dict(a.state_dict())
    for k, G in enumerate(seq):
        random.seed(seed * 1000 + k)
        g_a, w_a = probe_step(a, G, offset, **kwargs)
        random.seed(seed * 1000 + k)
        for p in b.parameters():
            p.grad = None
        w_b = np.asarray(b.backward(probe_losses(b, G, offset), **kwargs), dtype=np.float64)
        g_b = b.encoder.theta.grad
        torch.testing.assert_close(g_a, g_b, rtol=rtol, atol=rtol * 1e-2 * float(g_b.abs().max()))
        np.testing.assert_allclose(w_a, w_b, rtol=rtol, atol=rtol * 1e-2)
