"""xNES: reference constants, one update against the formulas, convergence, bounds, budget handling."""

import math

import numpy as np
import pytest

from snapvit_cli.scoring.xnes import XNES, expm_symmetric, minimize, rank_utilities


@pytest.mark.parametrize(
    ("dim", "population", "learning_rate"),
    [(156, 19, 0.00248), (84, 17, 0.00579), (408, 22, 0.00066), (544, 22, 0.00044)],
)
def test_default_constants_match_the_reference(dim, population, learning_rate):
    optimizer = XNES(np.ones(dim))
    assert optimizer.population_size == population
    assert round(optimizer.learning_rate, 5) == learning_rate


def test_rank_utilities_by_hand():
    # λ = 4: w = max(0, ln 3 − ln(4 − i)) = [0, 0, ln 1.5, ln 3] for i = worst … best
    w = np.array([0.0, 0.0, math.log(1.5), math.log(3.0)])
    np.testing.assert_allclose(rank_utilities(4), w / w.sum() - 0.25)


def test_expm_of_symmetric_matrix_matches_power_series():
    m = np.random.default_rng(0).standard_normal((5, 5)) * 0.3
    m = m + m.T
    series, term = np.eye(5), np.eye(5)
    for k in range(1, 30):
        term = term @ m / k
        series += term
    np.testing.assert_allclose(expm_symmetric(m), series, rtol=1e-12, atol=1e-12)


def test_one_update_follows_the_xnes_formulas():
    """Recompute the step with explicit loops, s = A⁻¹(x − μ), starting from a non-trivial A."""
    dim = 4
    cov = np.array([[2.0, 0.3, 0, 0], [0.3, 1.0, 0.2, 0], [0, 0.2, 1.5, 0], [0, 0, 0, 0.5]])
    optimizer = XNES(np.arange(dim, dtype=float), sigma=0.7, covariance=cov, learning_rate=0.2, seed=3)
    mu, a = optimizer.mean, optimizer.transform
    np.testing.assert_allclose(a @ a.T, 0.49 * cov)
    x = optimizer.ask()
    fitness = (x**2).sum(axis=1)
    optimizer.tell(fitness)

    lam = len(x)
    worst_to_best = sorted(range(lam), key=lambda k: -fitness[k])
    w = [max(0.0, math.log(lam / 2 + 1) - math.log(lam - i)) for i in range(lam)]
    u = np.zeros(lam)
    for rank, k in enumerate(worst_to_best):
        u[k] = w[rank] / sum(w) - 1 / lam
    grad_mu, grad_m = np.zeros(dim), np.zeros((dim, dim))
    for k in range(lam):
        s = np.linalg.solve(a, x[k] - mu)
        grad_mu += u[k] * s
        grad_m += u[k] * (np.outer(s, s) - np.eye(dim))
    g_sigma = np.trace(grad_m) / dim
    g_b = grad_m - g_sigma * np.eye(dim)
    exponent = 0.5 * (0.2 * g_sigma * np.eye(dim) + 0.2 * g_b)
    vals, vecs = np.linalg.eig(exponent)  # general (non-symmetric) route, independent of eigh
    np.testing.assert_allclose(optimizer.mean, mu + a @ grad_mu, rtol=1e-10)
    np.testing.assert_allclose(optimizer.transform, a @ (vecs @ np.diag(np.exp(vals)) @ np.linalg.inv(vecs)).real)


def test_converges_on_shifted_sphere():
    target = np.linspace(-2, 2, 10)
    result = minimize(lambda x: float(((x - target) ** 2).sum()), np.zeros(10), max_evaluations=4000, seed=0)
    assert result.best_fitness < 1e-3
    np.testing.assert_allclose(result.best_x, target, atol=0.05)


def test_converges_on_rotated_ellipsoid():
    dim = 10
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, dim)))
    scales = 10.0 ** np.linspace(0, 2, dim)  # condition number 1e4
    target = np.linspace(1, -1, dim)

    def ellipsoid(x: np.ndarray) -> float:
        return float(((scales * (rotation @ (x - target))) ** 2).sum())

    result = minimize(ellipsoid, np.zeros(dim), max_evaluations=6000, seed=1)
    assert result.best_fitness < 1e-3
    np.testing.assert_allclose(result.best_x, target, atol=0.05)


def test_bounds_are_honoured_and_the_boundary_optimum_is_found():
    optimizer = XNES(np.full(6, 1.9), bounds=(0.0, 2.0), seed=0)
    for _ in range(20):
        x = optimizer.ask()
        assert x.min() >= 0.0 and x.max() <= 2.0
        optimizer.tell((x**2).sum(axis=1))
    # the unconstrained optimum 3 lies outside [0, 2]: the best feasible point is the corner 2
    result = minimize(lambda x: float(((x - 3) ** 2).sum()), np.ones(6), bounds=(0.0, 2.0), max_evaluations=300)
    assert result.best_x.min() >= 0.0 and result.best_x.max() <= 2.0
    np.testing.assert_allclose(result.best_x, 2.0, atol=1e-3)


def test_deterministic_for_a_seed():
    def run(seed: int) -> np.ndarray:
        return minimize(lambda x: float(np.abs(x).sum()), np.ones(20), max_evaluations=100, seed=seed).trace

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_evaluate_mean_puts_the_initial_mean_first():
    mean = np.linspace(1.2, 0.8, 12)
    seen = []
    result = minimize(lambda x: seen.append(x) or float(x.sum()), mean, max_evaluations=10)
    np.testing.assert_array_equal(seen[0], mean)
    assert result.trace[0] == pytest.approx(mean.sum())
    assert result.best_fitness <= mean.sum()
    seen.clear()
    minimize(lambda x: seen.append(x) or float(x.sum()), mean, max_evaluations=10, evaluate_mean=False)
    assert not np.array_equal(seen[0], mean)


@pytest.mark.parametrize("evaluate_mean", [False, True])
def test_partial_last_generation_is_evaluated_without_update(evaluate_mean):
    """The reference budget for ViT-B: 50 evaluations with λ = 19 = 2 full generations (+ μ₀) + the rest."""
    mean = np.ones(156)
    calls = []

    def fitness(x: np.ndarray) -> float:
        return float(np.abs(x - 0.5).sum())

    result = minimize(
        fitness,
        mean,
        max_evaluations=50,
        evaluate_mean=evaluate_mean,
        on_evaluation=lambda *a: calls.append(a),
    )
    assert result.evaluations == len(result.trace) == 50
    assert result.updates == 2
    assert [c[0] for c in calls] == list(range(50))
    assert [c[1] for c in calls] == list(result.trace)
    assert [c[2] for c in calls] == list(np.minimum.accumulate(result.trace))
    assert result.best_fitness == result.trace.min()
    assert fitness(result.best_x) == result.best_fitness

    manual = XNES(mean)  # the partial third generation must not move the mean
    for _ in range(2):
        manual.tell(np.array([fitness(x) for x in manual.ask()]))
    np.testing.assert_array_equal(result.mean, manual.mean)


def test_nan_fitness_ranks_worst():
    result = minimize(
        lambda x: float("nan") if x[0] > 1 else float((x**2).sum()), np.ones(3), max_evaluations=40, seed=0
    )
    assert np.isnan(result.trace).any()
    assert np.isfinite(result.best_fitness)
    assert result.best_fitness == np.nanmin(result.trace)


def test_tell_requires_a_matching_ask():
    optimizer = XNES(np.zeros(3))
    with pytest.raises(RuntimeError):
        optimizer.tell(np.zeros(optimizer.population_size))
    optimizer.ask()
    with pytest.raises(ValueError):
        optimizer.tell(np.zeros(optimizer.population_size + 1))
