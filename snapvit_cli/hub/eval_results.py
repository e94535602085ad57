"""Eval reports that belong to the model being pushed: ``push --eval-results`` may only describe that model.

A report names the file it evaluated by sha256 (``source``); a row names the widths and resolution it measured. A
sliced model accepts the rows of a report on its own weights, or the rows of a report on the bundle it was cut
from whose widths are its own; a bundle accepts a report on itself. Anything else is refused in one line, so a
card can never show another model's accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snapvit_cli.errors import DataError
from snapvit_cli.fileio import sha256_file


def matching_results(report: dict[str, Any], kind: str, weights: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``report`` reduced to the rows that describe the pushed model (``weights``: the bundle file, or the sliced
    model's ``model.safetensors``); :class:`DataError` when it describes another model."""
    source = report.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
        raise DataError(
            "--eval-results: the report does not name the file it evaluated (run `snapvit eval --json` again with "
            "this snapvit)"
        )
    evaluated = source["sha256"]
    if kind == "bundle":
        own = sha256_file(weights)
        if evaluated != own:
            raise DataError(f"--eval-results: the report evaluated {evaluated[:12]}…, not this bundle ({own[:12]}…)")
        rows = list(report.get("results") or [])
        resolution = (config.get("structure") or {}).get("img_size", [None])[0]
    else:
        own = sha256_file(weights)
        bundle = config.get("bundle_sha256")
        if evaluated not in (own, bundle):
            raise DataError(
                f"--eval-results: the report evaluated {evaluated[:12]}…, neither this model ({own[:12]}…) nor the "
                "bundle it was cut from"
            )
        widths = config.get("widths")
        rows = [r for r in report.get("results") or [] if r.get("widths") == widths]
        if not rows:
            raise DataError("--eval-results: no result in the report has this model's widths")
        resolution = (config.get("cost") or {}).get("resolution")
    wrong = [r.get("resolution") for r in rows if resolution is not None and r.get("resolution") != resolution]
    if wrong:
        raise DataError(
            f"--eval-results: the report measured at {wrong[0]} px, this model's cost is stated at {resolution} px "
            f"(run `snapvit eval --resolution {resolution}`)"
        )
    return {**report, "results": rows}
