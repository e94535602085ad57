"""kNN evaluation: hand-computed votes, tie rules, chunking, brute-force cross-check, input validation."""

from __future__ import annotations

import math

import pytest
import torch

from snapvit_cli.errors import DataError
from snapvit_cli.evaluation.knn import knn_accuracy, knn_neighbours, knn_predict

# Query (1, 0, 0). Row 0 is identical (similarity 1, label 1); rows 1 and 2 have similarity 0.8 (label 0);
# rows 3 and 4 are orthogonal / opposite. With k = 3 the majority vote is 0 (two votes against one), but
# DINO's weighted vote at T = 0.07 gives class 1 exp(1/0.07) ~ 1.6e6 against class 0 2·exp(0.8/0.07) ~ 1.8e5.
# At T = 1 the weights are e ~ 2.72 against 2·e^0.8 ~ 4.45, so class 0 wins again.
VOTE_TRAIN = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.8, 0.0, 0.6], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
VOTE_LABELS = torch.tensor([1, 0, 0, 2, 1])
VOTE_QUERY = torch.tensor([[1.0, 0.0, 0.0]])


def test_majority_and_weighted_votes_differ_as_computed_by_hand() -> None:
    assert knn_predict(VOTE_TRAIN, VOTE_LABELS, VOTE_QUERY, k=3, vote="majority").tolist() == [0]
    assert knn_predict(VOTE_TRAIN, VOTE_LABELS, VOTE_QUERY, k=3, vote="weighted").tolist() == [1]
    assert knn_predict(VOTE_TRAIN, VOTE_LABELS, VOTE_QUERY, k=3, vote="weighted", temperature=1.0).tolist() == [0]


def test_weighted_vote_stays_finite_for_tiny_temperature() -> None:
    # exp(1 / 1e-3) overflows float32; the vote must still pick the most similar neighbour's class.
    pred = knn_predict(VOTE_TRAIN, VOTE_LABELS, VOTE_QUERY, k=3, vote="weighted", temperature=1e-3)
    assert pred.tolist() == [1]


def test_features_are_l2_normalised_before_comparing() -> None:
    # Raw Euclidean distance puts the query (60, 70) nearer to (100, 0) (80.6 vs 92.2), but by angle it is
    # nearer to (0, 0.01): cosine 70/92.2 = 0.76 against 60/92.2 = 0.65.
    train = torch.tensor([[100.0, 0.0], [0.0, 0.01]])
    labels = torch.tensor([0, 1])
    assert knn_predict(train, labels, torch.tensor([[60.0, 70.0]]), k=1).tolist() == [1]


def test_several_queries_on_a_2d_circle() -> None:
    # Unit directions at 0°, 90°, 180°, 270° and 45°, labelled 0, 1, 2, 1, 0.
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 1, 0])
    queries = torch.tensor([[2.0, 0.1], [-1.0, 0.2], [0.1, -3.0], [0.2, 1.0]])
    # k=1: nearest rows are 0, 2, 3, 1.
    assert knn_predict(train, labels, queries, k=1).tolist() == [0, 2, 1, 1]
    # k=3: query 0 -> rows 0 (0°), 4 (45°), 1 (90°): labels 0, 0, 1 -> 0.
    #      query 1 (~169°) -> cosines row2 0.981, row1 0.196, row3 -0.196, row4 -0.555, row0 -0.981,
    #      so rows 2, 1, 3: labels 2, 1, 1 -> 1.
    #      query 2 (~272°) -> rows 3 (0.999), 0 (0.033), 4 (-0.683) vs row 2 (-0.033): rows 3, 0, 2 -> 1, 0, 2
    #      is a three-way tie -> smallest class 0.
    #      query 3 (~79°) -> rows 1 (0.981), 4 (0.832), 0 (0.196): labels 1, 0, 0 -> 0.
    assert knn_predict(train, labels, queries, k=3).tolist() == [0, 1, 0, 0]


def test_vote_tie_goes_to_smallest_class() -> None:
    # k = 4 neighbours with labels 2, 2, 1, 1 (a tie); class 0 is farther away.
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.0, 1.0]])
    labels = torch.tensor([2, 1, 2, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, query, k=4).tolist() == [1]
    # With weights, the closer class-2 rows win the same tie.
    assert knn_predict(train, labels, query, k=4, vote="weighted").tolist() == [2]


def test_equally_similar_neighbours_prefer_lower_train_index() -> None:
    # Rows 0..9 are the same direction (0, 1, 0), so every query has exactly equal similarity to all of them;
    # their labels fall 9, 8, ..., 0 with the index. Row 10 is closer to the first query, row 11 is far.
    tied = torch.tensor([[0.0, 1.0, 0.0]]).repeat(10, 1)
    train = torch.cat([tied, torch.tensor([[0.1, 1.0, 0.0], [1.0, 0.0, 0.0]])])
    labels = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 5, 0])
    queries = torch.tensor([[0.1, 1.0, 0.0], [0.0, 1.0, 0.5]])
    # Query 0: row 10 (label 5) then rows 0, 1 (labels 9, 8) -> vote 5/9/8 three-way tie -> 5.
    # Query 1: rows 0, 1, 2 (labels 9, 8, 7) -> three-way tie -> 7. Any other choice of tied rows would
    # bring in a smaller label and change both answers.
    assert knn_predict(train, labels, queries, k=3).tolist() == [5, 7]
    sims, idx = knn_neighbours(train, queries, k=3)
    assert idx.tolist() == [[10, 0, 1], [0, 1, 2]]
    assert sims[1].tolist() == pytest.approx([1 / math.sqrt(1.25)] * 3)


def test_knn_accuracy_counts_correct_queries() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    queries = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.2]])
    # Predictions are 0, 1, 0; the third label is wrong on purpose.
    assert knn_accuracy(train, labels, queries, torch.tensor([0, 1, 1]), k=1) == pytest.approx(2 / 3)


def _brute_force_knn(train: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, k: int, vote: str):
    """Independent reference: float64 Euclidean distances on unit vectors, stable argsort, per-query loops."""
    train = train.double() / train.double().norm(dim=1, keepdim=True)
    queries = queries.double() / queries.double().norm(dim=1, keepdim=True)
    dist = ((queries[:, None, :] - train[None, :, :]) ** 2).sum(dim=2).sqrt()
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    predictions = []
    for q in range(len(queries)):
        scores: dict[int, float] = {}
        for i in order[q].tolist():
            cosine = 1.0 - dist[q, i].item() ** 2 / 2.0
            weight = 1.0 if vote == "majority" else math.exp(cosine / 0.07)
            scores[labels[i].item()] = scores.get(labels[i].item(), 0.0) + weight
        best = max(scores.values())
        predictions.append(min(c for c, s in scores.items() if s == best))
    return predictions


def _continuous_data() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(300, 16, generator=gen)
    return train, torch.randint(0, 5, (300,), generator=gen), torch.randn(57, 16, generator=gen) * 3.0


def _tied_data() -> tuple[torch.Tensor, ...]:
    """Train rows that are all one of four axis directions, so every query has four groups of exactly
    equal similarities (its own coordinates) and k = 7 almost always cuts through a group."""
    gen = torch.Generator().manual_seed(1)
    train = torch.eye(4)[torch.randint(0, 4, (60,), generator=gen)] * torch.rand(60, 1, generator=gen).add(0.5)
    return train, torch.randint(0, 5, (60,), generator=gen), torch.randn(40, 4, generator=gen)


@pytest.mark.parametrize("vote", ["majority", "weighted"])
@pytest.mark.parametrize("data", [_continuous_data, _tied_data])
def test_chunked_equals_unchunked_and_brute_force(vote: str, data) -> None:
    train, labels, queries = data()
    one = knn_predict(train, labels, queries, k=7, vote=vote, chunk_size=1)
    some = knn_predict(train, labels, queries, k=7, vote=vote, chunk_size=10)
    whole = knn_predict(train, labels, queries, k=7, vote=vote, chunk_size=4096)
    assert torch.equal(one, whole)
    assert torch.equal(some, whole)
    assert whole.tolist() == _brute_force_knn(train, labels, queries, 7, vote)


def test_k_equal_to_train_size_uses_every_row() -> None:
    # Labels 1, 0, 0, 2, 1: classes 0 and 1 tie with two votes each -> 0.
    assert knn_predict(VOTE_TRAIN, VOTE_LABELS, VOTE_QUERY, k=5).tolist() == [0]
    _, idx = knn_neighbours(VOTE_TRAIN, VOTE_QUERY, k=5)
    assert idx.tolist() == [[0, 1, 2, 3, 4]]


def test_topk_only_ever_sees_chunk_sized_similarity_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = []
    real_topk = torch.topk

    def recording_topk(input, *args, **kwargs):
        shapes.append(tuple(input.shape))
        return real_topk(input, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    train = torch.randn(200, 8)
    queries = torch.randn(10, 8)
    knn_predict(train, torch.zeros(200, dtype=torch.long), queries, k=5, chunk_size=3)
    assert [shape[0] for shape in shapes] == [3, 3, 3, 1]
    assert all(shape[1] == 200 for shape in shapes)


def test_integer_label_dtypes_and_num_classes() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.0, 2.0]])
    labels32 = torch.tensor([3, 4], dtype=torch.int32)
    assert knn_predict(train, labels32, query, k=1, num_classes=10).tolist() == [4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(2000, 64, generator=gen)
    labels = torch.randint(0, 10, (2000,), generator=gen)
    queries = torch.randn(300, 64, generator=gen)
    cpu = knn_predict(train, labels, queries, k=20, chunk_size=64)
    gpu = knn_predict(train.cuda(), labels.cuda(), queries.cuda(), k=20, chunk_size=64)
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize(
    ("train", "labels", "queries", "k", "message"),
    [
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), 5, "only 4 rows"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 5), 1, "dimension 3"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), torch.randn(2, 3), 1, "non-empty"),
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(0, 3), 1, "non-empty"),
        (torch.randn(4, 3), torch.zeros(3, dtype=torch.long), torch.randn(2, 3), 1, "labels have shape"),
        (torch.randn(4, 3), torch.zeros(4), torch.randn(2, 3), 1, "integer class ids"),
        (torch.randn(4, 3), torch.tensor([0, 1, -1, 0]), torch.randn(2, 3), 1, "non-negative"),
        (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), 1, "NaN"),
    ],
)
def test_bad_data_is_a_data_error(train, labels, queries, k, message) -> None:
    with pytest.raises(DataError, match=message):
        knn_predict(train, labels, queries, k=k)


def test_bad_arguments_are_value_errors() -> None:
    train, labels, query = torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), torch.randn(2, 3)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(train, labels, query, k=0)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_predict(train, labels, query, k=1, chunk_size=0)
    with pytest.raises(ValueError, match="vote must be"):
        knn_predict(train, labels, query, k=1, vote="uniform")
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, query, k=1, vote="weighted", temperature=0.0)
    with pytest.raises(DataError, match="num_classes = 2"):
        knn_predict(train, labels, query, k=1, num_classes=2)
    with pytest.raises(DataError, match="query labels"):
        knn_accuracy(train, labels, query, torch.zeros(3, dtype=torch.long), k=1)
