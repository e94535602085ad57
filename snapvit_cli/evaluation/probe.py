"""Linear probe on frozen features (method §10.3, DINOv1 settings) with the reference's bugs fixed.

Kept from the reference: ``nn.Linear(E, C)`` with weight ~ N(0, 0.01) and zero bias, SGD (lr 1e-3,
momentum 0.9, no weight decay), batch 256, 100 epochs, cosine annealing to 0 stepped per epoch, cross-entropy,
un-normalised features, model selection by validation accuracy. Fixed: mini-batches are shuffled every epoch
(seeded), the best state is copied by value (the reference kept ``state_dict()`` references, so it returned
the last epoch), and the test split is never seen during training or selection: it is not an argument of
:func:`train_linear_probe`; score it afterwards with :func:`probe_accuracy`. Training runs in float32 (the
reference used bf16 autocast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snapvit_cli.errors import DataError


@dataclass(frozen=True)
class EpochStats:
    """What one epoch of probe training did: mean train cross-entropy and accuracy on the validation split."""

    epoch: int
    train_loss: float
    val_accuracy: float


@dataclass
class ProbeResult:
    """The probe in its best-validation state (``best_epoch`` counts from 1) and the per-epoch history."""

    classifier: nn.Linear
    best_epoch: int
    best_val_accuracy: float
    history: list[EpochStats]


def stratified_split(labels: Tensor, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded per-class split of row indices into (train, validation), both sorted.

    Each class gives ``round(val_fraction * count)`` rows to validation but always keeps one for training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    val_parts = []
    for cls in torch.unique(labels):
        rows = torch.nonzero(labels == cls).flatten()
        n_val = min(round(val_fraction * len(rows)), len(rows) - 1)
        val_parts.append(rows[torch.randperm(len(rows), generator=generator)[:n_val]])
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[torch.cat(val_parts)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def train_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    *,
    val_fraction: float = 0.2,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProbeResult:
    """Train a linear classifier on features and keep the state with the best validation accuracy.

    Without ``val_x``/``val_y`` a stratified ``val_fraction`` of the train rows (seeded) is held out for
    selection; with them, every train row is trained on. On equal validation accuracy the earlier epoch wins.
    ``progress(epoch, epochs)`` is called after each epoch. The result's classifier lives on ``device``
    (default: the train features' device).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    _check_xy("train", train_x, train_y)
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if val_x is None:
        train_rows, val_rows = stratified_split(train_y, val_fraction, seed)
        if len(val_rows) == 0:
            raise DataError(f"too few train rows ({len(train_y)}) to hold out a validation split")
        train_x, train_y, val_x, val_y = (
            train_x[train_rows],
            train_y[train_rows],
            train_x[val_rows],
            train_y[val_rows],
        )
    else:
        _check_xy("validation", val_x, val_y)
        if val_x.shape[1] != train_x.shape[1]:
            raise DataError(f"validation features have dimension {val_x.shape[1]}, train {train_x.shape[1]}")

    device = torch.device(device) if device is not None else train_x.device
    train_x, val_x = train_x.to(device, torch.float32), val_x.to(device, torch.float32)
    train_y, val_y = train_y.to(device, torch.long), val_y.to(device, torch.long)
    num_classes = int(max(train_y.max(), val_y.max())) + 1

    generator = torch.Generator().manual_seed(seed)
    classifier = _init_linear(train_x.shape[1], num_classes, generator, device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=0.0)

    history: list[EpochStats] = []
    best_state, best = None, None
    for epoch in range(1, epochs + 1):
        loss = _train_epoch(classifier, optimizer, train_x, train_y, batch_size, generator)
        scheduler.step()
        stats = EpochStats(epoch, loss, _accuracy(classifier, val_x, val_y))
        history.append(stats)
        if best is None or stats.val_accuracy > best.val_accuracy:
            best = stats
            best_state = {name: value.detach().clone() for name, value in classifier.state_dict().items()}
        if progress is not None:
            progress(epoch, epochs)

    classifier.load_state_dict(best_state)
    return ProbeResult(classifier, best.epoch, best.val_accuracy, history)


def probe_accuracy(result: ProbeResult, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of the selected probe on held-out features (e.g. the test split)."""
    _check_xy("evaluation", x, y)
    return _accuracy(result.classifier, x, y)


def _init_linear(in_features: int, num_classes: int, generator: torch.Generator, device: torch.device) -> nn.Linear:
    """``nn.Linear`` with weight ~ N(0, 0.01) and zero bias (DINO's linear-eval init).

    The weight is drawn on the CPU from ``generator`` so the probe is the same on every device and the global
    RNG is left alone.
    """
    layer = torch.nn.utils.skip_init(nn.Linear, in_features, num_classes, device=device)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(num_classes, in_features, generator=generator) * 0.01)
        layer.bias.zero_()
    return layer


def _train_epoch(
    classifier: nn.Linear,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled mini-batches; returns the mean cross-entropy over all rows."""
    order = torch.randperm(len(y), generator=generator).to(x.device)
    total = torch.zeros((), device=x.device)
    for batch in order.split(batch_size):
        loss = F.cross_entropy(classifier(x[batch]), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(batch)
    return total.item() / len(y)


@torch.no_grad()
def _accuracy(classifier: nn.Linear, x: Tensor, y: Tensor) -> float:
    """Fraction of rows whose argmax logit is the label."""
    device = classifier.weight.device
    logits = classifier(x.to(device, torch.float32))
    return (logits.argmax(dim=1) == y.to(device)).float().mean().item()


def _check_xy(name: str, x: Tensor, y: Tensor) -> None:
    """Reject feature/label pairs that do not describe the same non-empty set of rows."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{name} features must be a non-empty [rows, dim] matrix, got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{name} labels have shape {tuple(y.shape)}, expected ({x.shape[0]},)")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{name} labels must be integer class ids, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise DataError(f"{name} labels must be non-negative class ids")
    if not torch.isfinite(x).all():
        raise DataError(f"{name} features contain NaN or infinite values")
