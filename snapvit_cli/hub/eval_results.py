"""Eval reports that belong to the model being pushed: ``push --eval-results`` may only describe that model.

A report names the file it evaluated by sha256 (:class:`~snapvit_cli.evaluation.report.EvaluatedSource`); a row
names the widths and resolution it measured. A sliced model accepts the rows of a report on its own weights, or the
rows of a report on the bundle it was cut from whose widths are its own; a bundle accepts a report on itself.
Anything else is refused in one line, so a card can never show another model's accuracy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from snapvit_cli.elastic.records import BundleMetadata, SlicedConfig
from snapvit_cli.errors import DataError
from snapvit_cli.fileio import sha256_file

if TYPE_CHECKING:
    from snapvit_cli.evaluation.report import EvalReport


def matching_results(report: EvalReport, weights: Path, config: SlicedConfig | BundleMetadata) -> EvalReport:
    """``report`` reduced to the rows that describe the pushed model (``weights``: the bundle file, or the sliced
    model's ``model.safetensors``) and its dense reference (the bundle's dense model, which ``eval --reference``
    checks is the one the model was cut from); :class:`DataError` when it describes another model."""
    if report.source is None or report.source.sha256 is None:
        raise DataError(
            "--eval-results: the report does not name the file it evaluated (run `snapvit eval --json` again with "
            "this snapvit)"
        )
    evaluated, own = report.source.sha256, sha256_file(weights)
    if isinstance(config, BundleMetadata):
        if evaluated != own:
            raise DataError(f"--eval-results: the report evaluated {evaluated[:12]}…, not this bundle ({own[:12]}…)")
        rows = list(report.results)
        resolution = config.structure["img_size"][0]
    else:
        if evaluated not in (own, config.bundle_sha256):
            raise DataError(
                f"--eval-results: the report evaluated {evaluated[:12]}…, neither this model ({own[:12]}…) nor the "
                "bundle it was cut from"
            )
        rows = [r for r in report.results if r.widths == config.widths]
        if not rows:
            raise DataError("--eval-results: no result in the report has this model's widths")
        rows = [r for r in report.results if r.dense and r not in rows] + rows  # the dense reference first
        resolution = config.cost.resolution
    wrong = [r.resolution for r in rows if r.resolution != resolution]
    if wrong:
        raise DataError(
            f"--eval-results: the report measured at {wrong[0]} px, this model's cost is stated at {resolution} px "
            f"(run `snapvit eval --resolution {resolution}`)"
        )
    return replace(report, results=tuple(rows))
