"""Several budgets in one call: a grid of budgets, their output names, and slicing them from one opened bundle.

A CI job that publishes a model family slices the same bundle at several budgets; opening, validating and hashing
the bundle once (instead of once per budget) is what makes that one step cheap. Each folder written here is
byte-identical to the one ``snapvit slice`` writes for that budget alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapvit_cli.elastic.records import MAX_LATENCY_MS, MAX_SPEEDUP
from snapvit_cli.errors import BudgetError
from snapvit_cli.fileio import WriteError

if TYPE_CHECKING:  # the grid and its names need no torch: the CLI checks them before importing it
    from snapvit_cli.elastic.budget import SlicePlan


@dataclass(frozen=True)
class BudgetSpec:
    """One budget as the user gave it: a FLOPs or parameter fraction to keep, MLP/head fractions to remove, or a
    speed-up over dense / a latency in milliseconds per batch (budgets in measured time, :mod:`snapvit_cli.latency`)."""

    flops: float | None = None
    params: float | None = None
    mlp: float | None = None
    heads: float | None = None
    speedup: float | None = None
    latency: float | None = None

    @property
    def timed(self) -> bool:
        """A budget in measured time: it needs a latency profile."""
        return self.speedup is not None or self.latency is not None

    def kwargs(self) -> dict[str, float]:
        """Keyword arguments for :meth:`ElasticBundle.plan`."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @property
    def tag(self) -> str:
        """A file-name part naming the budget, e.g. ``flops0.5`` or ``mlp0.3-heads0.15``."""
        return "-".join(f"{k}{v:g}" for k, v in self.kwargs().items())


def budget_grid(
    *,
    flops: Sequence[float] | None = None,
    params: Sequence[float] | None = None,
    mlp: Sequence[float] | None = None,
    heads: Sequence[float] | None = None,
    speedup: Sequence[float] | None = None,
    latency: Sequence[float] | None = None,
) -> list[BudgetSpec]:
    """The budgets of one call: a list of FLOPs fractions, of parameter fractions, or ``mlp``/``heads`` pairs.

    ``mlp`` and ``heads`` pair up element by element (both lists must then have the same length); either may be
    left out. An empty result means no budget was given; repeated budgets are refused (they would name the same
    output twice).
    """
    kinds = [
        name
        for name, values in (("flops", flops), ("params", params), ("speedup", speedup), ("latency", latency))
        if values
    ]
    if mlp or heads:
        kinds.append("ratios")
    if len(kinds) > 1:
        raise BudgetError(
            "give exactly one budget: --flops, --params, --mlp/--heads, --speedup or --latency "
            "(each may list several values)"
        )
    if not kinds:
        return []
    if kinds[0] == "flops":
        specs = [BudgetSpec(flops=v) for v in flops or ()]
    elif kinds[0] == "params":
        specs = [BudgetSpec(params=v) for v in params or ()]
    elif kinds[0] == "speedup":
        specs = [BudgetSpec(speedup=v) for v in speedup or ()]
    elif kinds[0] == "latency":
        specs = [BudgetSpec(latency=v) for v in latency or ()]
    else:
        if mlp and heads and len(mlp) != len(heads):
            raise BudgetError(f"--mlp and --heads pair up: {len(mlp)} values against {len(heads)}")
        count = len(mlp or heads or ())
        specs = [BudgetSpec(mlp=mlp[i] if mlp else None, heads=heads[i] if heads else None) for i in range(count)]
    for spec in specs if kinds[0] in ("speedup", "latency") else ():  # before a profile is measured for them
        check_timed_target(spec.speedup, spec.latency)
    tags = [spec.tag for spec in specs]
    repeated = sorted({t for t in tags if tags.count(t) > 1})
    if repeated:
        raise BudgetError(f"budget {repeated[0]} is given twice")
    return specs


def check_timed_target(speedup: float | None, latency: float | None) -> None:
    """Raise :class:`BudgetError` unless exactly one of ``speedup`` (≥ 1) and ``latency`` (ms, > 0) is given."""
    if (speedup is None) == (latency is None):
        raise BudgetError("give exactly one budget in measured time: speedup or latency")
    if speedup is not None and not 1.0 <= speedup <= MAX_SPEEDUP:
        raise BudgetError(
            f"speedup must lie in [1, {MAX_SPEEDUP:g}] (times faster than dense), got {speedup}", param="speedup"
        )
    if latency is not None and not 0.0 < latency <= MAX_LATENCY_MS:
        raise BudgetError(f"latency must be a positive number of milliseconds, got {latency}", param="latency")


def output_paths(specs: Sequence[BudgetSpec], output: Path | None, stem: str, suffix: str = "") -> list[Path]:
    """Where each budget goes: ``output`` itself for one budget; ``output/<tag><suffix>`` for several; and
    ``<stem>-<tag><suffix>`` in the working folder when no ``output`` is given."""
    if output is not None and len(specs) == 1:
        return [output]
    if output is not None:
        return [output / f"{spec.tag}{suffix}" for spec in specs]
    return [Path(f"{stem}-{spec.tag}{suffix}") for spec in specs]


def plan_grid(bundle: Any, specs: Sequence[BudgetSpec], **options: Any) -> list[SlicePlan]:
    """Every budget's :class:`SlicePlan`, all resolved before anything is written (one bad budget stops all)."""
    return [bundle.plan(**spec.kwargs(), **options) for spec in specs]


def save_slices(
    bundle: Any, plans: Sequence[SlicePlan], outputs: Sequence[str | os.PathLike], *, force: bool = False
) -> list[Path]:
    """Write one sliced-model folder per plan from an opened :class:`ElasticBundle`, reading its file once.

    The dense weights are read once and kept; the bundle is then verified once (weights against
    ``weights_sha256``, the file's sha256, the file unchanged since it was opened, so that what was kept is what
    was verified), and every folder is cut from the kept weights: what :meth:`ElasticBundle.save_slice` writes.
    """
    from snapvit_cli.elastic.sliced import SLICED_FILES, save_sliced, sliced_config
    from snapvit_cli.elastic.tensor_checks import check_finite
    from snapvit_cli.fileio import check_output

    if len(plans) != len(outputs):
        raise ValueError("one output per plan")
    for out in outputs:
        check_output(out, force, directory=True, inputs=(bundle.path,), owned=SLICED_FILES)
    bundle.weights()
    digest = bundle.verified_sha256()

    def write(i: int) -> Path:
        state = bundle.state_dict(plans[i].widths)
        check_finite(state, f"{bundle.path}: the sliced weights")
        config = sliced_config(bundle.metadata, plans[i], bundle_sha256=digest)
        return save_sliced(outputs[i], state, config, force=force, inputs=(bundle.path,))

    return write_each(outputs, write)


def write_each(outputs: Sequence[str | os.PathLike], write: Callable[[int], Path]) -> list[Path]:
    """``write(i)`` for every output in order. When the system refuses one (disk full), the one-line error says
    per output what is on disk: those before it were written, it and those after it were not."""
    written: list[Path] = []
    existed = [os.path.lexists(out) for out in outputs]
    for i in range(len(outputs)):
        try:
            written.append(write(i))
        except WriteError as exc:
            if len(outputs) == 1:
                raise
            done = [(Path(outputs[j]), existed[j]) for j in range(i)]
            raise exc.among(done, [Path(out) for out in outputs[i + 1 :]]) from None
    return written
