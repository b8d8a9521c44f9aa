"""The methods written here (LTB, Nash-MTL, MoCo, Aligned-MTL) against independent references and in training.

References: torchjd's aggregators (NashMTL, AlignedMTL) on random Jacobians, an exact convex reformulation of the
Nash bargaining equation (scipy), hand-computed MoCo recursions (numpy), the papers' defining properties, and one
training step / a few steps of LibMTL's HPS (and EW / PCGrad for LTB) composed as mtlbench's loop does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from mtlbench.libmtl_compat import compose, libmtl_architecture, libmtl_weighting
from mtlbench.methods.aligned_mtl import ALIGNED_MTL_DEFAULTS, Aligned_MTL, aligned_weights
from mtlbench.methods.ltb import LTB, LTB_DEFAULTS
from mtlbench.methods.moco import MOCO_DEFAULTS, MoCo, project_simplex
from mtlbench.methods.nash_mtl import NASH_MTL_DEFAULTS, Nash_MTL
from mtlbench.models.encoder import EncoderFactory, ResNet18Trunk

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# helpers
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


class TinyEncoder(nn.Module):
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def toy_problem(n: int = 32, side: int = 8):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, side, side, generator=gen)
    y_cls = (x[:, 0].mean((1, 2)) > 0).long() + (x[:, 2].mean((1, 2)) > 0).long()  # 3 classes
    y_reg = x[:, 1].mean((1, 2), keepdim=False).unsqueeze(1) * 3
    return x, y_cls, y_reg


def build(arch: type, weighting: type, encoder_class, feature_dim: int, pool: bool = False, **arch_kwargs):
    def head(n_out: int) -> nn.Module:  # feature maps (ResNet trunks) are pooled first
        linear = nn.Linear(feature_dim, n_out)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear) if pool else linear

    decoders = nn.ModuleDict({"cls": head(3), "reg": head(1)})
    return compose(arch, weighting)(task_name=["cls", "reg"], encoder_class=encoder_class, decoders=decoders,
                                    rep_grad=False, multi_input=False, device=CPU, **arch_kwargs)


def task_losses(model, x, y_cls, y_reg) -> torch.Tensor:
    out = model(x)
    return torch.stack([nn.functional.cross_entropy(out["cls"], y_cls), nn.functional.mse_loss(out["reg"], y_reg)])


# ---------------------------------------------------------------------------------------------------------------
# Nash-MTL
# ---------------------------------------------------------------------------------------------------------------

def nash_reference(gram: np.ndarray) -> np.ndarray:
    """G G^T alpha = 1/alpha is the stationarity condition of the strictly convex 0.5 a^T M a - sum log a."""
    res = minimize(lambda a: 0.5 * a @ gram @ a - np.log(a).sum(), 1 / np.sqrt(np.diag(gram)),
                   jac=lambda a: gram @ a - 1 / a, bounds=[(1e-12, None)] * len(gram), method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    return res.x


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")
@pytest.mark.parametrize("task_num", [2, 3])
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_matches_torchjd(task_num, max_norm):
    pytest.importorskip("ecos")  # torchjd's NashMTL solves with ECOS
    from torchjd.aggregation import NashMTL

    for seed in range(3):
        grads = random_jacobian(task_num, 40, seed)
        model = probe_model(Nash_MTL, grads)
        ours, _ = probe_step(model, grads, max_norm=max_norm)
        ref = NashMTL(n_tasks=task_num, max_norm=max_norm)(grads)
        assert cos(ours, ref) > 0.999
        assert torch.allclose(ours.norm(), ref.norm(), rtol=1e-3)


@pytest.mark.parametrize("task_num", [2, 3])
def test_nash_fixed_point_and_exact_solution(task_num):
    for seed in range(3):
        grads = random_jacobian(task_num, 40, 10 + seed)
        grads[0] *= 1e-3  # badly scaled tasks, where the normalisation matters
        if task_num == 3:
            grads[2] = -0.8 * grads[1] + 0.3 * grads[2] / grads[2].norm() * grads[1].norm()  # conflicting
        model = probe_model(Nash_MTL, grads)
        direction, w = probe_step(model, grads, max_norm=0.0)
        gram = (grads @ grads.t()).numpy()
        assert np.max(np.abs(w * (gram @ w) - 1)) < 1e-3  # alpha_i (G G^T alpha)_i = 1
        np.testing.assert_allclose(w, nash_reference(gram), rtol=1e-3)
        assert torch.allclose(direction, torch.from_numpy(w) @ grads)
        assert abs(float(direction.norm()) - np.sqrt(task_num)) < 1e-3  # ||G^T alpha||^2 = task_num


@pytest.mark.parametrize("every", [1, 3])
def test_nash_task_specific_gradients_plain_option(every):
    """``task_specific_grads = "plain"``: decoders keep their unweighted task gradient (mtlbench's old convention),
    on solving steps and on steps that reuse alpha; the shared gradient is the same either way."""
    grads = random_jacobian(2, 20, 3)
    shared = {}
    for mode in ("plain", "weighted"):
        model = probe_model(Nash_MTL, grads)
        for _ in range(2):
            direction, w = probe_step(model, grads, max_norm=0.0, update_weights_every=every, task_specific_grads=mode)
        shared[mode] = direction
        for i, t in enumerate(model.task_name):
            want = 1.0 if mode == "plain" else w[i]
            assert float(model.decoders[t].weight.grad) == pytest.approx(want, rel=1e-6)
    assert torch.allclose(shared["plain"], shared["weighted"])
    with pytest.raises(ValueError, match="task_specific_grads"):
        probe_step(probe_model(Nash_MTL, grads), grads, task_specific_grads="both")


def test_nash_decoder_gradient_is_alpha_times_its_task_gradient_in_a_network():
    """HPS + Nash-MTL on a real ResNet-18 batch: each decoder's gradient equals alpha_i times the gradient of its own
    task loss alone, to float32 rounding."""
    from mtlbench.models.mtl import build_mtl_model

    torch.manual_seed(0)
    built = build_mtl_model("HPS", "Nash-MTL", "decoder1", num_classes=3, img_size=32, device=CPU)
    model = built.module.train()
    x, labels, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.randn(4)

    def losses():
        torch.manual_seed(1)  # the same dropout masks in both passes
        out = model(x)
        return torch.stack([nn.functional.cross_entropy(out["cls"], labels),
                            nn.functional.mse_loss(out["reg"].reshape(-1), targets)])

    plain = {}
    for i, task in enumerate(model.task_name):
        model.zero_grad(set_to_none=True)
        losses()[i].backward()
        plain[task] = [p.grad.clone() for p in model.decoders[task].parameters()]
    model.zero_grad(set_to_none=True)
    model.backward(losses(), **built.backward_kwargs)
    alpha = model._nash_alpha
    for i, task in enumerate(model.task_name):
        for p, g in zip(model.decoders[task].parameters(), plain[task]):
            torch.testing.assert_close(p.grad, alpha[i] * g, rtol=1e-5, atol=1e-7)


def test_nash_clipping_and_reused_weights():
    grads = random_jacobian(2, 20, 3)
    model = probe_model(Nash_MTL, grads)
    direction, w = probe_step(model, grads, max_norm=1.0)
    assert abs(float(direction.norm()) - 1.0) < 1e-6  # sqrt(2) clipped to 1
    assert torch.allclose(direction, torch.from_numpy(w) @ grads)  # returned weights include the clip factor
    alpha = model._nash_alpha.numpy()  # before clipping
    assert np.all(alpha > w)  # the clip factor < 1 is in w, not in alpha
    for i, t in enumerate(model.task_name):  # task-specific gradients: alpha_i times the task's own (LibMTL main)
        assert float(model.decoders[t].weight.grad) == pytest.approx(alpha[i], rel=1e-6)

    # update_weights_every=3: steps 2 and 3 reuse step 1's alpha on new gradients (one backward of sum alpha_i L_i)
    model = probe_model(Nash_MTL, grads)
    kw = {"update_weights_every": 3, "max_norm": 0.0}
    _, w1 = probe_step(model, grads, **kw)
    new = random_jacobian(2, 20, 4)
    d2, w2 = probe_step(model, new, **kw)
    np.testing.assert_allclose(w2, w1)
    assert torch.allclose(d2, torch.from_numpy(w1) @ new)
    for i, t in enumerate(model.task_name):
        assert float(model.decoders[t].weight.grad) == pytest.approx(w1[i], rel=1e-6)
    probe_step(model, new, **kw)
    _, w4 = probe_step(model, new, **kw)  # step 4 solves again, for the new gradients
    gram = (new @ new.t()).numpy()
    assert np.max(np.abs(w4 * (gram @ w4) - 1)) < 1e-3


# ---------------------------------------------------------------------------------------------------------------
# Aligned-MTL
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task_num", [2, 3])
def test_aligned_matches_torchjd(task_num):
    from torchjd.aggregation import AlignedMTL

    for seed in range(3):
        grads = random_jacobian(task_num, 30, 20 + seed)
        model = probe_model(Aligned_MTL, grads)
        ours, w = probe_step(model, grads)
        # torchjd's default preference vector is the mean (1/m): ours sums the aligned gradients (w = 1).
        ref = AlignedMTL(pref_vector=torch.ones(task_num, dtype=torch.float64))(grads)
        assert cos(ours, ref) > 0.999999
        assert torch.allclose(ours.norm(), ref.norm(), rtol=1e-6)
        assert torch.allclose(ours, torch.from_numpy(w) @ grads)


def test_aligned_rank_deficient_matches_torchjd():
    from torchjd.aggregation import AlignedMTL

    grads = random_jacobian(3, 30, 5)
    grads[2] = 0.5 * grads[0] - 2.0 * grads[1]  # rank 2
    ours = aligned_weights(grads) @ grads
    ref = AlignedMTL(pref_vector=torch.ones(3, dtype=torch.float64))(grads)
    assert torch.isfinite(ours).all()
    assert cos(ours, ref) > 0.999999


@pytest.mark.parametrize("task_num", [2, 3])
def test_aligned_equal_norms_and_projections(task_num):
    grads = random_jacobian(task_num, 30, 30 + task_num)
    eye = torch.eye(task_num, dtype=torch.float64)
    balance = torch.stack([aligned_weights(grads, task_weights=eye[j]) for j in range(task_num)], dim=1)  # B
    assert torch.allclose(balance, balance.t(), atol=1e-10)
    aligned = balance @ grads  # rows: aligned task gradients
    gram = aligned @ aligned.t()
    lam_min = torch.linalg.eigvalsh(grads @ grads.t()).min()
    assert torch.allclose(gram, lam_min * eye, rtol=1e-8, atol=1e-8 * float(lam_min))  # orthogonal, equal norms
    direction = aligned.sum(0)
    assert torch.allclose(aligned @ direction, lam_min.expand(task_num), rtol=1e-8)  # equal projections
    assert torch.allclose(aligned_weights(grads) @ grads, direction)


def test_aligned_zero_gradients_are_finite():
    w = aligned_weights(torch.zeros(2, 10))
    assert torch.equal(w, torch.zeros(2))


# ---------------------------------------------------------------------------------------------------------------
# MoCo
# ---------------------------------------------------------------------------------------------------------------

def test_project_simplex_against_bisection():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 3, 7):
        for _ in range(20):
            v = torch.randn(n, generator=gen, dtype=torch.float64) * 3
            lo, hi = float(v.min()) - 1, float(v.max())
            for _ in range(200):  # theta with sum(max(v - theta, 0)) = 1
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if torch.clamp(v - mid, min=0).sum() > 1 else (lo, mid)
            assert torch.allclose(project_simplex(v), torch.clamp(v - lo, min=0), atol=1e-9)


def moco_reference(grad_seq, loss_seq, normalize, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
                   update="projection"):
    """Fernando et al. (2023), Algorithm 1, by hand: Y_0 = 0, lambda_0 = 1/2 (2 tasks); ``update="softmax"`` is
    LibMTL main's lambda step instead of the projection."""
    y, lam, out = np.zeros_like(grad_seq[0]), np.array([0.5, 0.5]), []
    for k, (g, loss) in enumerate(zip(grad_seq, loss_seq), start=1):
        if normalize:
            g = g / np.linalg.norm(g, axis=1, keepdims=True) * loss[:, None]
        beta_k, gamma_k = beta / k ** beta_sigma, gamma / k ** gamma_sigma
        y = y - beta_k * (y - g)
        u = lam - gamma_k * (y @ y.T + rho * np.eye(2)) @ lam
        if update == "softmax":
            lam = np.exp(u) / np.exp(u).sum()
        else:  # projection of a 2-vector onto the simplex: closed form
            t = np.clip((u[0] - u[1] + 1) / 2, 0, 1)
            lam = np.array([t, 1 - t])
        out.append((y.copy(), lam.copy(), y.T @ lam))
    return out


@pytest.mark.parametrize("normalize,update", [(False, "projection"), (True, "projection"), (True, "softmax")])
def test_moco_matches_hand_computation(normalize, update):
    rng = np.random.default_rng(1)
    grad_seq = [rng.normal(size=(2, 6)) * np.array([[3.0], [0.5]]) for _ in range(3)]
    offsets = [np.array([2.0, 0.7]), np.array([1.5, 0.9]), np.array([1.2, 0.4])]
    kw = {"MoCo_beta": 0.5, "MoCo_beta_sigma": 0.5, "MoCo_gamma": 0.1, "MoCo_gamma_sigma": 0.5, "MoCo_rho": 0.1,
          "MoCo_normalize": normalize, "MoCo_lambda_update": update}
    model = probe_model(MoCo, torch.from_numpy(grad_seq[0]))
    expected = moco_reference(grad_seq, offsets, normalize, rho=0.1, update=update)  # theta = 0, zero heads: losses = offsets
    for step, (g, off) in enumerate(zip(grad_seq, offsets)):
        direction, lam = probe_step(model, torch.from_numpy(g), torch.from_numpy(off), **kw)
        y_exp, lam_exp, d_exp = expected[step]
        np.testing.assert_allclose(model.moco_y.numpy(), y_exp, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lam, lam_exp, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(direction.numpy(), d_exp, rtol=1e-10, atol=1e-12)
        for t in model.task_name:
            assert float(model.decoders[t].weight.grad) == pytest.approx(1.0)
    assert model.moco_k == 3
    assert not np.allclose(expected[-1][1], [0.5, 0.5])  # lambda actually moved


def test_moco_lambda_updates_differ_and_unknown_one_is_refused():
    """The paper's projection reaches the simplex's boundary; LibMTL main's softmax never does."""
    grads = torch.tensor([[10.0, 0.0], [0.0, 0.1]], dtype=torch.float64)
    lams = {}
    for update in ("projection", "softmax"):
        model = probe_model(MoCo, grads)
        for _ in range(5):
            _, lams[update] = probe_step(model, grads, torch.tensor([1.0, 1.0], dtype=torch.float64),
                                         MoCo_normalize=False, MoCo_gamma=1.0, MoCo_lambda_update=update)
    assert lams["projection"].min() == 0.0 and lams["softmax"].min() > 0.0
    with pytest.raises(ValueError, match="MoCo_lambda_update"):
        probe_step(probe_model(MoCo, grads), grads, torch.tensor([1.0, 1.0], dtype=torch.float64),
                   MoCo_lambda_update="sigmoid")


def test_moco_rejects_rep_grad():
    model = compose(libmtl_architecture.HPS, MoCo)(task_name=["cls", "reg"], encoder_class=TinyEncoder,
                                                   decoders=nn.ModuleDict({"cls": nn.Linear(8, 3),
                                                                           "reg": nn.Linear(8, 1)}),
                                                   rep_grad=True, multi_input=False, device=CPU)
    x, y_cls, y_reg = toy_problem(4)
    with pytest.raises(ValueError, match="representation"):
        model.backward(task_losses(model, x, y_cls, y_reg))


# ---------------------------------------------------------------------------------------------------------------
# the three weightings in training (HPS, tiny encoder)
# ---------------------------------------------------------------------------------------------------------------

WEIGHTINGS = {Nash_MTL: NASH_MTL_DEFAULTS, MoCo: MOCO_DEFAULTS, Aligned_MTL: ALIGNED_MTL_DEFAULTS}


@pytest.mark.parametrize("weighting", list(WEIGHTINGS), ids=lambda w: w.__name__)
def test_weighting_trains_hps(weighting):
    torch.manual_seed(0)
    model = build(libmtl_architecture.HPS, weighting, TinyEncoder, TinyEncoder.feature_dim)
    model.train()
    model.epochs = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, y_cls, y_reg = toy_problem()
    history = []
    for step in range(15):
        optimizer.zero_grad(set_to_none=True)
        losses = task_losses(model, x, y_cls, y_reg)
        history.append(float(losses.detach().sum()))
        w = model.backward(losses, **WEIGHTINGS[weighting])
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert isinstance(w, torch.Tensor) and w.shape == (2,) and torch.isfinite(w).all()
        optimizer.step()
    with torch.no_grad():
        final = float(task_losses(model, x, y_cls, y_reg).sum())
    assert final < 0.9 * history[0], (history[0], final)


def test_aligned_rep_grad_variant():
    model = compose(libmtl_architecture.HPS, Aligned_MTL)(task_name=["cls", "reg"], encoder_class=TinyEncoder,
                                                          decoders=nn.ModuleDict({"cls": nn.Linear(8, 3),
                                                                                  "reg": nn.Linear(8, 1)}),
                                                          rep_grad=True, multi_input=False, device=CPU)
    x, y_cls, y_reg = toy_problem(8)
    w = model.backward(task_losses(model, x, y_cls, y_reg))
    assert w.shape == (2,) and torch.isfinite(w).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# LTB
# ---------------------------------------------------------------------------------------------------------------

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


def ltb_model(weighting: type = libmtl_weighting.EW, resnet18: bool = False, **kwargs):
    torch.manual_seed(0)
    if resnet18:
        return build(LTB, weighting, EncoderFactory(pretrained=False), ResNet18Trunk.feature_dim, pool=True,
                     **kwargs)
    return build(LTB, weighting, TinyResNet, TinyResNet.feature_dim, pool=True, **kwargs)


def test_ltb_defaults_and_size():
    # LibMTL main's training by default (hard samples, its temperature, its warm-up); the argmax tree at evaluation
    assert LTB_DEFAULTS["gumbel_hard"] is True and LTB_DEFAULTS["tau_schedule"] == "libmtl"
    assert LTB_DEFAULTS["warmup_fraction"] == 0.01 and LTB_DEFAULTS["eval_tree"] == "argmax"
    model = ltb_model(resnet18=True)
    resnet = sum(p.numel() for p in ResNet18Trunk().parameters())
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert encoder == 2 * resnet + 4 * 2 * 2  # task_num ResNet-18 trunks + the branching logits
    assert sum(p.numel() for p in model.get_share_params()) == encoder


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
def test_ltb_per_task_outputs_and_gradients(hard):
    model = ltb_model(gumbel_hard=hard)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    reps = model.encoder(x)
    assert isinstance(reps, list) and len(reps) == 2 and all(r.shape == (4, 16, 4, 4) for r in reps)
    out = model(x)
    assert set(out) == {"cls", "reg"} and out["cls"].shape == (4, 3)
    losses = task_losses(model, x, torch.tensor([0, 1, 2, 0]), torch.randn(4, 1))
    model.backward(losses)
    for name, p in model.encoder.named_parameters():
        # A hard sample leaves branches that no child chose out of this forward; each task's last stage is its own.
        if not hard or name.startswith("stages.4.") or name == "alpha":
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    grad = model.encoder.alpha.grad.abs()
    # Soft: every branching logit is learned. Hard (straight-through): the logits of every child that the sample
    # uses downstream, at least those of the last stage, which feeds the tasks.
    assert (grad.min() if not hard else grad[-1].min()) > 0


def test_ltb_eval_is_a_deterministic_tree():
    model = ltb_model()
    with torch.no_grad():
        model.encoder.alpha.copy_(torch.tensor([[[0.0, 1.0], [0.0, 1.0]],   # stage 1: both children read branch 1
                                                [[1.0, 0.0], [0.0, 1.0]],
                                                [[1.0, 0.0], [1.0, 0.0]],   # stage 3: both read branch 0
                                                [[0.0, 1.0], [1.0, 0.0]]]))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model.encoder(x), model.encoder(x)
        for a, b in zip(first, second):
            assert torch.equal(a, b)
        assert model.encoder.tree() == [[1, 1], [0, 1], [0, 0], [1, 0]]
        stages = model.encoder.stages
        h = stages[0][1](x)  # path of task 0: stem 1 -> layer1 of child 0 -> ... following the argmax parents
        h1 = [stages[1][0](h), stages[1][1](h)]
        h2 = [stages[2][0](h1[0]), stages[2][1](h1[1])]
        h3 = [stages[3][0](h2[0]), stages[3][1](h2[0])]
        expected = [stages[4][0](h3[1]), stages[4][1](h3[0])]
        for got, exp in zip(first, expected):
            assert torch.allclose(got, exp, atol=1e-5)
        assert not torch.allclose(first[0], first[1])  # different tasks read different leaves


def test_ltb_temperature_schedules():
    model = ltb_model()
    assert model.current_tau() == 5.0  # model.epochs unset: tau_init
    model.epochs = 100
    for epoch in (0, 3, 99):  # LibMTL main: tau(e) = (E / 20) / sqrt(e + 1), 5 -> 0.5 over 100 epochs
        model.epoch = epoch
        assert model.current_tau() == pytest.approx((100 / 20) / np.sqrt(epoch + 1), rel=1e-12)
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert model.encoder.tau == pytest.approx(0.5)

    model = ltb_model(tau_schedule="exponential", tau_init=5.0, tau_min=0.1)  # mtlbench 0.1's
    model.epochs = 10
    taus = []
    for epoch in range(10):
        model.epoch = epoch
        taus.append(model.current_tau())
    assert taus[0] == pytest.approx(5.0) and taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(taus, taus[1:]))
    with pytest.raises(ValueError):
        ltb_model(tau_init=0.1, tau_min=1.0)
    with pytest.raises(ValueError, match="tau_schedule"):
        ltb_model(tau_schedule="linear")


def _plain_sum_forward(model, x: torch.Tensor) -> list[torch.Tensor]:
    stages = model.encoder.stages
    outs = [branch(x) for branch in stages[0]]
    for s in range(1, len(stages)):
        total = sum(outs)
        outs = [branch(total) for branch in stages[s]]
    return outs


def test_ltb_warmup_reads_the_plain_sum_of_the_previous_stage():
    model = ltb_model()
    model.train()
    model.epochs, model.epoch = 300, 2  # 2 < 300 / 100: warm-up
    assert model.in_warmup()
    x = torch.randn(4, 3, 32, 32)
    model.encoder.warmup = True
    torch.manual_seed(5)
    got = model.encoder(x)
    torch.manual_seed(5)
    expected = _plain_sum_forward(model, x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    model.epoch = 3  # 3 >= 300 / 100: the search has begun
    assert not model.in_warmup()
    assert not ltb_model(warmup_fraction=0.0).in_warmup()


def test_ltb_training_samples_are_one_hot_with_gradients_to_the_logits():
    model = ltb_model()
    model.train()
    model.epochs, model.epoch = 10, 5
    model.encoder.warmup = False
    weights = model.encoder.branch_weights()
    assert set(weights.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(weights.detach().sum(-1), torch.ones(4, 2))
    (weights * torch.randn_like(weights)).sum().backward()
    assert model.encoder.alpha.grad is not None and model.encoder.alpha.grad.abs().min() > 0
    soft = ltb_model(gumbel_hard=False).encoder.train().branch_weights().detach()
    assert ((soft > 0) & (soft < 1)).all()  # mtlbench 0.1's soft mixture stays reachable


def test_ltb_eval_tree_options_and_recorded_tree():
    model = ltb_model()
    with torch.no_grad():
        model.encoder.alpha.copy_(torch.randn(4, 2, 2))
    model.eval()
    assert torch.equal(model.encoder.branch_weights(), model.encoder.branch_weights())  # argmax: deterministic
    state = model.architecture_state()
    assert state["tree"] == model.encoder.alpha.argmax(-1).tolist()
    assert state["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    sampled = ltb_model(eval_tree="sample")
    sampled.eval()
    draws = {tuple(sampled.encoder.branch_weights().argmax(-1).flatten().tolist()) for _ in range(20)}
    assert len(draws) > 1  # LibMTL's: a fresh hard tree at every evaluation forward
    with pytest.raises(ValueError, match="eval_tree"):
        ltb_model(eval_tree="mean")


@pytest.mark.parametrize("weighting", [libmtl_weighting.EW, libmtl_weighting.PCGrad], ids=lambda w: w.__name__)
def test_ltb_trains_with_libmtl_weightings(weighting):
    model = ltb_model(weighting, resnet18=True)
    model.train()
    model.epochs, model.epoch = 3, 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y_cls, y_reg = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]), torch.randn(4, 1)
    before = model.encoder.alpha.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    w = model.backward(task_losses(model, x, y_cls, y_reg))
    assert len(w) == 2 and np.isfinite(w).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    assert not torch.equal(before, model.encoder.alpha)


# ---------------------------------------------------------------------------------------------------------------
# device-agnostic (runs where CUDA is available)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("weighting", list(WEIGHTINGS), ids=lambda w: w.__name__)
def test_methods_on_cuda(weighting):
    dev = torch.device("cuda")
    decoders = nn.ModuleDict({t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, n))
                              for t, n in (("cls", 3), ("reg", 1))})
    model = compose(LTB, weighting)(task_name=["cls", "reg"], encoder_class=TinyResNet, decoders=decoders,
                                    rep_grad=False, multi_input=False, device=dev).to(dev)
    x, y_cls, y_reg = (t.to(dev) for t in toy_problem(4, 32))
    for _ in range(2):  # the second step exercises the state kept across steps
        model.zero_grad(set_to_none=True)
        w = model.backward(task_losses(model, x, y_cls, y_reg), **WEIGHTINGS[weighting])
    assert w.shape == (2,) and w.device.type == "cuda" and torch.isfinite(w).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.device.type == "cuda" and torch.isfinite(p.grad).all(), name
