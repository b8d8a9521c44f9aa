"""What the loop trains: a :class:`Learner` turns a batch into task losses and a backward pass, and a batch of
images into predicted classes and targets in original units."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.errors import ConfigError


def autocast_for(device: torch.device, enabled: bool) -> Any:
    """bf16 autocast on the device's type (CUDA, CPU, ...) when enabled; losses are computed in float32 outside."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _compile_errors() -> tuple[type[BaseException], ...]:
    # Dynamo and Inductor failures (InductorError, e.g. a missing C++ compiler, subclasses BackendCompilerFailed).
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # a torch without dynamo: torch.compile itself fails in CompiledForward
        return ()
    return (TorchDynamoException,)


def _cause(exc: BaseException) -> str:
    """The exception's type and the first line of its message: compiler output can run to pages."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


class CompiledForward:
    """``module``'s forward through ``torch.compile``. The module itself stays the plain ``nn.Module`` (the optimizer,
    ``state_dict`` and LibMTL's ``backward`` use it; parameters are shared). A compile failure, at construction or
    at any (re)compilation, raises a one-line :class:`ConfigError`: never a silent eager fallback."""

    def __init__(self, module: nn.Module) -> None:
        try:
            # Gradient weightings back-propagate each task loss through the same graph (retain_graph=True). A
            # backward compiled with donated buffers reuses saved activations (torch refuses a second backward, or,
            # loaded from Inductor's cache, silently computes a wrong one), so none are donated. Process-wide: the
            # backward is compiled lazily, at the first backward call, outside any context this class could set.
            torch._functorch.config.donated_buffer = False
            self.fn: Callable[..., Any] = torch.compile(module)
        except Exception as exc:  # noqa: BLE001 — e.g. an unsupported Python or platform
            raise ConfigError(f"--compile: torch.compile is unavailable here ({_cause(exc)})") from exc
        self.errors = _compile_errors()

    def __call__(self, x: torch.Tensor) -> Any:
        try:
            return self.fn(x)
        except self.errors as exc:
            raise ConfigError(f"--compile: torch.compile failed: {_cause(exc)}") from exc


def forward_fn(module: nn.Module, compile: bool) -> Callable[..., Any]:
    return CompiledForward(module) if compile else module


class Learner(Protocol):
    module: nn.Module
    task_names: tuple[str, ...]

    def train_step(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward, backward (gradients set, optimizer not stepped); returns (detached task losses [k], loss weights
        [k] on the device or None)."""

    def eval_batch(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(summed validation loss of the batch, predicted class, predicted target in original units)."""

    def start_epoch(self, epoch: int, epochs: int) -> None: ...

    def end_epoch(self, epoch: int, mean_task_losses: np.ndarray) -> None: ...


def samples_per_step(learner: Any) -> int:
    """Batches the learner takes per optimizer step (1 unless it says otherwise, as MoDo's and SDMGrad's do)."""
    return int(getattr(learner, "samples_per_step", 1))


class MTLLearner:
    """A LibMTL architecture x weighting model: cross-entropy + MSE, the weighting's ``backward`` combines them."""

    task_names = ("cls", "reg")

    def __init__(self, module: nn.Module, backward_kwargs: dict, *, epochs: int, target_mean: float = 0.0,
                 target_std: float = 1.0, amp: bool = False, compile: bool = False, samples: int = 1) -> None:
        if samples < 1:
            raise ConfigError(f"samples per step must be at least 1, got {samples}")
        self.module = module
        self.samples_per_step = samples
        self.forward = forward_fn(module, compile)
        self.backward_kwargs = backward_kwargs
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.amp = amp
        self.device = next(module.parameters()).device
        # LibMTL's GradNorm / DWA read the per-epoch mean training losses from this buffer.
        module.train_loss_buffer = np.zeros((len(self.task_names), epochs))

    def _scale(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean) / self.target_std

    def _losses(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with autocast_for(self.device, self.amp):
            out = self.forward(x)
        ce = F.cross_entropy(out["cls"].float(), labels)
        mse = F.mse_loss(out["reg"].float().reshape(-1), self._scale(targets))
        return torch.stack([ce, mse]), out

    def train_step(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and the weighting's backward; returns (detached task losses, loss weights: float32 on the device,
        or None where the weighting returns none)."""
        losses = self._task_losses(x, labels, targets)
        weights = self._backward(losses)
        return losses.detach(), weights

    def train_step_samples(self, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step on ``samples_per_step`` independent batches (x, labels, targets): the weighting's backward takes
        their task losses as a list, one vector per batch, each with its own graph (MoDo, SDMGrad); returns (the
        detached task losses' mean over the batches, loss weights or None). All the batches' graphs are held at
        once, as LibMTL's trainer does."""
        if len(batches) != self.samples_per_step:
            raise ConfigError(f"this weighting takes {self.samples_per_step} batches per step, got {len(batches)}")
        if len(batches) == 1:
            return self.train_step(*batches[0])
        losses = [self._task_losses(*batch) for batch in batches]
        weights = self._backward(losses)
        return torch.stack([loss.detach() for loss in losses]).mean(0), weights

    def _task_losses(self, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, _ = self._losses(x, labels, targets)
        penalty = getattr(self.module, "penalty", None)
        if callable(penalty):   # an architecture's own per-task regulariser (MTAL's eq. 7): part of each task's loss
            losses = losses + penalty()
        return losses

    def _backward(self, losses: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | None:
        """The weighting's backward of ``losses`` (a [task_num] tensor, or a list of them, one per batch); its loss
        weights as float32 on the device, or None where it returns none."""
        weights = self.module.backward(losses, **self.backward_kwargs)
        if weights is None:
            return None
        if isinstance(weights, torch.Tensor):  # mtlbench's own weightings: already on the device, no host sync
            return weights.detach().to(self.device, torch.float32).reshape(-1)
        # LibMTL's stock weightings return numpy (their own device sync, if any, already happened); a non-blocking
        # host-to-device copy does not wait for the device.
        # copy=True: on CPU the tensor must not alias an array the weighting may update in place.
        host = torch.from_numpy(np.asarray(weights, dtype=np.float32).reshape(-1))
        return host.to(self.device, non_blocking=True, copy=True)

    @torch.no_grad()
    def eval_batch(self, x, labels, targets):
        losses, out = self._losses(x, labels, targets)
        pred_cls = out["cls"].argmax(1)
        pred_target = out["reg"].float().reshape(-1) * self.target_std + self.target_mean
        return losses.sum() * x.shape[0], pred_cls, pred_target

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.module.epoch = epoch - 1   # LibMTL counts epochs from 0
        self.module.epochs = epochs

    def end_epoch(self, epoch: int, mean_task_losses: np.ndarray) -> None:
        buf = self.module.train_loss_buffer
        if epoch - 1 < buf.shape[1]:
            buf[:, epoch - 1] = mean_task_losses
