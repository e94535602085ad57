"""``snapvit eval --plot``: accuracy against GMACs, one point per evaluated model, the dense model marked.

matplotlib is an optional extra (``pip install matplotlib``, the ``plot`` extra); it is imported only when a plot is
asked for, and drawn on an Agg canvas without pyplot so that no GUI backend or global state is touched.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from snapvit_cli.errors import SnapvitError
from snapvit_cli.evaluation.report import EvalReport
from snapvit_cli.fileio import atomic_path

METRICS = {"knn": "kNN top-1", "probe": "linear probe top-1"}
PLOT_FORMATS = ("png", "svg", "pdf")  # what the Agg canvas writes without extra packages


def plot_format(path: str | os.PathLike) -> str:
    """The image format the file name asks for; a name without one of :data:`PLOT_FORMATS` is refused, so that
    ``acc.jpg`` never holds a PNG."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise SnapvitError(
            f"plot {path}: name the file .png, .svg or .pdf (the formats written), not {suffix or 'no extension'}",
            param="plot",
        )
    return suffix


def require_matplotlib() -> None:
    """Fail with an installation hint, before any expensive work, when matplotlib is missing."""
    try:
        importlib.import_module("matplotlib.figure")
        importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError:
        raise SnapvitError("plotting needs matplotlib: pip install matplotlib (the 'plot' extra)") from None


def plot_accuracy_vs_gmacs(report: EvalReport, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write a PNG, SVG or PDF (by the file's extension) of top-1 accuracy (kNN, and the probe when evaluated)
    against GMACs from an eval report (an existing file is replaced only with ``force``)."""
    plot_format(path)
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    accuracy = {"knn": lambda r: r.knn, "probe": lambda r: r.probe}
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for metric, name in METRICS.items():
        value = accuracy[metric]
        rows = sorted((r for r in report.results if value(r) is not None), key=lambda r: r.gmacs)
        if not rows:
            continue
        line = axes.plot([r.gmacs for r in rows], [value(r) for r in rows], "o-", label=name)[0]
        for r in rows:
            axes.annotate(
                r.label(),
                (r.gmacs, value(r)),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
            )
        dense = [r for r in rows if r.dense]
        if dense:
            axes.plot(
                [r.gmacs for r in dense],
                [value(r) for r in dense],
                "*",
                markersize=16,
                color=line.get_color(),
                markeredgecolor="black",
                label="dense model" if metric == "knn" else None,
            )
    axes.set_xlabel(f"GMACs at {report.resolution}×{report.resolution}")
    axes.set_ylabel("top-1 accuracy")
    dataset = report.dataset["test"]
    axes.set_title(f"{report.target} on {dataset['name']} ({dataset['n']} test images)", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path, force=force) as tmp:
        figure.savefig(tmp, format=plot_format(path))
    return path
