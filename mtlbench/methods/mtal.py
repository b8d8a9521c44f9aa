"""MTAL: one network per task that shares the convolution kernels which have become similar across tasks, written
against LibMTL 1.1.5's ``AbsArchitecture``.

Feng & Chen, "Learning Twofold Heterogeneous Multi-Task by Sharing Similar Convolution Kernel Pairs",
arXiv:2101.12431; paper text: shared/papers/mtal-kernel-pair-sharing.txt (its formula symbols are lost, so the
choices the paper leaves open are options here; see :class:`MTALOptions` and issue 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.libmtl_compat import AbsArchitecture
from mtlbench.methods.registry import ARCHITECTURES
from mtlbench.registry import options_table

__all__ = ["MTAL", "MTAL_DEFAULTS", "BankedConv2d", "KernelBank", "MTALOptions"]

REFERENCE = ("Feng & Chen, Learning Twofold Heterogeneous Multi-Task by Sharing Similar Convolution Kernel Pairs, "
             "arXiv:2101.12431, 2021")
GRANULARITIES = ("filter",)
LAYER_SETS = ("all", "3x3")
INITS = ("independent", "identical")


@dataclass(frozen=True)
class MTALOptions:
    """MTAL's options (the paper's open points; see :class:`MTAL`).

    - ``rho``: the similarity threshold of eq. 4 (the paper: 0.4 for related tasks, 0.55 for unrelated ones).
    - ``granularity``: what one kernel is. Only ``"filter"`` (one output filter, C_in x k x k values): a single
      k x k slice has 9 values, random 9-vectors exceed cosine 0.4 about 12 % of the time, and matching slices
      needs a (C_out C_in)^2 similarity matrix per layer (7e10 entries in layer4), so slices are not offered.
    - ``layers``: ``"all"`` convolutions of the trunk (stem and 1x1 downsample included) or only the ``"3x3"``
      ones; the others stay per task, as BatchNorm and the heads always do.
    - ``warmup_epochs``, ``merge_every``: merges at the end of epoch e (from 1) when e >= warmup_epochs and
      (e - warmup_epochs) % merge_every == 0.
    - ``alpha``, ``beta``: eq. 5's pair weights (alpha for the lower task index); 0.5 / 0.5 is the plain mean.
    - ``lam``: the norm penalty's weight (eq. 7); 0 under the grid's Adam with weight decay, 0.1 in the paper.
    - ``init``: ``"independent"``: one ``encoder_class()`` per task (independent random draws; with pretrained
      weights every copy is the same ImageNet trunk, see ``MTAL.identical_start``); ``"identical"``: every task
      starts from task 0's draw, what pretrained weights do, also without them.
    """

    rho: float = 0.4
    granularity: str = field(default="filter", metadata={"choices": GRANULARITIES})
    layers: str = field(default="all", metadata={"choices": LAYER_SETS})
    warmup_epochs: int = 1
    merge_every: int = 1
    alpha: float = 0.5
    beta: float = 0.5
    lam: float = 0.0
    init: str = field(default="independent", metadata={"choices": INITS})


MTAL_DEFAULTS: dict[str, Any] = options_table(MTALOptions)[0]


class KernelBank(nn.Module):
    """One convolution layer's filters for every task, stored once.

    ``weight`` ([T * C_out, C_in, k, k]) holds the stored filters and the buffer ``index`` ([T, C_out]) says which
    stored filter each task's filter reads. Task t's kernel is ``weight.index_select(0, index[t])``: a stored
    filter read by several tasks gets the sum of their gradients, and ties change the index, never the parameters.
    A stored filter no longer read by any task (after a merge) is dead: zero gradient; the optimiser may keep
    moving it on its momentum (Adam's state is per stored row), which is harmless because nothing reads it.
    """

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        shapes = {tuple(w.shape) for w in weights}
        if len(shapes) != 1:
            raise ValueError(f"every task's kernel must have the same shape, got {sorted(shapes)}")
        self.weight = nn.Parameter(torch.cat([w.detach() for w in weights]).clone())
        task_num, filters = len(weights), weights[0].shape[0]
        self.register_buffer("index", torch.arange(task_num * filters).view(task_num, filters))

    @property
    def task_num(self) -> int:
        return self.index.shape[0]

    @property
    def filters(self) -> int:
        return self.index.shape[1]

    def kernel(self, task: int) -> torch.Tensor:
        """Task ``task``'s convolution weight, read through the index (differentiable)."""
        w = self.weight.index_select(0, self.index[task])
        if self.weight.dim() == 4 and self.weight.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)   # keep the layout the model was put in
        return w

    def tied(self) -> torch.Tensor:
        """[T, C_out] bool: the filter's stored row is read by another task too."""
        counts = torch.bincount(self.index.reshape(-1), minlength=self.weight.shape[0])
        return counts[self.index] > 1

    def unique_params(self) -> int:
        """Values of the stored filters some task reads (tied filters once, dead rows not at all)."""
        return int(self.index.unique().numel()) * self.weight[0].numel()

    @torch.no_grad()
    def similarity(self, a: int, b: int, unit: torch.Tensor | None = None) -> torch.Tensor:
        """[C, C] cosine similarities of task a's and task b's current filters (eq. 3), computed in float32 at
        least (ample for a threshold), returned as float64; a zero filter gives 0. ``unit``: the normalised
        stored rows, when the caller has them."""
        if unit is None:
            unit = self._unit_rows()
        return (unit[self.index[a]] @ unit[self.index[b]].T).double()

    def _unit_rows(self) -> torch.Tensor:
        w = self.weight.detach().flatten(1)
        return F.normalize(w if w.dtype in (torch.float32, torch.float64) else w.float(), dim=1, eps=1e-12)

    @torch.no_grad()
    def merge(self, rho: float, alpha: float = 0.5, beta: float = 0.5) -> list[dict[str, Any]]:
        """Tie the filter pairs whose similarity exceeds ``rho``; returns one statistics dict per task pair.

        All task pairs' candidates (similarity > rho, not tied already) are taken highest first, ties broken by
        (task a, task b, filter i, filter j), and joined by union-find only when the two groups hold no filter of
        a common task, so a group never holds two filters of one task. Each group that grew gets, as its one
        stored filter (its lowest stored row), the mean over its member task pairs (a < b) of
        ``alpha * w_a + beta * w_b`` (eqs. 5-6), computed from the filters before this merge; every member then
        reads that row. Existing ties stay (a filter tied earlier counts once per task that reads it).

        Rows: ``task_a``, ``task_b`` (indices), ``kernels``, ``above_rho`` (pairs of the similarity matrix above
        rho, tied ones included), ``newly_tied``, ``ratio`` (fraction of the pair's filters tied after the merge),
        ``max_similarity``, ``mean_similarity`` (of the matrix before the merge).
        """
        task_num, c = self.index.shape
        pairs = [(a, b) for a in range(task_num) for b in range(a + 1, task_num)]
        unit = self._unit_rows()
        sim = {(a, b): self.similarity(a, b, unit).cpu() for a, b in pairs}
        old = self.index.cpu().clone()                 # .cpu() is no copy on the CPU

        # union-find over nodes t * C + o, seeded by the existing ties (filters reading one stored row)
        parent = list(range(task_num * c))
        tasks: dict[int, set[int]] = {n: {n // c} for n in parent}
        group: dict[int, list[int]] = {n: [n] for n in parent}

        def find(n: int) -> int:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        def union(a: int, b: int) -> int:
            ra, rb = find(a), find(b)
            if ra == rb:
                return ra
            if ra > rb:
                ra, rb = rb, ra
            parent[rb] = ra
            tasks[ra] |= tasks.pop(rb)
            group[ra] += group.pop(rb)
            return ra

        first: dict[int, int] = {}
        for n, row in enumerate(old.reshape(-1).tolist()):
            if row in first:
                union(first[row], n)
            else:
                first[row] = n

        cand = []
        for a, b in pairs:
            mask = (sim[a, b] > rho) & (old[a][:, None] != old[b][None, :])
            i, j = mask.nonzero(as_tuple=True)
            cand.append(np.stack([sim[a, b][i, j].numpy(), np.full(len(i), a), np.full(len(i), b), i.numpy(),
                                  j.numpy()]))
        cand = np.concatenate(cand, axis=1) if cand else np.zeros((5, 0))
        order = np.lexsort((cand[4], cand[3], cand[2], cand[1], -cand[0]))      # last key is the primary one
        node_a = (cand[1] * c + cand[3]).astype(np.int64)[order]
        node_b = (cand[2] * c + cand[4]).astype(np.int64)[order]
        # nodes in a group that holds every task can join nothing more; skipping them in numpy keeps the Python
        # loop short even at rho = -1 (a million candidates in layer4)
        done = np.zeros(task_num * c, dtype=bool)
        for r, members in group.items():
            if len(tasks[r]) == task_num:
                done[members] = True
        grown: set[int] = set()
        for start in range(0, len(order), 8192):
            if done.all():
                break
            an, bn = node_a[start:start + 8192], node_b[start:start + 8192]
            keep = ~(done[an] | done[bn])
            for x, y in zip(an[keep].tolist(), bn[keep].tolist()):
                ra, rb = find(x), find(y)
                if ra == rb or tasks[ra] & tasks[rb]:
                    continue
                root = union(ra, rb)
                grown.add(root)
                if len(tasks[root]) == task_num:
                    done[group[root]] = True

        grown = {find(r) for r in grown}                 # a grown group may have joined another since
        new = old.clone()
        rows, values = [], []
        members: dict[int, list[int]] = {}
        for n in range(task_num * c):
            root = find(n)
            if root in grown:
                members.setdefault(root, []).append(n)
        read = sorted({int(old[n // c, n % c]) for nodes in members.values() for n in nodes})
        at = {row: k for k, row in enumerate(read)}
        stored = self.weight.detach().flatten(1)[torch.tensor(read, dtype=torch.long, device=self.weight.device)]
        stored = stored.double().cpu()                  # one transfer for every group
        for root in sorted(members):
            nodes = sorted(members[root])                       # one per task, in task order
            ws = stored[[at[int(old[n // c, n % c])] for n in nodes]]
            merged = [alpha * ws[p] + beta * ws[q] for p in range(len(ws)) for q in range(p + 1, len(ws))]
            row = min(int(old[n // c, n % c]) for n in nodes)
            rows.append(row)
            values.append(torch.stack(merged).mean(0))
            for n in nodes:
                new[n // c, n % c] = row
        if rows:
            shape = self.weight.shape[1:]
            self.weight[torch.tensor(rows, device=self.weight.device)] = (
                torch.stack(values).view(len(rows), *shape).to(self.weight.device, self.weight.dtype))
            self.index.copy_(new.to(self.index.device))

        out = []
        for a, b in pairs:
            before = len(set(old[a].tolist()) & set(old[b].tolist()))
            after = len(set(new[a].tolist()) & set(new[b].tolist()))
            s = sim[a, b]
            out.append({"task_a": a, "task_b": b, "kernels": c, "above_rho": int((s > rho).sum()),
                        "newly_tied": after - before, "ratio": after / c, "max_similarity": float(s.max()),
                        "mean_similarity": float(s.mean())})
        return out


class BankedConv2d(nn.Module):
    """A task's convolution whose weight is read from a :class:`KernelBank` (no weight of its own).

    The bank is owned by the MTAL trunk; this module only refers to it (a plain attribute, not a submodule), so
    the state_dict holds each stored filter once.
    """

    def __init__(self, conv: nn.Conv2d, bank: KernelBank, task: int) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"MTAL supports zero-padded convolutions only, got padding_mode={conv.padding_mode!r}")
        object.__setattr__(self, "bank", bank)          # bypasses Module registration on purpose (see above)
        self.task = task
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.bias = conv.bias                           # per task, never tied (ResNet's convolutions have none)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.bank.kernel(self.task), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return f"task={self.task}, kernel={tuple(self.bank.weight.shape[1:])}, stride={self.stride}"


class _MTALTrunk(nn.Module):
    """One trunk per task (``trunks[t]``), their banked convolutions' filters in ``banks`` (``layer_names[l]`` is
    bank l's convolution name in a trunk). ``forward`` returns one feature map per task."""

    def __init__(self, encoders: list[nn.Module], names: list[str]) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(encoders)
        self.layer_names = list(names)
        self.banks = nn.ModuleList()
        for name in names:
            convs = [e.get_submodule(name) for e in encoders]
            bank = KernelBank([conv.weight for conv in convs])
            self.banks.append(bank)
            parent_name, _, child = name.rpartition(".")
            for t, (encoder, conv) in enumerate(zip(encoders, convs)):
                setattr(encoder.get_submodule(parent_name) if parent_name else encoder, child,
                        BankedConv2d(conv, bank, t))

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        return [trunk(inputs) for trunk in self.trunks]


class MTAL(AbsArchitecture):
    r"""MTAL: one ResNet trunk per task; similar convolution filters of different tasks become one tensor.

    Feng & Chen, arXiv:2101.12431. Every task has its own ``encoder_class()`` trunk, BatchNorm and head. Each
    banked convolution (``layers``) reads its filters through a :class:`KernelBank`; :meth:`epoch_end` (the
    training loop calls it at the end of every epoch, before the checkpoint) ties, for every layer and task pair,
    the filter pairs whose cosine similarity exceeds ``rho`` (eqs. 3-6, :meth:`KernelBank.merge`). Ties are
    permanent. The index is a buffer, so checkpoints and resume restore the sharing exactly.

    Shared parameters for the gradient weightings (``get_share_params``): all trunk parameters, the convention of
    Cross-stitch and LTB; a tied filter is one stored row, so it is counted once. With ``rep_grad`` (GradDrop) the
    representation is each task's trunk output, one per task, as for Cross-stitch (compat quirk 9).

    The paper's per-task norm penalty (eq. 7) is :meth:`penalty`; the training loop adds it to the task losses.
    Options: :class:`MTALOptions`.
    """

    def __init__(self, task_name: list[str], encoder_class: Any, decoders: nn.ModuleDict, rep_grad: bool,
                 multi_input: bool, device: torch.device, **kwargs: Any) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        if self.multi_input:
            raise ValueError("MTAL does not support multiple-input MTL problems (multi_input must be False)")
        opts = {**MTAL_DEFAULTS, **{k: v for k, v in kwargs.items() if k in MTAL_DEFAULTS}}
        for key, allowed in (("granularity", GRANULARITIES), ("layers", LAYER_SETS), ("init", INITS)):
            if opts[key] not in allowed:
                raise ValueError(f"MTAL {key} must be one of {allowed}, got {opts[key]!r}")
        if int(opts["warmup_epochs"]) < 0 or int(opts["merge_every"]) < 1:
            raise ValueError(f"MTAL needs warmup_epochs >= 0 and merge_every >= 1, got {opts['warmup_epochs']} "
                             f"and {opts['merge_every']}")
        if float(opts["lam"]) < 0:
            raise ValueError(f"MTAL lam must be >= 0, got {opts['lam']}")
        self.rho, self.alpha, self.beta, self.lam = (float(opts[k]) for k in ("rho", "alpha", "beta", "lam"))
        self.warmup_epochs, self.merge_every = int(opts["warmup_epochs"]), int(opts["merge_every"])
        self.granularity, self.layers, self.init = opts["granularity"], opts["layers"], opts["init"]

        encoders = [self.encoder_class() for _ in range(self.task_num)]
        if self.init == "identical":
            for e in encoders[1:]:
                e.load_state_dict(encoders[0].state_dict())
        names = [n for n, m in encoders[0].named_modules() if isinstance(m, nn.Conv2d)
                 and (self.layers == "all" or tuple(m.kernel_size) == (3, 3))]
        if not names:
            raise ValueError(f"MTAL found no {self.layers} convolution in the encoder")
        # Pretrained weights make every copy identical: every filter pair then has similarity 1 and the first
        # merge collapses MTAL to HPS with per-task BatchNorm. Recorded so the run can say so.
        self.identical_start = all(torch.equal(e.get_submodule(n).weight, encoders[0].get_submodule(n).weight)
                                   for n in names for e in encoders[1:])
        self.encoder = _MTALTrunk(encoders, names)

    # -- the forward pass ------------------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, task_name: str | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for tn, task in enumerate(self.task_name):
            if task_name is not None and task != task_name:
                continue   # only the asked task's trunk runs
            rep = self._prepare_rep(self.encoder.trunks[tn](inputs), task, same_rep=False)
            out[task] = self.decoders[task](rep)
        return out

    # -- merging ---------------------------------------------------------------------------------------------------
    def merges_at(self, epoch: int) -> bool:
        """Whether :meth:`epoch_end` merges after epoch ``epoch`` (counted from 1)."""
        return epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.merge_every == 0

    def epoch_end(self, epoch: int) -> list[dict[str, Any]]:
        """The training loop's end-of-epoch hook (before the checkpoint): :meth:`merge` when :meth:`merges_at`,
        else ``[]``."""
        return self.merge() if self.merges_at(epoch) else []

    @torch.no_grad()
    def merge(self) -> list[dict[str, Any]]:
        """Merge every banked layer now; one row per (layer, task pair): ``layer``, ``task_a``, ``task_b``,
        ``kernels``, ``above_rho``, ``newly_tied``, ``ratio``, ``max_similarity``, ``mean_similarity``."""
        rows = []
        for name, bank in zip(self.encoder.layer_names, self.encoder.banks):
            for row in bank.merge(self.rho, self.alpha, self.beta):
                rows.append({"layer": name, **row, "task_a": self.task_name[row["task_a"]],
                             "task_b": self.task_name[row["task_b"]]})
        return rows

    # -- what the sharing amounts to -------------------------------------------------------------------------------
    def layer_share_ratios(self) -> dict[str, float]:
        """Per banked layer: the fraction of its (task, filter) pairs that read a stored filter shared with
        another task (the paper's Table 6 per layer)."""
        return {name: int(bank.tied().sum()) / bank.index.numel()
                for name, bank in zip(self.encoder.layer_names, self.encoder.banks)}

    def share_ratio(self) -> float:
        """The fraction of all banked (task, filter) pairs that are tied, over every layer (filters, not values)."""
        tied = sum(int(bank.tied().sum()) for bank in self.encoder.banks)
        return tied / sum(bank.index.numel() for bank in self.encoder.banks)

    def unique_trunk_params(self) -> int:
        """Trunk parameters with each tied filter counted once (dead stored rows not at all); BatchNorm and
        unbanked convolutions count per task."""
        banked = {id(bank.weight) for bank in self.encoder.banks}
        rest = sum(p.numel() for p in self.encoder.parameters() if id(p) not in banked)
        return rest + sum(bank.unique_params() for bank in self.encoder.banks)

    def architecture_state(self) -> dict[str, Any]:
        """What the run records of the sharing (``run_record`` stores it as ``arch_state_json``)."""
        return {"share_ratio": self.share_ratio(), "layer_share_ratio": self.layer_share_ratios(),
                "unique_trunk_params": self.unique_trunk_params(), "identical_start": bool(self.identical_start)}

    def task_trunk_state(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s trunk as a plain (unbanked) encoder's state_dict: its filters read through the index."""
        state = {k: v.detach().clone() for k, v in self.encoder.trunks[task].state_dict().items()}
        for name, bank in zip(self.encoder.layer_names, self.encoder.banks):
            state[f"{name}.weight"] = bank.kernel(task).detach().clone()
        return state

    # -- the regulariser -------------------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """[T] per-task norm penalties ``lam * ||W_t||_2^2`` (eq. 7); a zero tensor when ``lam == 0``.

        W_t is every convolution kernel task t's trunk reads (banked ones through the index; BatchNorm and the
        heads excluded). The paper's symbols are lost; the squared L2 (Frobenius) norm is chosen because it is the
        usual "norm regularisation" of deep networks (weight decay), smooth everywhere, and a tied filter is then
        penalised once per task that reads it, with the gradients summing as the tasks' losses do.
        """
        device = self.encoder.banks[0].weight.device
        if self.lam == 0:
            return torch.zeros(self.task_num, device=device)
        norms = []
        for trunk in self.encoder.trunks:
            total = torch.zeros((), device=device)
            for m in trunk.modules():
                if isinstance(m, BankedConv2d):
                    total = total + m.bank.kernel(m.task).pow(2).sum()
                elif isinstance(m, nn.Conv2d):
                    total = total + m.weight.pow(2).sum()
            norms.append(total)
        return self.lam * torch.stack(norms)


ARCHITECTURES.add("MTAL", MTAL, options=MTALOptions, library="mtlbench", reference=REFERENCE,
                  summary="one ResNet-18 per task; at each epoch end, convolution filters of two tasks whose cosine "
                          "similarity exceeds rho become one shared filter (MTAL's kernel-pair sharing; written "
                          "here)")
