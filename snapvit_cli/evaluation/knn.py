"""k-nearest-neighbour evaluation of frozen features (method §10.2).

Parity with the reference (sklearn ``KNeighborsClassifier(n_neighbors=20)`` on L2-normalised features):
Euclidean distance on unit vectors ranks neighbours exactly like cosine similarity, the vote is uniform, and a
vote tie goes to the smallest class id. ``vote="weighted"`` is DINO's temperature-weighted vote instead (each
neighbour adds ``exp(similarity / T)`` to its class).

Similarities are computed in float32 one chunk of queries at a time (``chunk @ train.T`` then top-k), so
memory is O(chunk_size · N) rather than O(M · N), on whatever device the train features live on. Neighbours
tied in similarity are resolved by preferring the lower train index, as sklearn's stable sort by distance
does, so the result does not depend on how ``torch.topk`` happens to order equal values. (Ties are exact
float32 ties: duplicated train rows normally give equal similarities, but a matmul kernel may round the
same dot product differently in different columns.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from snapvit_cli.errors import DataError
from snapvit_cli.evaluation.settings import VOTES

Vote = Literal["majority", "weighted"]


def knn_neighbours(
    train_features: Tensor, query_features: Tensor, k: int = 20, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Similarities [M, k] and train indices [M, k] of each query's k nearest train rows, nearest first.

    Separate from the vote so a caller can report both votes from a single pass over the features.
    """
    _check_features(train_features, query_features, k)
    return _neighbours(train_features, query_features, k, chunk_size)


def _neighbours(train_features: Tensor, query_features: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """:func:`knn_neighbours` on already validated features."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    train = F.normalize(train_features.float(), dim=1)
    sims, idx = [], []
    for start in range(0, query_features.shape[0], chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float().to(train.device), dim=1)
        chunk_sims = query @ train.T
        chunk_idx = _top_k_lowest_index_first(chunk_sims, k)
        top_sims, order = chunk_sims.gather(1, chunk_idx).sort(dim=1, descending=True, stable=True)
        sims.append(top_sims)
        idx.append(chunk_idx.gather(1, order))
    return torch.cat(sims), torch.cat(idx)


def knn_vote(
    neighbour_sims: Tensor,
    neighbour_labels: Tensor,
    num_classes: int,
    vote: Vote = "majority",
    temperature: float = 0.07,
) -> Tensor:
    """Class id per query from its neighbours' labels; ties go to the smallest class id (first argmax)."""
    if vote == "majority":
        weights = torch.ones_like(neighbour_sims)
    elif vote == "weighted":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        # Subtracting the row maximum leaves the argmax unchanged and keeps exp() finite for small T.
        shifted = neighbour_sims - neighbour_sims.max(dim=1, keepdim=True).values
        weights = torch.exp(shifted / temperature)
    else:
        raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
    scores = torch.zeros(neighbour_sims.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
    scores.scatter_add_(1, neighbour_labels.long(), weights)
    return scores.argmax(dim=1)


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    k: int = 20,
    vote: Vote = "majority",
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Predicted class id [M] of each query by a k-NN vote over the train set (on the train device)."""
    _check_features(train_features, query_features, k)
    num_classes = _check_labels(train_labels, train_features.shape[0], num_classes)
    sims, idx = _neighbours(train_features, query_features, k, chunk_size)
    labels = train_labels.to(idx.device, torch.long)[idx]
    return knn_vote(sims, labels, num_classes, vote, temperature)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    query_labels: Tensor,
    k: int = 20,
    vote: Vote = "majority",
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` against ``query_labels``."""
    if query_labels.shape != (query_features.shape[0],):
        raise DataError(f"query labels have shape {tuple(query_labels.shape)}, expected ({query_features.shape[0]},)")
    predictions = knn_predict(
        train_features, train_labels, query_features, k, vote, temperature, num_classes, chunk_size
    )
    return (predictions == query_labels.to(predictions.device)).float().mean().item()


def _top_k_lowest_index_first(sims: Tensor, k: int) -> Tensor:
    """Column indices [rows, k] of each row's k largest values, taking lower indices first among equal values.

    ``torch.topk`` may pick any of the columns tied with the k-th largest value. Asking it for k + 1 values
    shows which rows have such a tie at the cut; only those rows (rare outside duplicated data) take the
    slower exact path.
    """
    rows, columns = sims.shape
    if k == columns:
        return torch.arange(columns, device=sims.device).expand(rows, columns)
    values, idx = torch.topk(sims, k + 1, dim=1)
    idx = idx[:, :k]
    cut_tied = torch.nonzero(values[:, k - 1] == values[:, k]).flatten()
    if len(cut_tied):
        idx[cut_tied] = _resolve_cut_ties(sims[cut_tied], values[cut_tied, k - 1 : k], k)
    return idx.sort(dim=1).values


def _resolve_cut_ties(sims: Tensor, kth: Tensor, k: int) -> Tensor:
    """Every column above the k-th value ``kth`` [rows, 1], then the tied columns in index order."""
    above = sims > kth
    tied = sims == kth
    free = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    chosen = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= free))
    return chosen.nonzero()[:, 1].view(-1, k)


def _check_features(train_features: Tensor, query_features: Tensor, k: int) -> None:
    """Reject feature sets that cannot be compared (user-data problems) and bad ``k``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, features in (("train", train_features), ("query", query_features)):
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            shape = tuple(features.shape)
            raise DataError(f"{name} features must be a non-empty [rows, dim] matrix, got {shape}")
        if not torch.isfinite(features).all():
            raise DataError(f"{name} features contain NaN or infinite values")
    if train_features.shape[1] != query_features.shape[1]:
        raise DataError(
            f"train features have dimension {train_features.shape[1]} but query features "
            f"{query_features.shape[1]}; were they extracted with the same model?"
        )
    if k > train_features.shape[0]:
        rows = train_features.shape[0]
        raise DataError(f"k = {k} neighbours requested but the train set has only {rows} rows")


def _check_labels(labels: Tensor, rows: int, num_classes: int | None) -> int:
    """Validate integer class ids in ``[0, num_classes)`` and return the number of classes."""
    if labels.shape != (rows,):
        raise DataError(f"train labels have shape {tuple(labels.shape)}, expected ({rows},)")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise DataError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if int(labels.min()) < 0:
        raise DataError("labels must be non-negative class ids")
    needed = int(labels.max()) + 1
    if num_classes is None:
        return needed
    if num_classes < needed:
        raise DataError(f"labels go up to {needed - 1} but num_classes = {num_classes}")
    return num_classes
