"""One slicing step: a bundle cut to one or several budgets and written as sliced-model folders, corrected or not.

The elastic format (:mod:`snapvit_cli.elastic`) cuts and writes; the correction (:mod:`snapvit_cli.correction`)
re-fits the kept columns. Neither knows the other: this module composes them, for ``snapvit slice`` and the library
alike, so the command has one write path and a library caller gets the same folders and records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snapvit_cli.correction.settings import CorrectionSettings
from snapvit_cli.correction.stored import require_statistics
from snapvit_cli.correction.walk import Progress
from snapvit_cli.elastic.budget import SlicePlan
from snapvit_cli.elastic.bundle import ElasticBundle
from snapvit_cli.elastic.grid import save_slices as save_uncorrected
from snapvit_cli.elastic.grid import write_each
from snapvit_cli.elastic.sliced import SLICED_FILES, save_sliced, sliced_config
from snapvit_cli.elastic.tensor_checks import check_finite
from snapvit_cli.fileio import check_output


@dataclass(frozen=True)
class SavedSlice:
    """A written sliced-model folder: where, for which plan, and with ``correction`` the record its ``config.json``
    holds plus ``seconds``, the correction's wall time (reported, never stored: the same run gives the same file)."""

    path: Path
    plan: SlicePlan
    correction: dict[str, Any] | None = None


def save_slices(
    bundle: ElasticBundle,
    plans: Sequence[SlicePlan],
    outputs: Sequence[str | os.PathLike],
    *,
    force: bool = False,
    correction: CorrectionSettings | None = None,
    progress: Progress | None = None,
) -> list[SavedSlice]:
    """Write one sliced-model folder per plan; with ``correction`` each is corrected first.

    Every output is checked before any work. Without correction one plan is read straight from the file (only the
    kept units' bytes) and several are cut from the dense weights read once (:func:`snapvit_cli.elastic.grid.
    save_slices`); with it each plan is corrected on the calibration images of ``correction`` or, when it names
    none, on the bundle's stored statistics.
    """
    if len(plans) != len(outputs):
        raise ValueError("one output per plan")
    if correction is not None and correction.data is None:
        require_statistics(bundle)  # before the outputs are checked or the bundle hashed
    data = None if correction is None else correction.data
    for out in outputs:
        check_output(out, force, directory=True, inputs=(bundle.path, data), owned=SLICED_FILES)
    if correction is None and len(plans) == 1:
        return [SavedSlice(ElasticBundle.save_slice(bundle, outputs[0], plans[0], force=force), plans[0])]
    if correction is None:
        paths = save_uncorrected(bundle, plans, outputs, force=force)
        return [SavedSlice(path, plan) for path, plan in zip(paths, plans, strict=True)]
    saved: list[SavedSlice] = []

    def write(i: int) -> Path:
        saved.append(_save_corrected(bundle, plans[i], outputs[i], correction, force, progress))
        return saved[-1].path

    write_each(outputs, write)  # a disk that fills says which folders were written
    return saved


def save_slice(
    bundle: ElasticBundle,
    out_dir: str | os.PathLike,
    plan: SlicePlan,
    *,
    force: bool = False,
    correction: CorrectionSettings | None = None,
    progress: Progress | None = None,
) -> SavedSlice:
    """:func:`save_slices` for one plan."""
    return save_slices(bundle, [plan], [out_dir], force=force, correction=correction, progress=progress)[0]


class Bundle(ElasticBundle):
    """The bundle the public API opens (:func:`snapvit_cli.load_bundle`): an :class:`ElasticBundle` whose
    :meth:`save_slice` also corrects, composed here so that the format itself never calls the correction."""

    def save_slice(
        self,
        out_dir: str | os.PathLike,
        plan: SlicePlan,
        *,
        force: bool = False,
        correction: CorrectionSettings | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Write the model for ``plan`` as a sliced-model folder, as ``snapvit slice`` does; with ``correction``
        the kept columns of each consumer layer are re-fitted first (:func:`save_slice`)."""
        if correction is None:
            return super().save_slice(out_dir, plan, force=force)
        return save_slice(self, out_dir, plan, force=force, correction=correction, progress=progress).path


def _save_corrected(
    bundle: ElasticBundle,
    plan: SlicePlan,
    out_dir: str | os.PathLike,
    correction: CorrectionSettings,
    force: bool,
    progress: Progress | None,
) -> SavedSlice:
    """Correct ``plan`` and write it; ``config.json``'s ``correction`` records the settings, the images and every
    layer's error (no timings), and the bundle's sha256 verified with its weights before the solve."""
    from snapvit_cli.correction.apply import correct_with_settings

    start = time.perf_counter()
    bundle_sha256 = bundle.verified_sha256()
    result = correct_with_settings(bundle, plan, correction, progress=progress)
    bundle.check_unchanged()
    check_finite(result.state, f"{bundle.path}: the corrected weights")
    record = result.to_json()
    config = replace(sliced_config(bundle.metadata, plan, bundle_sha256=bundle_sha256), correction=record)
    path = save_sliced(out_dir, result.state, config, force=force, inputs=(bundle.path,))
    return SavedSlice(path, plan, {**record, "seconds": round(time.perf_counter() - start, 3)})
