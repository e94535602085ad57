"""Linear probe: learns separable data, selects on validation only, returns the best state, shuffles."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from snapvit_cli.errors import DataError
from snapvit_cli.evaluation.probe import probe_accuracy, stratified_split, train_linear_probe


def _blobs(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Five Gaussian blobs in 32-D around fixed, well separated centres (unit noise, centres ~N(0, 3²))."""
    centres = torch.randn(5, 32, generator=torch.Generator().manual_seed(123)) * 3.0
    labels = torch.arange(5).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 32, generator=torch.Generator().manual_seed(seed))
    return centres[labels] + noise, labels


@pytest.fixture
def created_linears(monkeypatch: pytest.MonkeyPatch) -> list[nn.Linear]:
    """Every ``nn.Linear`` built during the test, recording the rows each training forward pass sees."""
    created: list[nn.Linear] = []

    class RecordingLinear(nn.Linear):
        def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device, dtype)
            self.train_batches: list[torch.Tensor] = []
            created.append(self)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                self.train_batches.append(x[:, 0].detach().clone())
            return super().forward(x)

    monkeypatch.setattr(nn, "Linear", RecordingLinear)
    return created


def test_probe_separates_gaussian_blobs() -> None:
    train_x, train_y = _blobs(200, seed=0)
    test_x, test_y = _blobs(100, seed=1)
    result = train_linear_probe(train_x, train_y, epochs=30)
    assert probe_accuracy(result, test_x, test_y) > 0.9
    assert result.classifier.out_features == 5
    assert len(result.history) == 30
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_training_takes_no_test_data_and_defaults_follow_the_reference() -> None:
    params = inspect.signature(train_linear_probe).parameters
    assert list(params) == [
        "train_x", "train_y", "val_fraction", "val_x", "val_y", "epochs", "batch_size", "lr", "momentum",
        "weight_decay", "seed", "device", "progress",
    ]  # fmt: skip
    defaults = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults["epochs"] == 100 and defaults["batch_size"] == 256
    assert defaults["lr"] == 1e-3 and defaults["momentum"] == 0.9 and defaults["weight_decay"] == 0.0


def test_selection_is_unaffected_by_test_labels_and_deterministic() -> None:
    train_x, train_y = _blobs(40, seed=0)
    test_x, test_y = _blobs(20, seed=1)
    first = train_linear_probe(train_x, train_y, epochs=15, seed=3)
    true_acc = probe_accuracy(first, test_x, test_y)
    garbled = torch.roll(test_y, 17)
    second = train_linear_probe(train_x, train_y, epochs=15, seed=3)
    garbled_acc = probe_accuracy(second, test_x, garbled)
    assert torch.equal(first.classifier.weight, second.classifier.weight)
    assert torch.equal(first.classifier.bias, second.classifier.bias)
    assert first.best_epoch == second.best_epoch
    assert garbled_acc < true_acc  # the garbled labels were really used for scoring, and only there
    other_seed = train_linear_probe(train_x, train_y, epochs=15, seed=4)
    assert not torch.equal(first.classifier.weight, other_seed.classifier.weight)


def _early_peak_data() -> tuple[torch.Tensor, ...]:
    """Validation accuracy that is 1.0 early and 0.5 at the end.

    Train: 90 rows at t = 1 (class 0), 10 rows at t = 3 (class 1), features (t, 1). The first updates push
    every row towards the majority class 0; later the probe learns that t = 3 is class 1. Validation labels
    every row class 0, at t = 3 and t = 1, so it is fully right early and half right after convergence.
    """
    t = torch.tensor([1.0] * 90 + [3.0] * 10)
    train_x = torch.stack([t, torch.ones(100)], dim=1)
    train_y = torch.tensor([0] * 90 + [1] * 10)
    val_x = torch.tensor([[3.0, 1.0]] * 10 + [[1.0, 1.0]] * 10)
    val_y = torch.zeros(20, dtype=torch.long)
    return train_x, train_y, val_x, val_y


def test_best_validation_state_is_returned_by_value(created_linears: list[nn.Linear]) -> None:
    train_x, train_y, val_x, val_y = _early_peak_data()
    snapshots: list[torch.Tensor] = []

    def snapshot(epoch: int, epochs: int) -> None:
        snapshots.append(torch.cat([created_linears[0].weight.flatten(), created_linears[0].bias]).detach().clone())

    result = train_linear_probe(train_x, train_y, val_x=val_x, val_y=val_y, epochs=60, lr=0.1, progress=snapshot)
    accuracies = [stats.val_accuracy for stats in result.history]
    assert max(accuracies) == 1.0 and accuracies[-1] == 0.5
    assert result.best_epoch == accuracies.index(1.0) + 1  # the earliest best epoch
    assert result.best_val_accuracy == 1.0
    returned = torch.cat([result.classifier.weight.flatten(), result.classifier.bias]).detach()
    assert torch.equal(returned, snapshots[result.best_epoch - 1])
    assert not torch.equal(returned, snapshots[-1])
    assert probe_accuracy(result, val_x, val_y) == 1.0


def test_minibatches_are_reshuffled_every_epoch(created_linears: list[nn.Linear]) -> None:
    # Feature 0 is the row number, so the recorded batches say which rows were trained on, in which order.
    rows = torch.arange(100, dtype=torch.float32)
    train_x = torch.stack([rows, torch.randn(100, generator=torch.Generator().manual_seed(0))], dim=1)
    train_y = (rows % 2).long()
    val_x, val_y = train_x[:10], train_y[:10]
    train_linear_probe(train_x, train_y, val_x=val_x, val_y=val_y, epochs=3, batch_size=32)
    batches = created_linears[0].train_batches
    assert [len(b) for b in batches] == [32, 32, 32, 4] * 3
    epochs = [torch.cat(batches[i : i + 4]) for i in range(0, 12, 4)]
    for order in epochs:
        assert torch.equal(order.sort().values, rows)  # every row exactly once per epoch
    assert not torch.equal(epochs[0], rows)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])


def test_initial_weights_follow_dino_linear_eval() -> None:
    # With lr = 0 nothing moves, so the result is the initial layer: weight ~ N(0, 0.01), bias 0.
    x = torch.randn(500, 100)
    y = torch.arange(500) % 10
    result = train_linear_probe(x, y, epochs=1, lr=0.0)
    assert result.classifier.weight.shape == (10, 100)
    assert 0.009 < result.classifier.weight.std().item() < 0.011
    assert abs(result.classifier.weight.mean().item()) < 0.001
    assert torch.equal(result.classifier.bias, torch.zeros(10))


def test_progress_reports_every_epoch() -> None:
    calls = []
    train_x, train_y = _blobs(10, seed=0)
    train_linear_probe(train_x, train_y, epochs=4, progress=lambda e, n: calls.append((e, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_stratified_split_takes_a_fifth_of_every_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 1 + [3] * 5)
    train_rows, val_rows = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[val_rows], minlength=4).tolist() == [2, 4, 0, 1]
    assert torch.equal(torch.cat([train_rows, val_rows]).sort().values, torch.arange(len(labels)))
    again = stratified_split(labels, 0.2, seed=0)
    assert torch.equal(again[1], val_rows)
    assert not torch.equal(stratified_split(labels, 0.2, seed=1)[1], val_rows)


def test_bad_inputs_are_rejected() -> None:
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    with pytest.raises(ValueError, match="both val_x and val_y"):
        train_linear_probe(x, y, val_x=x)
    with pytest.raises(DataError, match="too few"):
        train_linear_probe(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="labels have shape"):
        train_linear_probe(x, y[:5])
    with pytest.raises(DataError, match="dimension 5"):
        train_linear_probe(x, y, val_x=torch.randn(4, 5), val_y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="integer class ids"):
        train_linear_probe(x, y.float())
    with pytest.raises(ValueError, match="val_fraction"):
        train_linear_probe(x, y, val_fraction=1.0)


def test_learning_rate_follows_cosine_annealing_per_epoch(created_linears: list[nn.Linear]) -> None:
    # Full-batch SGD without momentum: the epoch-e update is exactly -lr · f_e · grad(w_{e-1}), with
    # f_e = (1 + cos(pi · (e - 1) / epochs)) / 2 = 1, 0.854, 0.5, 0.146 for 4 epochs.
    train_x, train_y = _blobs(20, seed=0)
    states: list[tuple[torch.Tensor, torch.Tensor]] = []

    def snapshot(epoch: int, epochs: int) -> None:
        layer = created_linears[0]
        states.append((layer.weight.detach().clone(), layer.bias.detach().clone()))

    train_linear_probe(
        train_x, train_y, val_x=train_x, val_y=train_y, epochs=4, batch_size=1000, lr=0.01, momentum=0.0,
        progress=snapshot,
    )  # fmt: skip
    for epoch, expected in [(2, 0.8535534), (3, 0.5), (4, 0.1464466)]:
        weight, bias = (t.clone().requires_grad_() for t in states[epoch - 2])
        nn.functional.cross_entropy(train_x @ weight.T + bias, train_y).backward()
        step = states[epoch - 1][0] - weight.detach()
        assert torch.allclose(step, -0.01 * expected * weight.grad, rtol=1e-3, atol=1e-7)
