"""A thin, tested compatibility layer that makes LibMTL 1.1.5's classes work on modern torch, on CPU and CUDA.

LibMTL 1.1.5 (2021, the only release on PyPI) has these quirks on torch >= 2 / torchvision >= 0.13; each has a
fix here and a test in ``tests/test_libmtl_compat.py``:

1. ``import LibMTL`` fails: ``LibMTL.model.resnet`` imports ``torchvision.models.utils``, which torchvision removed.
   Fix: register a module of that name exposing ``load_state_dict_from_url`` (from ``torch.hub``) before importing.
2. ``AbsWeighting._grad2vec`` builds every task gradient in a CPU tensor and ``_compute_grad`` copies it back to
   the device each step. Fix: :class:`DeviceGradients` flattens with ``torch.cat`` on the parameters' device,
   straight into its row of the gradient matrix.
3. ``_reset_grad`` writes ``param.grad.data``, which fails when ``zero_grad(set_to_none=True)`` (torch's default)
   left ``param.grad`` as ``None``. Fix: assign ``param.grad`` directly.
4. ``_grad2vec`` skips parameters without a gradient but ``autograd`` mode fails on unused parameters.
   Fix: zeros for unused parameters in both modes.
5. LibMTL's ``Trainer`` hard-codes ``cuda:0`` and calls ``iterator.next()``: mtlbench never uses it; it composes
   architecture and weighting exactly as the Trainer does (:func:`compose`) and runs its own loop.
6. ``RLW`` needs a ``dist`` keyword and ``GradNorm`` / ``DWA`` read ``epoch`` and ``train_loss_buffer``: the
   defaults table (``mtlbench.methods.weightings``) supplies them, and the loop sets the attributes.
7. ``MTAN`` reads ``feature_dim`` from the encoder to size its attention blocks: the ResNet-18 trunk has it.
8. ``MTAN.zero_grad_share_params`` (its ``except`` branch, taken for a plain ResNet encoder) zeroes *every* encoder
   module, the task-specific attention blocks included, so gradient-based weightings never train MTAN's attention.
   Fix: ``zero_grad_share_params`` clears exactly the parameters ``get_share_params`` returns, for every architecture.
9. ``AbsArchitecture._prepare_rep`` with a list of per-task representations (Cross-stitch) and ``rep_grad=True``
   keeps only the last task's representation, so GradDrop back-propagates into one task's branch only.
   Fix: always keep one representation per task (``same_rep=False``), which is what MTAN, MMoE and CGC already do.
10. ``CAGrad.backward``'s objective reshapes the task weights to ``(1, 3)``: it only works for three tasks.
    Fix: :class:`mtlbench.methods.cagrad.CAGrad`, the same method for any number of tasks, written with the
    other methods (a method, not a shim); its quirk test stays in ``tests/test_libmtl_compat.py``.
11. ``_reset_grad`` writes each shared gradient as a contiguous view of the combined vector. For a channels-last
    parameter that gradient has other strides than its parameter, and fused Adam on CUDA refuses the step ("params,
    grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout"): every gradient weighting failed on
    an H200 with ``--channels-last``. Fix: a gradient that would have other strides than its parameter is written
    into ``empty_like(param)``; the others are views of the combined vector, which costs no copy (quirk 3's
    override).
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable

import torch


def _install_torchvision_utils_shim() -> None:
    """Quirk 1: provide ``torchvision.models.utils`` for LibMTL's ``from torchvision.models.utils import ...``."""
    try:
        import torchvision.models.utils  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torch.hub import load_state_dict_from_url

    shim = types.ModuleType("torchvision.models.utils")
    shim.load_state_dict_from_url = load_state_dict_from_url  # type: ignore[attr-defined]
    sys.modules["torchvision.models.utils"] = shim


_install_torchvision_utils_shim()

import LibMTL  # noqa: E402
import LibMTL.architecture as libmtl_architecture  # noqa: E402
import LibMTL.weighting as libmtl_weighting  # noqa: E402
from LibMTL.architecture.abstract_arch import AbsArchitecture  # noqa: E402
from LibMTL.weighting.abstract_weighting import AbsWeighting  # noqa: E402

LIBMTL_VERSION = getattr(LibMTL, "__version__", None) or "1.1.5"

__all__ = [
    "AbsArchitecture",
    "AbsWeighting",
    "DeviceGradients",
    "LIBMTL_VERSION",
    "compose",
    "libmtl_architecture",
    "libmtl_weighting",
]


class DeviceGradients:
    """Mixin placed before LibMTL's classes in the MRO: gradient plumbing that never leaves the training device.

    Overrides ``AbsWeighting``'s ``_compute_grad_dim``, ``_grad2vec``, ``_compute_grad`` and ``_reset_grad`` with
    the same contracts (shapes, order of parameters, ``zero_grad_share_params`` between tasks).
    """

    def _compute_grad_dim(self) -> None:
        self.grad_index = [p.numel() for p in self.get_share_params()]
        self.grad_dim = sum(self.grad_index)

    def _grad2vec(self, out: torch.Tensor | None = None) -> torch.Tensor:  # quirk 2 and 4
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=p.device,
                                                                                dtype=p.dtype)
                 for p in self.get_share_params()]
        return torch.cat(parts) if out is None else torch.cat(parts, out=out)

    def _compute_grad(self, losses: torch.Tensor, mode: str, rep_grad: bool = False,
                      after_task: Callable[[int], None] | None = None) -> Any:
        """LibMTL's contract ([task_num, grad_dim] shared gradients); ``after_task(tn)``, if given, runs after task
        tn's backward, while every other parameter still holds what that pass left (ExcessMTL keeps them)."""
        if rep_grad:
            return AbsWeighting._compute_grad(self, losses, mode, rep_grad=True)  # type: ignore[arg-type]
        params = list(self.get_share_params())
        # Each task's row is flattened straight into the [task_num, grad_dim] matrix: no stack copy of it.
        grads = torch.empty(self.task_num, sum(p.numel() for p in params), device=params[0].device,
                            dtype=params[0].dtype)
        for tn in range(self.task_num):
            if mode == "backward":
                losses[tn].backward(retain_graph=(tn + 1) != self.task_num)
                self._grad2vec(out=grads[tn])
            elif mode == "autograd":
                row = torch.autograd.grad(losses[tn], params, retain_graph=True, allow_unused=True)
                torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(row, params)],
                          out=grads[tn])
            else:
                raise ValueError(f"No support {mode} mode for gradient computation")
            if after_task is not None:
                after_task(tn)
            self.zero_grad_share_params()
        return grads

    def zero_grad_share_params(self) -> None:  # quirk 8
        for p in self.get_share_params():
            p.grad = None

    def _prepare_rep(self, rep: torch.Tensor, task: str, same_rep: bool | None = None) -> torch.Tensor:  # quirk 9
        return AbsArchitecture._prepare_rep(self, rep, task, same_rep=False)  # type: ignore[arg-type]

    def _reset_grad(self, new_grads: torch.Tensor) -> None:  # quirks 3 and 11
        """Set each shared parameter's gradient from the combined vector, which the call takes over: a contiguous
        parameter's gradient is a view of it (no copy; every caller passes a vector computed for this step and
        never writes to it afterwards)."""
        new_grads = new_grads.contiguous()
        offset = 0
        for p in self.get_share_params():
            n = p.numel()
            grad = new_grads[offset:offset + n].view(p.shape)
            if grad.stride() != p.stride():
                # The gradient takes the parameter's own strides (empty_like keeps channels-last): fused Adam on
                # CUDA refuses a gradient whose layout differs from its parameter's.
                grad = torch.empty_like(p).copy_(grad)
            p.grad = grad
            offset += n


def compose(architecture: type, weighting: type) -> type:
    """The class LibMTL's ``Trainer._prepare_model`` builds (``class MTLmodel(architecture, weighting)``), with
    :class:`DeviceGradients` first in the MRO, and ``init_param`` called after construction as LibMTL does."""

    class Composed(DeviceGradients, architecture, weighting):  # type: ignore[misc, valid-type]
        def __init__(self, task_name: list[str], encoder_class: Any, decoders: torch.nn.ModuleDict,
                     rep_grad: bool, multi_input: bool, device: torch.device, **kwargs: Any) -> None:
            super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
            self.epoch = 0
            self.train_loss_buffer = None
            self.init_param()

    Composed.__name__ = Composed.__qualname__ = f"{architecture.__name__}_{weighting.__name__}"
    return Composed
