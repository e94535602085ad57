"""Least-squares weight correction after slicing (SnapViT §8, the optional SparseGPT-style step).

Slicing removes whole input columns of the column-pruned layers (``mlp.fc2`` / SwiGLU ``mlp.w3`` for hidden
neurons, ``attn.proj`` for heads, one head = ``head_dim`` consecutive columns). The kept columns can then be
re-fitted so that the layer's output on calibration inputs changes as little as possible. With ``H = Σ x xᵀ``
over the layer's inputs, kept columns K and pruned columns P, the optimum is the closed form

    W_K' = W_K + W_P · H_PK · H_KK⁻¹            (on the damped H)

which is exactly what sequential OBS computes when all pruned columns are processed first (the reference's
right-to-left SparseGPT pass on the permuted model); it costs one Cholesky factorisation of H_KK per layer.

Which rows count, and how much, is a choice (:class:`TokenStatistics`): every token alike (``all``, the reference),
only the *readout* rows that the features are read from (``cls``: the class token, or the per-image mean of the
patch tokens for average-pooled models), or both halves weighted equally (``weighted``). With plain all-token
statistics the 196 patch tokens of a 224 px ViT outweigh the class token 196:1, and a fit that is best on
average can move the class token, the only row that kNN and linear probes read, further from the dense model.
The damping can be chosen per layer on held-back images (:func:`select_correction`), which also keeps a layer's
plain weights when no candidate beats them there.

This module only does the linear algebra on tensors. Driving it block by block (hooks on ``fc2``/``w3`` and
``attn.proj``, batched block forwards, dense vs sequential calibration inputs, writing weights back) is
:mod:`snapvit_cli.correction.apply`. SwiGLU needs nothing special here: ``w3``'s input is the gated hidden activation,
and its statistics are collected from whatever actually enters ``w3``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from snapvit_cli.errors import SnapvitError

#: How many times the damping is multiplied by 10 when H_KK is not positive definite, before giving up.
DAMPING_RETRIES = 3


class CorrectionError(SnapvitError):
    """A damping spec is malformed, or a layer's least-squares system could not be solved."""


class InputStatistics:
    """Running second moment ``H = (1/n) Σ x xᵀ`` of a Linear layer's inputs, in O(d_in²) memory.

    Every leading dimension of an input (batch, tokens, ...) is flattened into rows; ``n`` counts those rows.
    Normalising by ``n`` (the reference uses ``2/n``) does not change the correction: the damping is relative
    to diag(H), so scaling H scales λ with it and the solution is invariant. Accumulate in float64 (default)
    because ~10⁸ token rows summed in float32 lose digits that the solve of H_KK amplifies; float32 halves the
    memory.
    """

    def __init__(self, d_in: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None):
        self.gram = torch.zeros(d_in, d_in, dtype=dtype, device=device)
        self.count = 0
        self._mean: Tensor | None = None

    @classmethod
    def of_mean(cls, mean: Tensor, rows: int) -> InputStatistics:
        """Statistics whose :attr:`hessian` is ``mean`` over ``rows`` rows (e.g. read from a bundle)."""
        stats = cls(0, mean.dtype, mean.device)
        stats.gram, stats.count, stats._mean = mean * rows, rows, mean
        return stats

    @property
    def d_in(self) -> int:
        return self.gram.shape[0]

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` (shape ``[..., d_in]``) to the running sum."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"input has last dimension {x.shape[-1]}, expected {self.d_in}")
        rows = x.detach().reshape(-1, self.d_in).to(device=self.gram.device, dtype=self.gram.dtype)
        self.gram.addmm_(rows.T, rows)
        self.count += rows.shape[0]
        self._mean = None

    @property
    def hessian(self) -> Tensor:
        """``Σ x xᵀ / n`` in the accumulation dtype, computed once per update (callers must not modify it)."""
        if self.count == 0:
            raise RuntimeError("no inputs were accumulated")
        if self._mean is None:
            self._mean = self.gram / self.count
        return self._mean

    def register(self, linear: nn.Linear) -> RemovableHandle:
        """Feed this accumulator every input ``linear`` sees; call ``.remove()`` on the handle when done."""
        return _feed(linear, self.d_in, self.update)


@dataclass(frozen=True)
class Damping:
    """Relative Tikhonov damping ``λ = fraction · stat(diag H)``, added as ``H += λI``.

    ``stat`` is ``"mean"``, ``"max"`` or ``"percentile"`` (then ``percentile`` in [0, 100] is used, linear
    interpolation as ``numpy.percentile``). ``str(damping)`` is a spec for :func:`parse_damping`.
    """

    stat: str
    fraction: float
    percentile: float | None = None

    def __post_init__(self) -> None:
        if self.stat not in ("mean", "max", "percentile") or (self.stat == "percentile") != (
            self.percentile is not None
        ):
            raise ValueError(f"invalid damping {self!r}")

    def value(self, diag: Tensor) -> float:
        """λ for a Hessian whose diagonal is ``diag``."""
        if self.stat == "mean":
            ref = diag.mean()
        elif self.stat == "max":
            ref = diag.max()
        else:
            ref = torch.quantile(diag, self.percentile / 100.0)
        return self.fraction * float(ref)

    def __str__(self) -> str:
        name = f"p{self.percentile:g}" if self.stat == "percentile" else self.stat
        return f"{name}:{self.fraction:g}"


DEFAULT_DAMPING = Damping("mean", 0.01)

#: Candidate damping fractions (× mean diag H) that :func:`select_correction` tries on held-back images.
DAMPING_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)

_SPEC = re.compile(r"(mean|max|p(\d+(?:\.\d+)?)):(.+)")


def parse_damping(spec: str) -> Damping | None:
    """Parse ``mean:0.01``, ``max:0.1`` or ``pNN:F`` (F × the NN-th percentile of diag H); ``auto`` gives None
    (the damping is then chosen per layer on held-back images, :func:`select_correction`)."""
    usage = (
        "expected auto, mean:F, max:F or pNN:F with F > 0 and 0 <= NN <= 100, e.g. auto, mean:0.01, max:0.1, p95:0.01"
    )
    if spec.strip().lower() == "auto":
        return None
    match = _SPEC.fullmatch(spec.strip().lower())
    if match is None:
        raise CorrectionError(f"bad damping {spec!r}: {usage}")
    name, pct, frac = match.groups()
    try:
        fraction = float(frac)
    except ValueError:
        raise CorrectionError(f"bad damping {spec!r}: fraction {frac!r} is not a number; {usage}") from None
    if not 0.0 < fraction < float("inf"):
        raise CorrectionError(f"bad damping {spec!r}: fraction must be a finite number > 0; {usage}")
    if pct is None:
        return Damping(name, fraction)
    percentile = float(pct)
    if percentile > 100.0:
        raise CorrectionError(f"bad damping {spec!r}: percentile must be within 0..100; {usage}")
    return Damping("percentile", fraction, percentile)


def _split_columns(keep: Tensor | int, d_in: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Kept column indices (in the caller's order) and the remaining pruned ones."""
    if isinstance(keep, int):
        if not 0 <= keep <= d_in:
            raise ValueError(f"keep={keep} is outside 0..{d_in}")
        kept = torch.arange(keep, device=device)
    else:
        kept = torch.as_tensor(keep, device=device).long()
        if kept.dim() != 1:
            raise ValueError("keep must be an int or a 1-D tensor of column indices")
        if kept.numel() and (kept.min() < 0 or kept.max() >= d_in):
            raise ValueError(f"keep has column indices outside 0..{d_in - 1}")
        if kept.unique().numel() != kept.numel():
            raise ValueError("keep has repeated column indices")
    pruned_mask = torch.ones(d_in, dtype=torch.bool, device=device)
    pruned_mask[kept] = False
    return kept, pruned_mask.nonzero().flatten()


def _blocks(h: Tensor, kept: Tensor, pruned: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``H_KK``, ``H_KP`` and ``H_PP``: views when the kept columns are a prefix (a bundle's units are stored in
    descending importance, so every slice keeps one), gathered copies otherwise."""
    k = kept.numel()
    if k and int(kept[-1]) == k - 1 and bool((kept == torch.arange(k, device=kept.device)).all()):
        return h[:k, :k], h[:k, k:], h[k:, k:]
    rows = h.index_select(0, kept)
    return rows.index_select(1, kept), rows.index_select(1, pruned), h.index_select(0, pruned).index_select(1, pruned)


def _prepare_hessian(hessian: Tensor, d_in: int, device: torch.device) -> Tensor:
    """Float64 copy of H with dead inputs (H_jj = 0) given H_jj = 1.

    A dead input's row and column of H are zero, so the substituted value only keeps H_KK invertible when the
    damping statistic itself is 0 (e.g. a percentile over mostly dead inputs, or H = 0); it never moves the
    solution of the other columns, only λ through the statistic. Unlike the reference we leave a kept dead
    column's weights alone rather than zeroing them: the calibration data says nothing about them.
    """
    if hessian.shape != (d_in, d_in):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({d_in}, {d_in})")
    h = hessian.to(device=device, dtype=torch.float64, copy=True)
    if not torch.isfinite(h).all():
        raise CorrectionError("the layer's input statistics contain NaN or inf; check the calibration data")
    diag = h.diagonal()
    if (diag < 0).any():
        raise ValueError("hessian has negative diagonal entries; it is not a Gram matrix")
    diag[diag == 0] = 1.0
    return h


def _damped_cholesky(h_kk: Tensor, lam: float) -> Tensor:
    """Lower Cholesky factor of ``h_kk + λI``, multiplying λ by 10 up to DAMPING_RETRIES times if needed."""
    eye = torch.eye(h_kk.shape[0], dtype=h_kk.dtype, device=h_kk.device)
    for attempt in range(DAMPING_RETRIES + 1):
        factor, info = torch.linalg.cholesky_ex(h_kk + lam * 10**attempt * eye)
        if info.item() == 0:
            if attempt:
                warnings.warn(
                    f"H_KK was not positive definite; damping raised to {lam * 10**attempt:g}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return factor
    raise CorrectionError(
        "the layer's input statistics are not positive definite even with damping "
        f"{lam * 10**DAMPING_RETRIES:g}; use a larger damping fraction or more calibration data"
    )


def _kept_delta(h_kk: Tensor, cross: Tensor, lam: float) -> Tensor:
    """``W_K' − W_K = W_P H_PK (H_KK + λI)⁻¹`` ([out, k]) from ``cross = H_KP W_Pᵀ``: one triangular solve pair
    against all output rows at once."""
    return torch.cholesky_solve(cross, _damped_cholesky(h_kk, lam)).T


class _ErrorTerms:
    """``tr(Δ H Δᵀ)`` of one layer under one H for any change δ of the kept columns, ``Δ = [−δ | W_P]``:

        tr(δ H_KK δᵀ) − 2 tr(δ H_KP W_Pᵀ) + tr(W_P H_PP W_Pᵀ)

    The last two factors do not depend on δ and are computed once, so the plain slice (δ = 0) and every damping
    candidate cost one ``[out, k] × [k, k]`` product each instead of a ``[out, d] × [d, d]`` one; ``cross`` =
    ``H_KP W_Pᵀ`` is also the right-hand side of the solve when H is the fit's.
    """

    def __init__(self, weight: Tensor, hessian: Tensor, kept: Tensor, pruned: Tensor):
        h = hessian.to(device=weight.device, dtype=torch.float64)
        w_pruned = weight[:, pruned]
        self.h_kk, h_kp, h_pp = _blocks(h, kept, pruned)
        self.cross = h_kp @ w_pruned.T
        self.const = float(((w_pruned @ h_pp) * w_pruned).sum())

    def __call__(self, delta: Tensor | None = None) -> float:
        if delta is None:
            return self.const
        quad = float(((delta @ self.h_kk) * delta).sum())
        return quad - 2.0 * float((delta * self.cross.T).sum()) + self.const


def corrected_weight(weight: Tensor, hessian: Tensor, keep: Tensor | int, damping: Damping = DEFAULT_DAMPING) -> Tensor:
    """Re-fit the kept columns of ``weight`` ([out, in]) to the pruned ones: ``W_K + W_P · H_PK · H_KK⁻¹``.

    ``keep`` is an int (the first ``keep`` columns: bundles store units in descending importance, so the
    kept set is a prefix; for ``attn.proj`` pass ``kept_heads * head_dim``) or a 1-D tensor of column indices,
    whose order is the order of the returned columns. ``hessian`` is the layer's ``Σ x xᵀ`` up to a positive
    scale, e.g. :attr:`InputStatistics.hessian`. Solved in float64, returned as a new ``[out, len(keep)]``
    tensor in ``weight``'s dtype. With nothing pruned the kept columns come back bit-identical (no damping).
    """
    d_in = weight.shape[1]
    kept, pruned = _split_columns(keep, d_in, weight.device)
    if pruned.numel() == 0:
        return weight[:, kept]
    h = _prepare_hessian(hessian, d_in, weight.device)
    w = weight.to(torch.float64)
    h_kk, h_kp, _ = _blocks(h, kept, pruned)
    delta = _kept_delta(h_kk, h_kp @ w[:, pruned].T, damping.value(h.diagonal()))
    return (w[:, kept] + delta).to(weight.dtype)


def reconstruction_error(weight_dense: Tensor, weight_kept: Tensor, hessian: Tensor, keep: Tensor | int) -> float:
    """``tr(Δ H Δᵀ)`` with ``Δ = W − W̃``, W̃ the sliced layer embedded back (kept columns, zeros elsewhere).

    With ``H = Σ x xᵀ`` this is ``Σ ‖W x − W_K' x_K‖²`` over the calibration rows; with
    :attr:`InputStatistics.hessian` (``/n``) it is the mean per row. Biases cancel (slicing keeps them). Uses
    H as given: no damping, no dead-input substitution.
    """
    return error_pair(weight_dense, weight_kept, hessian, keep)[1]


def error_pair(weight_dense: Tensor, weight_kept: Tensor, hessian: Tensor, keep: Tensor | int) -> tuple[float, float]:
    """:func:`reconstruction_error` of the plain kept columns and of ``weight_kept``, sharing the work."""
    d_in = weight_dense.shape[1]
    kept, pruned = _split_columns(keep, d_in, weight_dense.device)
    w = weight_dense.to(torch.float64)
    terms = _ErrorTerms(w, hessian, kept, pruned)
    return terms(), terms(weight_kept.to(device=w.device, dtype=torch.float64) - w[:, kept])


class TokenStatistics:
    """Input statistics of one layer, kept in two parts so that the rows can be weighted afterwards.

    ``readout`` holds the rows the model's features are read from: the class token (``"cls"``: row 0 of each
    sequence) or, for average-pooled models (``"mean"``), the mean of each sequence's patch tokens (rows from
    ``prefix`` on; the layer is linear, so the error of the mean row is the error of the pooled output). ``rest``
    holds every other row (``"cls"``) or every row (``"mean"``). Inputs must be ``[batch, tokens, d_in]``.
    :meth:`hessian` combines them per ``--correct-tokens``; a stored version needs exactly these two Grams and their
    row counts.
    """

    def __init__(
        self,
        d_in: int,
        readout: str = "cls",
        prefix: int = 1,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        if readout not in ("cls", "mean"):
            raise ValueError(f"readout must be 'cls' or 'mean', got {readout!r}")
        self.readout_kind, self.prefix = readout, prefix
        self.readout = InputStatistics(d_in, dtype, device)
        self.rest = InputStatistics(d_in, dtype, device)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add one batch of sequences ``[batch, tokens, d_in]``."""
        if x.dim() != 3:
            raise ValueError(f"expected inputs [batch, tokens, d_in], got shape {tuple(x.shape)}")
        if self.readout_kind == "cls":
            self.readout.update(x[:, 0])
            if x.shape[1] > 1:
                self.rest.update(x[:, 1:])
        else:
            self.readout.update(x[:, self.prefix :].mean(dim=1))
            self.rest.update(x)

    def weights(self, tokens: str) -> tuple[float, float]:
        """``(a, b)`` with ``hessian(tokens) = a · readout + b · rest`` (each the mean over its rows): ``all`` weighs
        every token alike, ``cls`` the readout rows only, ``weighted`` the two means half each. Errors are linear in
        H, so the same weights combine per-part errors into the error the fit minimised."""
        if tokens == "cls":
            return 1.0, 0.0
        if tokens == "weighted":
            return 0.5, 0.5
        if tokens == "all":
            if self.readout_kind == "mean":
                return 0.0, 1.0
            total = self.readout.count + self.rest.count
            return self.readout.count / total, self.rest.count / total
        raise ValueError(f"tokens must be one of weighted, cls, all, got {tokens!r}")

    def hessian(self, tokens: str) -> Tensor:
        """The layer's second moment with rows weighted per ``tokens`` (:meth:`weights`)."""
        a, b = self.weights(tokens)
        if b == 0.0:
            return self.readout.hessian
        if a == 0.0:
            return self.rest.hessian
        return torch.add(self.readout.hessian, self.rest.hessian, alpha=b / a).mul_(a)

    def register(self, linear: nn.Linear) -> RemovableHandle:
        """Feed these statistics every input ``linear`` sees; call ``.remove()`` on the handle when done."""
        return _feed(linear, self.readout.d_in, self.update)


def _feed(linear: nn.Linear, d_in: int, update: Callable[[Tensor], None]) -> RemovableHandle:
    """A forward pre-hook that hands every input of ``linear`` to ``update``, after checking its width."""
    if linear.in_features != d_in:
        raise ValueError(f"layer has {linear.in_features} input features, accumulator expects {d_in}")
    return linear.register_forward_pre_hook(lambda _module, args: update(args[0]))


@dataclass(frozen=True)
class Selection:
    """What :func:`select_correction` chose for one layer: the new kept columns (or the plain ones), the damping
    fraction used (None: the plain weights were kept) and the held-back errors of the plain and chosen weights."""

    weight: Tensor
    fraction: float | None
    heldout_before: float
    heldout_after: float


def select_correction(
    weight: Tensor,
    fit: Tensor,
    heldout: Tensor,
    keep: Tensor | int,
    damping: Damping | None = None,
    guard: bool = True,
) -> Selection:
    """Correct on the ``fit`` second moment, judged on the ``heldout`` one (images not used for the fit).

    With ``damping=None`` each fraction of :data:`DAMPING_GRID` (× mean diag of ``fit``) is tried and the one with
    the lowest held-back error wins; otherwise ``damping`` is used as given. With ``guard`` the plain kept columns
    are returned (``fraction=None``) unless the correction lowers the held-back error: large damping tends to
    the plain weights anyway, so this is the grid's last candidate. Everything here needs only Gram matrices,
    and the parts of both that every candidate shares are computed once.
    """
    d_in = weight.shape[1]
    kept, pruned = _split_columns(keep, d_in, weight.device)
    plain = weight[:, kept]
    w = weight.to(torch.float64)
    held = _ErrorTerms(w, heldout, kept, pruned)
    before = held()
    if pruned.numel() == 0:
        return Selection(plain.clone(), None if guard else 0.0, before, before)
    h = _prepare_hessian(fit, d_in, weight.device)
    h_kk, h_kp, _ = _blocks(h, kept, pruned)
    cross = h_kp @ w[:, pruned].T
    candidates = [Damping("mean", f) for f in DAMPING_GRID] if damping is None else [damping]
    best: tuple[float, float, Tensor] | None = None  # (error, fraction, delta)
    for candidate in candidates:
        delta = _kept_delta(h_kk, cross, candidate.value(h.diagonal()))
        after = held(delta)
        if best is None or after < best[0]:
            best = (after, candidate.fraction, delta)
    assert best is not None
    after, fraction, delta = best
    if guard and not after < before:
        return Selection(plain.clone(), None, before, before)
    return Selection((w[:, kept] + delta).to(weight.dtype), fraction, before, after)
