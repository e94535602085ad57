"""Tests for the least-squares weight correction (method §8)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from snapvit_cli.correction.solver import (
    DAMPING_GRID,
    DEFAULT_DAMPING,
    CorrectionError,
    Damping,
    InputStatistics,
    TokenStatistics,
    corrected_weight,
    parse_damping,
    reconstruction_error,
    select_correction,
)


def correlated_inputs(rows: int, d_in: int, seed: int) -> Tensor:
    """Float64 inputs [rows, d_in] whose columns are strongly correlated (random mixing of fewer sources)."""
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randn(rows, d_in, generator=gen, dtype=torch.float64)
    mixing = torch.randn(d_in, d_in, generator=gen, dtype=torch.float64)
    mixing[:, : d_in // 2] *= 0.05  # half the sources are weak: columns nearly live in a d_in/2-dim subspace
    return sources @ mixing.T


def random_weight(out: int, d_in: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(out, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def sequential_obs(weight: Tensor, damped_h: Tensor, kept: Tensor) -> Tensor:
    """Column-by-column OBS with a fixed mask, pruned columns first (method §8 step 4), in float64."""
    w = weight.to(torch.float64).clone()
    h_inv = torch.linalg.inv(damped_h.to(torch.float64))
    pruned = [q for q in range(w.shape[1]) if q not in set(kept.tolist())]
    for q in pruned:
        err = w[:, q] / h_inv[q, q]
        w -= torch.outer(err, h_inv[q, :])
        h_inv -= torch.outer(h_inv[:, q], h_inv[q, :]) / h_inv[q, q]
    assert torch.allclose(w[:, pruned], torch.zeros_like(w[:, pruned]), atol=1e-12)
    return w[:, kept]


def output_error(weight: Tensor, new_kept: Tensor, x: Tensor, kept: Tensor) -> float:
    """‖W x − W_K' x_K‖² summed over the rows of x, computed from the inputs themselves."""
    return float(((x @ weight.T - x[:, kept] @ new_kept.T) ** 2).sum())


KEEP_SETS = [
    torch.arange(5),
    torch.arange(11),
    torch.tensor([0, 3, 7, 11]),
    torch.tensor([11, 2, 5, 9, 1]),  # unordered, non-prefix
    torch.tensor([0, 1, 2, 6, 7, 8]),  # attn.proj style: heads 0 and 2 of 4 with head_dim 3
]


@pytest.mark.parametrize("kept", KEEP_SETS, ids=lambda k: "-".join(map(str, k.tolist())))
def test_closed_form_equals_sequential_obs(kept: Tensor) -> None:
    x = correlated_inputs(40, 12, seed=0)
    h = x.T @ x
    w = random_weight(8, 12, seed=1)
    lam = 0.01 * float(h.diagonal().mean())
    expected = sequential_obs(w, h + lam * torch.eye(12, dtype=torch.float64), kept)
    torch.testing.assert_close(corrected_weight(w, h, kept), expected, rtol=0, atol=1e-10)


def test_int_keep_is_a_prefix() -> None:
    x = correlated_inputs(40, 12, seed=2)
    w = random_weight(8, 12, seed=3)
    assert torch.equal(corrected_weight(w, x.T @ x, 6), corrected_weight(w, x.T @ x, torch.arange(6)))
    assert corrected_weight(w, x.T @ x, 0).shape == (8, 0)


def test_tiny_damping_gives_the_least_squares_solution_of_the_inputs() -> None:
    x = correlated_inputs(200, 12, seed=4)
    w = random_weight(8, 12, seed=5)
    kept = torch.tensor([1, 4, 5, 8, 10])
    lstsq = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T
    got = corrected_weight(w, x.T @ x, kept, Damping("mean", 1e-13))
    torch.testing.assert_close(got, lstsq, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "kept", [torch.arange(20), torch.randperm(32, generator=torch.Generator().manual_seed(0))[:20]]
)
def test_correction_lowers_output_error_vs_truncation(kept: Tensor) -> None:
    torch.manual_seed(0)
    x = correlated_inputs(600, 32, seed=6).float()
    layer = nn.Linear(32, 16)
    stats = InputStatistics(32)
    handle = stats.register(layer)
    for batch in x.view(6, 10, 10, 32):  # [images, tokens, d_in] batches
        layer(batch)
    handle.remove()

    w = layer.weight.detach().double()
    xd = x.double()
    corrected = corrected_weight(w, stats.hessian, kept)
    truncated_err = output_error(w, w[:, kept], xd, kept)
    corrected_err = output_error(w, corrected, xd, kept)
    assert corrected_err < 0.5 * truncated_err
    # the trace form over the normalised Hessian is the mean over rows of the same quantity
    assert reconstruction_error(w, corrected, stats.hessian, kept) == pytest.approx(corrected_err / 600, rel=1e-9)
    assert reconstruction_error(w, w[:, kept], stats.hessian, kept) == pytest.approx(truncated_err / 600, rel=1e-9)


def test_nothing_pruned_returns_the_weight_bit_identical() -> None:
    w = random_weight(8, 12, seed=7, dtype=torch.float32)
    x = correlated_inputs(30, 12, seed=8)
    strong = parse_damping("max:10")
    assert torch.equal(corrected_weight(w, x.T @ x, 12, strong), w)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert torch.equal(corrected_weight(w, x.T @ x, perm, strong), w[:, perm])


def test_solution_does_not_depend_on_the_hessian_scale() -> None:
    x = correlated_inputs(50, 12, seed=9)
    w = random_weight(8, 12, seed=10)
    kept = torch.tensor([0, 2, 3, 9])
    base = corrected_weight(w, x.T @ x, kept)
    for scale in (1e-4, 2 / 50, 1e5):
        torch.testing.assert_close(corrected_weight(w, scale * (x.T @ x), kept), base, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mean:0.01", Damping("mean", 0.01)),
        ("max:0.1", Damping("max", 0.1)),
        ("p95:0.01", Damping("percentile", 0.01, 95.0)),
        (" P99.5:1e-3 ", Damping("percentile", 0.001, 99.5)),
        ("p0:2", Damping("percentile", 2.0, 0.0)),
    ],
)
def test_parse_damping_valid(spec: str, expected: Damping) -> None:
    damping = parse_damping(spec)
    assert damping == expected
    assert parse_damping(str(damping)) == damping


@pytest.mark.parametrize(
    "spec",
    ["", "mean", "mean:", "0.01", "mean:0", "mean:-0.1", "mean:nan", "max:inf", "median:0.1", "p101:0.1",
     "p:0.1", "p-5:0.1", "mean:abc", "mean:0.01:2", "mean 0.01"],
)  # fmt: skip
def test_parse_damping_invalid(spec: str) -> None:
    with pytest.raises(CorrectionError, match="bad damping"):
        parse_damping(spec)


def test_default_damping_is_mean_one_percent() -> None:
    assert str(DEFAULT_DAMPING) == "mean:0.01"


def test_parse_damping_auto_means_choose_per_layer() -> None:
    assert parse_damping("auto") is None and parse_damping(" AUTO ") is None


def gram(rows: Tensor) -> Tensor:
    return rows.T @ rows / rows.shape[0]


def test_token_statistics_split_the_class_token_from_the_rest() -> None:
    x = torch.randn(5, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, 0] *= 10.0  # an outlier class token
    stats = TokenStatistics(4, "cls")
    for part in x.split(2):
        stats.update(part)
    torch.testing.assert_close(stats.hessian("cls"), gram(x[:, 0]))
    torch.testing.assert_close(stats.hessian("all"), gram(x.reshape(-1, 4)))
    torch.testing.assert_close(stats.hessian("weighted"), 0.5 * gram(x[:, 0]) + 0.5 * gram(x[:, 1:].reshape(-1, 4)))
    assert (stats.readout.count, stats.rest.count) == (5, 30)
    with pytest.raises(ValueError, match="tokens must be one of"):
        stats.hessian("patch")


def test_token_statistics_for_pooled_models_use_the_patch_mean() -> None:
    x = torch.randn(3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    stats = TokenStatistics(4, "mean", prefix=2)  # e.g. a class token and a register before the patches
    stats.update(x)
    torch.testing.assert_close(stats.hessian("cls"), gram(x[:, 2:].mean(1)))
    torch.testing.assert_close(stats.hessian("all"), gram(x.reshape(-1, 4)))
    with pytest.raises(ValueError, match="expected inputs"):
        stats.update(x[0])


def test_select_correction_picks_the_damping_best_on_held_back_rows() -> None:
    weight, kept = random_weight(6, 12, seed=1), torch.arange(5)
    rows = correlated_inputs(220, 12, seed=2)  # one distribution: 20 rows to fit, 200 held back
    fit, held = gram(rows[:20]), gram(rows[20:])
    choice = select_correction(weight, fit, held, kept)
    errors = {f: reconstruction_error(weight, corrected_weight(weight, fit, kept, Damping("mean", f)), held, kept)
              for f in DAMPING_GRID}  # fmt: skip
    best = min(errors, key=errors.get)
    assert choice.fraction == best and choice.heldout_after == pytest.approx(errors[best])
    assert len(set(errors.values())) == len(errors)  # the choice mattered
    torch.testing.assert_close(choice.weight, corrected_weight(weight, fit, kept, Damping("mean", best)))
    fixed = select_correction(weight, fit, held, kept, Damping("max", 0.5))
    assert fixed.fraction == 0.5


def test_select_correction_guard_keeps_the_plain_columns() -> None:
    """Fit rows where pruned column 5 copies kept column 0; held-back rows where it is its negative: the fit's
    transfer of column 5 onto column 0 doubles the held-back error, so the plain columns are kept."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(300, 6, dtype=torch.float64, generator=gen)
    fit_rows, held_rows = x.clone(), x.clone()
    fit_rows[:, 5], held_rows[:, 5] = x[:, 0], -x[:, 0]
    weight = torch.zeros(3, 6, dtype=torch.float64)
    weight[:, 5] = 1.0
    plain = select_correction(weight, gram(fit_rows), gram(held_rows), 5)
    assert plain.fraction is None and plain.heldout_after == plain.heldout_before
    assert torch.equal(plain.weight, weight[:, :5])
    unguarded = select_correction(weight, gram(fit_rows), gram(held_rows), 5, guard=False)
    assert unguarded.fraction is not None and unguarded.heldout_after > unguarded.heldout_before


def test_damping_value_statistics() -> None:
    diag = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0], dtype=torch.float64)
    assert parse_damping("mean:0.01").value(diag) == pytest.approx(0.04)
    assert parse_damping("max:0.1").value(diag) == pytest.approx(1.0)
    assert parse_damping("p50:1").value(diag) == pytest.approx(3.0)
    assert parse_damping("p95:1").value(diag) == pytest.approx(8.8)  # 4 + 0.8 * (10 - 4), linear interpolation


def test_accumulator_over_batches_equals_gram_of_concatenation() -> None:
    gen = torch.Generator().manual_seed(11)
    batches = [
        torch.randn(2, 5, 7, generator=gen),
        torch.randn(3, 7, generator=gen),
        torch.randn(1, 4, 5, 7, generator=gen),
    ]
    stats = InputStatistics(7)
    for batch in batches:
        stats.update(batch)
    rows = torch.cat([b.reshape(-1, 7) for b in batches]).double()
    assert stats.count == 10 + 3 + 20
    torch.testing.assert_close(stats.gram, rows.T @ rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.hessian, rows.T @ rows / 33, rtol=1e-12, atol=1e-12)

    single = InputStatistics(7, dtype=torch.float32)
    for batch in batches:
        single.update(batch)
    assert single.hessian.dtype == torch.float32
    torch.testing.assert_close(single.hessian.double(), stats.hessian, rtol=1e-5, atol=1e-6)


def test_accumulator_hook_stops_after_remove_and_checks_width() -> None:
    layer = nn.Linear(4, 3)
    stats = InputStatistics(4)
    handle = stats.register(layer)
    layer(torch.ones(2, 4))
    handle.remove()
    layer(torch.ones(5, 4))
    assert stats.count == 2
    torch.testing.assert_close(stats.hessian, torch.ones(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="input features"):
        InputStatistics(5).register(layer)
    with pytest.raises(RuntimeError, match="no inputs"):
        _ = InputStatistics(4).hessian


def test_dead_inputs_leave_the_live_solution_unchanged() -> None:
    x = 10 * correlated_inputs(60, 12, seed=12)  # live diag entries ≫ 1, so "max" damping ignores the dead ones
    x[:, [2, 9]] = 0
    w = random_weight(8, 12, seed=13)
    kept = torch.tensor([0, 1, 2, 4, 5, 7])  # 2 is dead and kept, 9 is dead and pruned
    damping = parse_damping("max:0.01")
    got = corrected_weight(w, x.T @ x, kept, damping)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:, 2], w[:, 2])  # no information about a dead input: its weights stay

    live = torch.tensor([i for i in range(12) if i not in (2, 9)])
    live_kept = torch.tensor([0, 1, 3, 4, 6])  # positions of 0, 1, 4, 5, 7 among the live columns
    expected = corrected_weight(w[:, live], (x.T @ x)[live][:, live], live_kept, damping)
    torch.testing.assert_close(got[:, [0, 1, 3, 4, 5]], expected, rtol=0, atol=1e-12)


def test_all_dead_inputs_and_zero_percentile_damping_still_solve() -> None:
    w = random_weight(6, 10, seed=14, dtype=torch.float32)
    assert torch.equal(corrected_weight(w, torch.zeros(10, 10), 4, parse_damping("p50:0.01")), w[:, :4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_weights_come_back_in_their_dtype(dtype: torch.dtype) -> None:
    x = correlated_inputs(80, 12, seed=15)
    w64 = random_weight(8, 12, seed=16)
    w = w64.to(dtype)
    h = (x.T @ x).float()
    got = corrected_weight(w, h, 7)
    assert got.dtype == dtype
    reference = corrected_weight(w.double(), h, 7).to(dtype)  # the solve is float64 either way
    torch.testing.assert_close(got, reference, rtol=0, atol=0)


def test_indefinite_hessian_raises_damping_then_fails() -> None:
    w = random_weight(4, 3, seed=17)
    h = torch.tensor([[1.0, 2.5, 0.3], [2.5, 1.0, 0.2], [0.3, 0.2, 1.0]], dtype=torch.float64)  # eigenvalue ≈ -1.5
    with pytest.warns(RuntimeWarning, match="damping raised to 10"):
        got = corrected_weight(w, h, 2)
    damped = h + 10 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(got, w[:, :2] + w[:, 2:] @ damped[2:, :2] @ torch.linalg.inv(damped[:2, :2]))

    h[0, 1] = h[1, 0] = 50.0
    with pytest.raises(CorrectionError, match="not positive definite"):
        corrected_weight(w, h, 2)


def test_bad_inputs_are_rejected() -> None:
    w = random_weight(4, 6, seed=18)
    h = torch.eye(6, dtype=torch.float64)
    with pytest.raises(ValueError, match="outside"):
        corrected_weight(w, h, 7)
    with pytest.raises(ValueError, match="outside"):
        corrected_weight(w, h, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="repeated"):
        corrected_weight(w, h, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="shape"):
        corrected_weight(w, torch.eye(5), 3)
    h[1, 2] = float("nan")
    with pytest.raises(CorrectionError, match="NaN"):
        corrected_weight(w, h, 3)
