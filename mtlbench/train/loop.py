"""The training loop: Adam + ReduceLROnPlateau on the validation loss, test metrics at the best-validation epoch
and at the last epoch (FastCAR paper, sec. 4.1). Losses and metrics accumulate on the device; the host reads them
once per epoch, so a step never waits for the device except where a LibMTL weighting itself does."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mtlbench import faults
from mtlbench.config import TrainingProtocol
from mtlbench.errors import Diverged
from mtlbench.metrics import task_metrics
from mtlbench.train.checkpoint import (CheckpointError, attribute_state, check_attribute_state, load_attribute_state,
                                       load_rng_state, rng_state)
from mtlbench.train.learners import Learner, autocast_for, samples_per_step

ProgressFn = Callable[[str, dict[str, Any]], None]
EpochFn = Callable[["Trainer"], None]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_adam(params: list, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with the fused kernel (CUDA, and CPU on torch >= 2.4: one pass over the parameters, 6x faster than
    foreach for Decoder-2's 61M parameters on a 2-core CPU), else the foreach implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


@dataclass
class Predictions:
    index: np.ndarray
    true_class: np.ndarray
    pred_class: np.ndarray
    true_target: np.ndarray
    pred_target: np.ndarray

    def metrics(self, num_classes: int) -> dict[str, Any]:
        return task_metrics(self.true_class, self.pred_class, self.true_target, self.pred_target, num_classes)


@dataclass
class TrainState:
    epochs: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    sharing: list[dict] = field(default_factory=list)   # the architecture's epoch-end merges (MTAL), if any
    best_val: float = float("inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    train_s: float = 0.0
    eval_s: float = 0.0      # evaluation passes (validation, test predictions); nan: unknown (an older checkpoint)
    images: int = 0


class Trainer:
    """Trains one learner on one data set, epoch by epoch (so FastCAR can continue after its one-epoch test)."""

    def __init__(self, learner: Learner, data: Any, protocol: TrainingProtocol, *, seed: int,
                 progress: ProgressFn | None = None, name: str = "") -> None:
        self.learner, self.data, self.protocol = learner, data, protocol
        self.name = name   # the run's label, for fault-injection points
        self.module = learner.module
        self.device = next(self.module.parameters()).device
        self.progress = progress or (lambda event, info: None)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = make_adam(params, protocol.lr, protocol.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=protocol.plateau_factor, patience=protocol.plateau_patience)
        self.seed = seed
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.samples = samples_per_step(learner)
        self.state = TrainState()

    @property
    def epoch(self) -> int:
        return len(self.state.epochs)

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: one per batch of the training split (capped by ``max_steps_per_epoch``). A
        learner that takes k batches a step reads k passes of the data in an epoch, as LibMTL's trainer does."""
        n = self.data.num_batches("train", self.protocol.batch_size, drop_last=self._drop_last())
        cap = self.protocol.max_steps_per_epoch
        return min(n, cap) if cap else n

    def _drop_last(self) -> bool:
        # BatchNorm1d in the decoders cannot train on a batch of one.
        n = len(self.data.splits["train"].labels)
        return n % self.protocol.batch_size == 1

    def train_epoch(self) -> dict[str, Any]:
        epoch = self.epoch + 1
        p = self.protocol
        self.learner.start_epoch(epoch, p.epochs)
        self.module.train()
        steps = self.steps_per_epoch()
        loss_sum = torch.zeros(len(self.learner.task_names), device=self.device)
        weights: list[torch.Tensor] = []   # per-step loss weights, kept on the device: read once per epoch
        sync(self.device)
        t0 = time.perf_counter()
        n_images = 0
        if self.samples == 1:
            batches = self.data.batches("train", p.batch_size, shuffle=True, generator=self.generator, flip=p.flip,
                                        channels_last=p.channels_last, drop_last=self._drop_last())
            groups: Iterator[list[tuple]] = ([batch] for batch in batches)
        else:
            groups = self._sample_groups(steps)
        for step, group in enumerate(groups):
            if step >= steps:
                break
            self.optimizer.zero_grad(set_to_none=True)
            if self.samples == 1:
                x, labels, targets, _ = group[0]
                losses, w = self.learner.train_step(x, labels, targets)
            else:
                losses, w = self.learner.train_step_samples([batch[:3] for batch in group])
            if faults.hit("train_step", cell=self.name, epoch=epoch, step=step + 1) == "nan":
                losses = losses * float("nan")
            self.optimizer.step()
            loss_sum += losses
            n_images += sum(batch[0].shape[0] for batch in group)
            if w is not None:
                weights.append(torch.as_tensor(w, device=self.device).reshape(-1))
            self.progress("step", {"epoch": epoch, "step": step + 1, "steps": steps})
        sync(self.device)
        seconds = time.perf_counter() - t0
        mean_losses = (loss_sum / max(steps, 1)).tolist()
        self.state.train_s += seconds
        self.state.images += n_images
        if not np.all(np.isfinite(mean_losses)):
            raise Diverged(epoch, f"training loss became {mean_losses} in epoch {epoch}")
        self.learner.end_epoch(epoch, np.asarray(mean_losses))
        # An architecture that changes its own structure between epochs (MTAL ties similar kernels) does it here,
        # before the evaluation that judges the epoch and before the checkpoint that saves it.
        epoch_end = getattr(self.module, "epoch_end", None)
        if callable(epoch_end):
            self.state.sharing += [{"epoch": epoch, **r} for r in epoch_end(epoch)]
        val = self.evaluate("valid")
        if not np.isfinite(val["loss"]):
            raise Diverged(epoch, f"validation loss became {val['loss']} in epoch {epoch}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val["loss"])
        if val["loss"] < self.state.best_val:
            self.state.best_val, self.state.best_epoch = val["loss"], epoch
            # At the protocol's last epoch the best weights are the current ones: no copy of every parameter.
            self.state.best_state = (None if epoch >= p.epochs else
                                     {k: v.detach().clone() for k, v in self.module.state_dict().items()})
        names = self.learner.task_names
        record = {"epoch": epoch, "lr": lr, "seconds": seconds, "train_loss": float(sum(mean_losses)),
                  "train_loss_cls": mean_losses[0] if names[0] == "cls" else None,
                  "train_loss_reg": mean_losses[1] if len(names) > 1 else None,
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_mse": val["mse"],
                  "val_mape": val["mape"], "val_mae": val["mae"]}
        self.state.epochs.append(record)
        if weights:
            w = torch.stack(weights).double().cpu().numpy()
            for i, task in enumerate(names):
                self.state.weights.append({"epoch": epoch, "task": task, "weight": float(w[:, i].mean()),
                                           "weight_std": float(w[:, i].std())})
        self.progress("epoch", record)
        return record

    def _sample_groups(self, steps: int) -> Iterator[list[tuple]]:
        """``steps`` groups of ``self.samples`` consecutive batches of one shuffled stream of training passes, each
        pass reshuffled by the run's generator (LibMTL's trainer draws MoDo's and SDMGrad's three batches so). The
        stream starts afresh each epoch, so an epoch's batches depend only on the generator's state at its start,
        which a checkpoint saves."""
        p = self.protocol

        def passes() -> Iterator[tuple]:
            while True:
                yield from self.data.batches("train", p.batch_size, shuffle=True, generator=self.generator,
                                             flip=p.flip, channels_last=p.channels_last, drop_last=self._drop_last())

        stream = passes()
        for _ in range(steps):
            yield [next(stream) for _ in range(self.samples)]

    @torch.no_grad()
    def reestimate_batchnorm(self, batches: int) -> None:
        """Replace every BatchNorm layer's running statistics by their plain average over ``batches`` training
        batches of the current weights (no flips, in training mode as ``torch.optim.swa_utils.update_bn`` does, no
        gradients, under the evaluation's autocast). Weights are untouched. The batches come from a generator of their own, seeded by the run's seed
        and epoch, and the global generator that dropout draws from is restored afterwards, so the training order,
        the weights and a resumed run are unaffected."""
        norms = [m for m in self.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None   # a cumulative average over the batches below
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        self.module.train()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), autocast_for(self.device, self.protocol.amp):
                for step, (x, _, _, _) in enumerate(self.data.batches(
                        "train", self.protocol.batch_size, shuffle=True, generator=generator,
                        channels_last=self.protocol.channels_last, drop_last=self._drop_last())):
                    if step >= batches:
                        break
                    self.module(x)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum

    def predict(self, split: str) -> tuple[float, Predictions]:
        """The split's mean loss and predictions; the time it takes counts in ``state.eval_s``."""
        t0 = time.perf_counter()
        try:
            return self._predict(split)
        finally:   # the predictions are read to the host, so the device is done with them here
            self.state.eval_s += time.perf_counter() - t0

    @torch.no_grad()
    def _predict(self, split: str) -> tuple[float, Predictions]:
        if self.protocol.bn_reestimate_batches:
            self.reestimate_batchnorm(self.protocol.bn_reestimate_batches)
        self.module.eval()
        loss = torch.zeros((), device=self.device)
        parts: list[tuple[torch.Tensor, ...]] = []
        for x, labels, targets, index in self.data.batches(split, max(self.protocol.batch_size, 64),
                                                           channels_last=self.protocol.channels_last):
            batch_loss, cls, target = self.learner.eval_batch(x, labels, targets)
            loss += batch_loss
            parts.append((index, labels, cls, targets, target))
        n = sum(int(part[0].shape[0]) for part in parts)
        cols = [torch.cat([part[i] for part in parts]).cpu().numpy() for i in range(5)]
        return float(loss) / max(n, 1), Predictions(cols[0], cols[1], cols[2], cols[3].astype(np.float64),
                                                    cols[4].astype(np.float64))

    def evaluate(self, split: str) -> dict[str, Any]:
        loss, preds = self.predict(split)
        m = preds.metrics(self.data.num_classes)
        return {"loss": loss, **m}

    def fit(self, epochs: int | None = None, on_epoch: EpochFn | None = None) -> None:
        """Train up to ``epochs`` (default: the protocol's); ``on_epoch`` runs after each (checkpoints)."""
        target = epochs if epochs is not None else self.protocol.epochs
        while self.epoch < target:
            self.train_epoch()
            if on_epoch is not None:
                on_epoch(self)
            faults.hit("epoch_end", cell=self.name, epoch=self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here: see :mod:`mtlbench.train.checkpoint`."""
        return {"module": self.module.state_dict(), "attributes": attribute_state(self.module),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(self.generator), "history": self.state, "samples_per_step": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("samples_per_step", 1)   # checkpoints written before three-batch steps took one batch
        if saved != self.samples:
            raise CheckpointError(f"the checkpoint trained with {saved} batch(es) per step and this run takes "
                                  f"{self.samples}: it cannot continue it (delete the checkpoint to start afresh)")
        # Every refusal comes before anything is loaded: a refused checkpoint leaves the trainer fresh.
        check_attribute_state(self.module, state["attributes"])
        self.module.load_state_dict(state["module"])
        load_attribute_state(self.module, state["attributes"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.state = state["history"]
        if not hasattr(self.state, "sharing"):   # a checkpoint written before the sharing table existed
            self.state.sharing = []
        if "eval_s" not in vars(self.state):     # nor its epochs' evaluation time: the run's total is unknown
            self.state.eval_s = float("nan")
        load_rng_state(self.generator, state["rng"])

    def final_predictions(self) -> tuple[Predictions, Predictions]:
        """Test predictions at the last epoch and at the best-validation epoch (its weights restored)."""
        _, last = self.predict("test")
        if self.state.best_epoch not in (0, self.epoch):
            if self.state.best_state is None:
                raise RuntimeError(f"no weights kept for the best epoch {self.state.best_epoch} (trained past the "
                                   f"protocol's {self.protocol.epochs} epochs?)")
            current = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            self.module.load_state_dict(self.state.best_state)
            _, best = self.predict("test")
            self.module.load_state_dict(current)
        else:
            best = last
        return best, last

    @torch.no_grad()
    def latency_ms(self) -> tuple[float, float]:
        """Median inference latency per call: one image, and one full batch."""
        self.module.eval()
        side = self.data.side
        out = []
        for b in (1, self.protocol.batch_size):
            x = torch.randn(b, 3, side, side, device=self.device)
            if self.protocol.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.module(x)  # warm-up
            times = []
            for _ in range(max(1, self.protocol.latency_repeats)):
                sync(self.device)
                t0 = time.perf_counter()
                self.module(x)
                sync(self.device)
                times.append(time.perf_counter() - t0)
            out.append(float(np.median(times)) * 1000.0)
        return out[0], out[1]
