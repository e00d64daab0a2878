"""Training, fine-tuning and evaluation loops (CPU-friendly, seeded)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import count, islice

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import AutocompressError

Metric = Callable[[nn.Module, Iterable[tuple[torch.Tensor, torch.Tensor]]], float]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Task:
    """What the model is for: ``metric(model, batches) -> float`` (higher is better; default
    top-1 accuracy), called with an iterable of ``(inputs, targets)`` batches, and
    ``loss(outputs, targets) -> tensor`` for fine-tuning (default cross-entropy)."""

    metric: Metric | None = None
    loss: Loss | None = None


CLASSIFICATION = Task()


class _Batches:
    """A re-iterable view of ``ds`` in batches (what a user's metric receives)."""

    def __init__(self, ds: Dataset, batch_size: int) -> None:
        self.ds, self.batch_size = ds, batch_size

    def __iter__(self):
        return batches(self.ds, self.batch_size)


class TrainingDiverged(AutocompressError):
    """The loss became NaN or infinite."""


def materialize(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(inputs, labels) tensors for a TensorDataset or nested Subsets of one, else None."""
    idx = None
    while isinstance(ds, Subset):
        sub = torch.as_tensor(ds.indices, dtype=torch.long)
        idx = sub if idx is None else sub[idx]
        ds = ds.dataset
    if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
        return None
    x, y = ds.tensors
    return (x, y) if idx is None else (x[idx], y[idx])


def batches(
    ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``ds`` in batches (fast path for in-memory tensors)."""
    tensors = materialize(ds)
    gen = torch.Generator().manual_seed(seed)
    if tensors is None:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)
        return
    x, y = tensors
    order = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        sel = order[i : i + batch_size]
        yield x[sel], y[sel]


def first_batches(
    ds: Dataset, batch_size: int, n: int, *, shuffle: bool = False, seed: int = 0
) -> list[torch.Tensor]:
    """The inputs of the first ``n`` batches of ``ds`` (calibration and monitoring batches)."""
    return [x for x, _ in islice(batches(ds, batch_size, shuffle=shuffle, seed=seed), n)]


def train(
    model: nn.Module,
    ds: Dataset,
    *,
    steps: int,
    lr: float,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    seed: int = 0,
    schedule: str = "onecycle",
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
    log_every: int = 0,
    task: Task = CLASSIFICATION,
) -> float:
    """SGD (Nesterov momentum) for ``steps`` steps; returns the mean loss of the last 10 %.

    ``schedule`` is ``onecycle`` (training from scratch) or ``cosine`` (fine-tuning).
    ``task.loss`` is the loss (default cross-entropy). With a ``teacher``, the loss mixes hard
    labels with temperature-softened teacher targets.
    Raises TrainingDiverged on a non-finite loss.
    """
    if steps <= 0:
        return float("nan")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    if teacher is not None:
        teacher.eval()
    tail: list[float] = []
    data = (b for e in count() for b in batches(ds, batch_size, shuffle=True, seed=seed + e))
    loss_fn = task.loss or F.cross_entropy
    for step in range(steps):
        x, y = next(data)
        logits = model(x)
        loss = loss_fn(logits, y)
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                t_logits = teacher(x)
            kd = F.kl_div(
                F.log_softmax(logits / temperature, 1),
                F.softmax(t_logits / temperature, 1),
                reduction="batchmean",
            ) * (temperature**2)
            loss = (1 - distill_weight) * loss + distill_weight * kd
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss became {value} at step {step + 1}/{steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps * 0.9:
            tail.append(value)
        if log_every and (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps} loss {value:.4f}", flush=True)
    model.eval()
    return sum(tail) / max(len(tail), 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: Dataset, *, batch_size: int = 512, task: Task = CLASSIFICATION
) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of ``model`` on ``ds``; with a ``task.metric``,
    (its value, NaN)."""
    model.eval()
    if len(ds) == 0:
        raise AutocompressError("cannot evaluate on an empty data set")
    if task.metric is not None:
        return float(task.metric(model, _Batches(ds, batch_size))), float("nan")
    correct = total = 0
    loss_sum = 0.0
    for x, y in batches(ds, batch_size):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / total, loss_sum / total
