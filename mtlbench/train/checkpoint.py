"""Mid-run checkpoints, the one module that owns them: the policy (where, how often, what to keep), saving, loading,
resuming, discarding and the cleaning of interrupted writes.

A checkpoint holds everything a :class:`~mtlbench.train.loop.Trainer` needs to continue an interrupted run as if it
had never stopped (model, optimizer, scheduler, weighting state, every RNG, history), one file per run, written
atomically (temporary file, fsync, rename). It is not the best / last model of a finished run: those are
evaluated in memory and only their predictions are recorded.

On a fixed seed on the CPU a resumed run's metrics equal an uninterrupted run's bit for bit
(``tests/test_faults.py``). The file is a ``torch.save`` pickle written by mtlbench into the user's own results
folder; it is loaded with ``weights_only=False`` because it holds NumPy and ``random`` states.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mtlbench import faults
from mtlbench.atomic import atomic_path
from mtlbench.errors import MtlbenchError

FORMAT = 1
SUFFIX = ".ckpt"
_PLAIN = (bool, int, float, str, np.ndarray, np.generic, torch.Tensor, type(None))
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"_compiled_call_impl"}   # hooks, registries: not state


class CheckpointError(MtlbenchError):
    """A checkpoint file cannot be used (unreadable, truncated, or of another run)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often a run saves checkpoints; ``every=0`` turns them off."""

    root: Path | None = None
    every: int = 1
    keep: bool = False

    @property
    def enabled(self) -> bool:
        return self.root is not None and self.every > 0

    def path(self, run_id: str) -> Path:
        assert self.root is not None
        return Path(self.root) / f"{run_id}{SUFFIX}"

    def due(self, epoch: int, epochs: int) -> bool:
        """Save after ``epoch``? Every ``every`` epochs, but not after the last: only the final evaluation would be
        left to redo."""
        return self.enabled and epoch % self.every == 0 and epoch < epochs

    def exists(self, run_id: str) -> bool:
        return self.root is not None and self.path(run_id).exists()

    def discard(self, run_id: str, *, keep: bool | None = None) -> None:
        """Remove a run's checkpoint, unless kept (``keep`` overrides the policy's)."""
        if self.root is not None and not (self.keep if keep is None else keep):
            self.path(run_id).unlink(missing_ok=True)

    def before_run(self, run_id: str, *, recorded: str | None, force: bool, resume_diverged: bool) -> None:
        """A forced re-run starts over, not from a kept checkpoint; so does a cell recorded as diverged (kept from
        an earlier ``--resume-diverged`` run) unless diverged cells resume."""
        if force or (recorded == "diverged" and not resume_diverged):
            self.discard(run_id, keep=False)

    def after_run(self, run_id: str, status: str, *, resume_diverged: bool) -> None:
        """Once the result is stored: an ok run's checkpoint goes (unless kept); a failed one stays, so a retry
        resumes it; a diverged one goes (resuming would reproduce the divergence) unless diverged cells resume."""
        if status == "ok" or (status == "diverged" and not resume_diverged):
            self.discard(run_id)

    def clean_temporaries(self) -> None:
        """Remove checkpoint files whose write was interrupted (never a complete checkpoint)."""
        if self.root is not None and Path(self.root).is_dir():
            for p in Path(self.root).glob(f".*{SUFFIX}.*.tmp"):
                p.unlink(missing_ok=True)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _detached(value: Any) -> Any:
    # Per-step leftovers such as LibMTL's ``rep`` may still belong to an autograd graph; their values suffice.
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def attribute_state(module: nn.Module) -> dict[str, dict[str, Any]]:
    """The plain-data attributes of every submodule (not parameters or buffers, which ``state_dict`` holds).

    LibMTL's weightings keep their state as such attributes of the composed model (DWA's and GradNorm's loss
    buffer, GradVac's ``rho_T``, Nash-MTL's previous weights, MoCo's tracked gradients, LTB's temperature), so
    saving them all needs no per-method code and stays right for methods added later."""
    out: dict[str, dict[str, Any]] = {}
    for name, sub in module.named_modules():
        attrs = {k: _detached(v) for k, v in vars(sub).items() if k not in _MODULE_INTERNALS and _plain(v)}
        if attrs:
            out[name] = attrs
    return out


def check_attribute_state(module: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    """Refuse attribute state naming a submodule ``module`` lacks, before anything is loaded."""
    subs = dict(module.named_modules())
    for name in state:
        if name not in subs:
            raise CheckpointError(f"checkpoint names a submodule {name!r} this model does not have")


def load_attribute_state(module: nn.Module, state: dict[str, dict[str, Any]]) -> None:
    check_attribute_state(module, state)
    subs = dict(module.named_modules())
    for name, attrs in state.items():
        for key, value in attrs.items():
            setattr(subs[name], key, value)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any], *, cell: str = "", epoch: int = 0) -> float:
    """Write ``payload`` atomically; returns the seconds it took. A crash leaves the previous checkpoint intact."""
    t0 = time.perf_counter()
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
        faults.hit("checkpoint_write", cell=cell, epoch=epoch)
    return time.perf_counter() - t0


def load(path: Path, run_id: str, device: torch.device) -> dict[str, Any]:
    """Read a checkpoint of ``run_id``; :class:`CheckpointError` names the file and what is wrong with it."""
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 — truncated, corrupt or foreign: all mean "cannot resume"
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has an unknown format")
    if payload.get("run_id") != run_id:
        raise CheckpointError(f"checkpoint {path} belongs to run {payload.get('run_id')!r}, not {run_id!r}")
    return payload


class RunCheckpoint:
    """One run's checkpoint file under a policy: the trainer's epoch callback that saves it, and the load that
    resumes from it. ``seconds`` is the time spent writing."""

    def __init__(self, policy: CheckpointPolicy, run_id: str, *, cell: str, epochs: int,
                 device: torch.device) -> None:
        self.policy, self.run_id, self.cell, self.epochs, self.device = policy, run_id, cell, epochs, device
        self.seconds = 0.0

    def saver(self, elapsed: Callable[[], float], extra: Callable[[], dict[str, Any]] = dict) -> Any:
        """The trainer's ``on_epoch`` callback (None when checkpoints are off); ``elapsed`` is the run's time so far,
        ``extra`` what else the run needs to resume (FastCAR's chosen transform)."""
        if not self.policy.enabled:
            return None

        def save_epoch(trainer: Any) -> None:
            e = trainer.epoch
            if not self.policy.due(e, self.epochs):
                return
            payload = {"run_id": self.run_id, "epoch": e, "elapsed_s": elapsed(), "trainer": trainer.state_dict(),
                       **extra()}
            self.seconds += save(self.policy.path(self.run_id), payload, cell=self.cell, epoch=e)
        return save_epoch

    def load(self) -> dict[str, Any] | None:
        """The saved payload, None when there is none; :class:`CheckpointError` when it cannot be used."""
        if not self.policy.enabled or not self.policy.exists(self.run_id):
            return None
        return load(self.policy.path(self.run_id), self.run_id, self.device)

    @staticmethod
    def resume(trainer: Any, payload: dict[str, Any]) -> None:
        trainer.load_state_dict(payload["trainer"])
