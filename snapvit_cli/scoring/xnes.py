"""Exponential natural evolution strategies (xNES; Glasmachers et al., GECCO 2010), minimising (method §5.4).

Used to search the per-block / per-head multipliers that re-weight the gradient scores. The optimiser is
generic: it knows nothing about pruning, and the caller applies ``abs`` to candidates inside its fitness if it
wants non-negative multipliers (as SnapViT does).

Search distribution N(μ, A Aᵀ). One generation samples x_k = μ + A z_k, ranks the fitness values and applies
the natural-gradient update with rank-based utilities; the matrix exponential keeps A invertible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def default_population_size(dim: int) -> int:
    """λ = 4 + ⌊3 ln d⌋ (19 for ViT-B's d = 156)."""
    return 4 + int(np.floor(3 * np.log(dim)))


def default_learning_rate(dim: int) -> float:
    """η_σ = η_B = 0.6 (3 + ln d) / (d √d) (0.00248 for d = 156)."""
    return float(0.6 * (3 + np.log(dim)) / (dim * np.sqrt(dim)))


def rank_utilities(population_size: int) -> np.ndarray:
    """Utilities of samples ranked worst (i = 0) to best: w_i = max(0, ln(λ/2+1) − ln(λ−i)), u = w/Σw − 1/λ.

    Only the better half gets positive weight; u sums to zero, so an all-equal ranking changes nothing.
    """
    ranks = np.arange(population_size)
    w = np.maximum(0.0, np.log(population_size / 2 + 1) - np.log(population_size - ranks))
    return w / w.sum() - 1 / population_size


def expm_symmetric(matrix: np.ndarray) -> np.ndarray:
    """Matrix exponential of a symmetric matrix via its eigendecomposition (avoids a scipy dependency)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.exp(eigenvalues)) @ eigenvectors.T


def _to_numpy(value: ArrayLike) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.array(value, dtype=np.float64)


class XNES:
    """Ask/tell xNES (pypop7's variant, written for this project).

    Args:
        mean: initial mean μ₀, shape [d].
        sigma: initial step size; A₀ = sigma · I, or sigma · chol(covariance) when ``covariance`` is given.
        population_size: λ; default 4 + ⌊3 ln d⌋.
        learning_rate: η_σ = η_B for the scale/shape update; default 0.6 (3 + ln d) / (d √d). The mean moves
            with learning rate 1.
        bounds: optional (low, high) box; samples returned by :meth:`ask` are clipped into it.
        seed: seeds the sampling generator the way pypop7 does (a ``default_rng(seed)`` draws an
            initialisation seed, then the sampling seed), so z draws match the reference for the same seed.
        covariance: optional symmetric positive-definite [d, d] initial covariance shape.

    Bounds and the update: the update uses the standard normal z actually drawn, not s = A⁻¹(clip(x) − μ).
    That makes every generation an unbiased natural-gradient step for the well-defined objective
    f(clip(x)) on all of R^d. Recomputing s from clipped samples would feed non-Gaussian, shrunken s into an
    update that assumes s ~ N(0, I), biasing the step size down near the boundary whether or not the search
    has converged. Consequence: the mean itself may leave the box; every sample (so the best one) lies inside.
    """

    def __init__(
        self,
        mean: ArrayLike,
        *,
        sigma: float = 1.0,
        population_size: int | None = None,
        learning_rate: float | None = None,
        bounds: tuple[float, float] | None = None,
        seed: int = 42,
        covariance: ArrayLike | None = None,
    ) -> None:
        self._mean = _to_numpy(mean)
        if self._mean.ndim != 1 or self._mean.size == 0:
            raise ValueError(f"mean must be a non-empty vector, got shape {self._mean.shape}")
        dim = self._mean.size
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds must satisfy low < high, got {bounds}")
        self.population_size = population_size or default_population_size(dim)
        if self.population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {self.population_size}")
        self.learning_rate = default_learning_rate(dim) if learning_rate is None else float(learning_rate)
        self.bounds = bounds
        self._transform = sigma * self._initial_shape(dim, covariance)
        seeder = np.random.default_rng(seed)
        seeder.integers(np.iinfo(np.int64).max)  # pypop7's initialisation seed: drawn only to stay in step
        self._rng = np.random.default_rng(seeder.integers(np.iinfo(np.int64).max))
        self._z: np.ndarray | None = None
        self.generations = 0

    @staticmethod
    def _initial_shape(dim: int, covariance: ArrayLike | None) -> np.ndarray:
        if covariance is None:
            return np.eye(dim)
        cov = _to_numpy(covariance)
        if cov.shape != (dim, dim) or not np.allclose(cov, cov.T):
            raise ValueError(f"covariance must be a symmetric [{dim}, {dim}] matrix, got shape {cov.shape}")
        try:
            return np.linalg.cholesky(cov)
        except np.linalg.LinAlgError as error:
            raise ValueError("covariance must be positive definite") from error

    @property
    def dim(self) -> int:
        return self._mean.size

    @property
    def mean(self) -> np.ndarray:
        """Current distribution mean μ (a copy)."""
        return self._mean.copy()

    @property
    def transform(self) -> np.ndarray:
        """Current factor A of the covariance A Aᵀ (a copy)."""
        return self._transform.copy()

    def clip(self, x: np.ndarray) -> np.ndarray:
        """``x`` clipped into the bounds (unchanged without bounds)."""
        return x if self.bounds is None else np.clip(x, *self.bounds)

    def ask(self) -> np.ndarray:
        """Sample a generation, [λ, d]; the next :meth:`tell` must rank exactly these samples."""
        self._z = self._rng.standard_normal((self.population_size, self.dim))
        return self.clip(self._mean + self._z @ self._transform.T)

    def tell(self, fitness: ArrayLike) -> None:
        """Update μ and A from the fitness (lower is better) of the samples of the last :meth:`ask`.

        NaN fitness counts as the worst value.
        """
        if self._z is None:
            raise RuntimeError("tell() called without a preceding ask()")
        y = _to_numpy(fitness)
        if y.shape != (self.population_size,):
            raise ValueError(f"expected {self.population_size} fitness values, got shape {y.shape}")
        y = np.where(np.isnan(y), np.inf, y)
        u = np.empty(self.population_size)
        u[np.argsort(-y, kind="stable")] = rank_utilities(self.population_size)  # worst first
        s, eye = self._z, np.eye(self.dim)
        grad_mean = u @ s
        grad_m = (s.T * u) @ s - u.sum() * eye  # Σ u_k (s_k s_kᵀ − I)
        # With η_σ = η_B, ½(η_σ g_σ I + η_B G_B) where g_σ = tr(G_M)/d and G_B = G_M − g_σ I is ½ η G_M.
        self._mean = self._mean + self._transform @ grad_mean
        self._transform = self._transform @ expm_symmetric(0.5 * self.learning_rate * grad_m)
        self._z = None
        self.generations += 1


def _better(value: float, incumbent: float) -> bool:
    """Strictly lower, with NaN worse than any number."""
    return value < incumbent or (np.isnan(incumbent) and not np.isnan(value))


@dataclass(frozen=True)
class XNESResult:
    """Outcome of :func:`minimize`."""

    best_x: np.ndarray  # best evaluated candidate (inside the bounds, if any)
    best_fitness: float
    evaluations: int
    updates: int  # completed generations (distribution updates)
    trace: np.ndarray  # fitness of every evaluation, in evaluation order
    mean: np.ndarray  # final distribution mean
    population_size: int  # λ used


def minimize(
    fitness: Callable[[np.ndarray], float],
    mean: ArrayLike,
    *,
    max_evaluations: int = 50,
    evaluate_mean: bool = True,
    on_evaluation: Callable[[int, float, float], None] | None = None,
    **xnes_kwargs: object,
) -> XNESResult:
    """Minimise ``fitness`` with xNES in ``max_evaluations`` calls; return the best evaluated candidate.

    ``fitness`` gets each candidate exactly as sampled (a copy; no ``abs`` is applied here). With
    ``evaluate_mean`` the (clipped) initial mean is the first candidate, so the result is never worse than the
    starting point. A last generation that does not fit in the budget is evaluated as far as the budget allows
    and is not used for an update (as the reference's 50 evaluations = 2 generations of 19 + 12 for ViT-B).
    ``on_evaluation(index, value, best_so_far)`` is called after every evaluation (index from 0), e.g. for a
    progress bar. Remaining keyword arguments go to :class:`XNES`.
    """
    if max_evaluations < 1:
        raise ValueError(f"max_evaluations must be at least 1, got {max_evaluations}")
    optimizer = XNES(mean, **xnes_kwargs)
    trace: list[float] = []
    best: tuple[np.ndarray, float] | None = None

    def evaluate(x: np.ndarray) -> float:
        nonlocal best
        value = float(fitness(x.copy()))
        trace.append(value)
        if best is None or _better(value, best[1]):
            best = (x.copy(), value)
        if on_evaluation is not None:
            on_evaluation(len(trace) - 1, value, best[1])
        return value

    if evaluate_mean:
        evaluate(optimizer.clip(optimizer.mean))
    while len(trace) < max_evaluations:
        samples = optimizer.ask()
        values = [evaluate(x) for x in samples[: max_evaluations - len(trace)]]
        if len(values) < len(samples):
            break
        optimizer.tell(np.array(values))
    return XNESResult(
        best_x=best[0],
        best_fitness=best[1],
        evaluations=len(trace),
        updates=optimizer.generations,
        trace=np.array(trace),
        mean=optimizer.mean,
        population_size=optimizer.population_size,
    )
