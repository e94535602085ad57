"""The evaluation report (``snapvit eval --json``): what ``eval`` prints, ``--plot`` draws and ``push --eval-results``
puts into a model card.

Frozen dataclasses with ``to_json`` / ``from_json``; ``from_json`` validates a report read back from a file (it may
come from anyone) with the same strict, bounded rules as the other records (:mod:`snapvit_cli.schema`). Imports
neither torch nor timm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapvit_cli.elastic.records import Budget
from snapvit_cli.errors import BundleError, DataError
from snapvit_cli.fileio import open_regular
from snapvit_cli.models.source import CROP_MODES, INTERPOLATIONS, MAX_IMG_SIZE, MIN_CROP_PCT
from snapvit_cli.schema import MAX_JSON_CHARS, Fields, optional_sha256, parse_json

REPORT_FORMAT = "snapvit-eval"
REPORT_VERSION = 1
MAX_ROWS = 1000
TARGET_KINDS = ("bundle", "sliced", "model")
TRANSFORM_NAMES = ("resize", "timm")


@dataclass(frozen=True)
class EvaluatedSource:
    """What a report measured, by content: the file's sha256 (a bundle, or a sliced model's ``model.safetensors``),
    the bundle a sliced model was cut from, or a dense model's state-dict hash. ``push --eval-results`` accepts a
    report only for the model it names (:mod:`snapvit_cli.hub.eval_results`)."""

    kind: str
    sha256: str | None = None
    bundle_sha256: str | None = None
    weights_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"kind": self.kind}
        for key in ("sha256", "bundle_sha256", "weights_sha256"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "source") -> EvaluatedSource:
        f = Fields(data, where)
        kind = f.str("kind", choices=TARGET_KINDS)
        hashes = {key: optional_sha256(f, key) for key in ("sha256", "bundle_sha256", "weights_sha256")}
        f.done()
        return cls(kind, **hashes)


def check_transform(data: Any, where: str = "transform") -> dict[str, Any]:
    """The evaluation transform a report states (``data.transforms.describe_transform``), typed and bounded."""
    f = Fields(data, where)
    out: dict[str, Any] = {
        "name": f.str("name", choices=TRANSFORM_NAMES),
        "description": f.str("description"),
        "input_size": f.ints("input_size", 1, MAX_IMG_SIZE, length=3),
        "interpolation": f.str("interpolation", choices=INTERPOLATIONS),
        "mean": f.floats("mean", 0.0, 1e3, length=3),
        "std": f.floats("std", 1e-6, 1e3, length=3),
    }
    if f.has("crop_pct"):
        out["crop_pct"] = f.float("crop_pct", MIN_CROP_PCT, 1.0)
    if f.has("crop_mode"):
        out["crop_mode"] = f.str("crop_mode", choices=CROP_MODES)
    f.done()
    return out


@dataclass(frozen=True)
class Throughput:
    """Measured speed: median images/s at ``batch_size`` over ``repeats`` timed passes after ``warmup``."""

    images_per_s: float
    batch_size: int
    device: str
    dtype: str
    threads: int
    warmup: int
    repeats: int
    batch_ms_quartiles: tuple[float, float, float] | None = None  # spread over repeats (absent in older reports)
    single_ms_quartiles: tuple[float, float, float] | None = None  # the same at batch 1

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        for key in ("batch_ms_quartiles", "single_ms_quartiles"):
            if data[key] is None:
                del data[key]
            else:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> Throughput:
        f = Fields(data, where)
        record = cls(
            images_per_s=f.float("images_per_s", 0.0, 1e12),
            batch_size=f.int("batch_size", 1, 1 << 20),
            device=f.str("device"),
            dtype=f.str("dtype"),
            threads=f.int("threads", 1, 1 << 16),
            warmup=f.int("warmup", 0, 1 << 20),
            repeats=f.int("repeats", 1, 1 << 20),
            batch_ms_quartiles=_quartiles(f, "batch_ms_quartiles"),
            single_ms_quartiles=_quartiles(f, "single_ms_quartiles"),
        )
        f.done()
        return record


def _quartiles(f: Fields, key: str) -> tuple[float, float, float] | None:
    values = f.floats(key, 0.0, 1e12, 3, None)
    if values is not None and not values[0] <= values[1] <= values[2]:
        raise BundleError(f"{f.where}.{key} must be in increasing order")
    return None if values is None else tuple(values)


@dataclass(frozen=True)
class SpeedUp:
    """A model's measured speed against the dense model of the same report, and against the ideal 1 / (FLOPs
    fraction): at the throughput batch size and at batch 1, each with the range the quartiles of both
    measurements allow (dense Q1 / model Q3 to dense Q3 / model Q1)."""

    ideal: float
    batch_size: int
    at_batch: float
    at_batch_range: tuple[float, float] | None
    at_one: float
    at_one_range: tuple[float, float] | None

    @property
    def slower(self) -> bool:
        """Measured slower than the dense model at either batch size."""
        return self.at_batch < 1.0 or self.at_one < 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ideal": self.ideal,
            "batch_size": self.batch_size,
            "measured": self.at_batch,
            "measured_range": None if self.at_batch_range is None else list(self.at_batch_range),
            "of_ideal": self.at_batch / self.ideal,
            "measured_batch_1": self.at_one,
            "measured_batch_1_range": None if self.at_one_range is None else list(self.at_one_range),
            "of_ideal_batch_1": self.at_one / self.ideal,
            "slower_than_dense": self.slower,
        }


def speed_ups(results: tuple[EvalRow, ...] | list[EvalRow]) -> list[SpeedUp | None]:
    """Each row's :class:`SpeedUp` against the report's first dense row with a speed measurement (None for rows
    without one, and for all rows when no dense row was timed)."""
    dense = next((r for r in results if r.dense and r.throughput is not None and r.latency_ms), None)
    if dense is None:
        return [None] * len(results)
    out: list[SpeedUp | None] = []
    for row in results:
        if row.throughput is None or not row.latency_ms or not row.flops_fraction:
            out.append(None)
            continue
        base, own = dense.throughput, row.throughput
        out.append(
            SpeedUp(
                ideal=dense.gmacs / row.gmacs if row.gmacs else 0.0,
                batch_size=own.batch_size,
                at_batch=own.images_per_s / base.images_per_s,
                at_batch_range=_ratio_range(base.batch_ms_quartiles, own.batch_ms_quartiles),
                at_one=dense.latency_ms / row.latency_ms,
                at_one_range=_ratio_range(base.single_ms_quartiles, own.single_ms_quartiles),
            )
        )
    return out


def _ratio_range(dense: tuple | None, own: tuple | None) -> tuple[float, float] | None:
    if dense is None or own is None or not own[0] or not own[2]:
        return None
    return dense[0] / own[2], dense[2] / own[0]


@dataclass(frozen=True)
class EvalRow:
    """One evaluated model: accuracy, cost at the evaluated resolution, and (optionally) speed."""

    name: str
    budget: Budget | None  # None: a dense model evaluated as is
    dense: bool
    knn: float
    probe: float | None
    probe_info: dict[str, Any] | None
    gmacs: float
    params: int
    dense_gmacs: float
    dense_params: int
    resolution: int
    widths: dict[str, list[int]]
    throughput: Throughput | None
    latency_ms: float | None
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def flops_fraction(self) -> float:
        return self.gmacs / self.dense_gmacs if self.dense_gmacs else 0.0

    @property
    def params_fraction(self) -> float:
        return self.params / self.dense_params if self.dense_params else 0.0

    def label(self) -> str:
        """The row's budget for people (:meth:`Budget.label`; ``dense`` for a dense model)."""
        return "dense" if self.budget is None else self.budget.label()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "budget": "dense" if self.budget is None else self.budget.to_json(),
            "dense": self.dense,
            "accuracy": {"knn": self.knn, "probe": self.probe},
            "probe": self.probe_info,
            "gmacs": self.gmacs,
            "params": self.params,
            "flops_fraction": self.flops_fraction,
            "params_fraction": self.params_fraction,
            "dense_gmacs": self.dense_gmacs,
            "dense_params": self.dense_params,
            "resolution": self.resolution,
            "widths": {k: list(v) for k, v in self.widths.items()},
            "throughput": None if self.throughput is None else self.throughput.to_json(),
            "latency_ms": self.latency_ms,
            "wall_s": dict(self.wall_s),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> EvalRow:
        f = Fields(data, where)
        budget = f.data_of("budget")
        accuracy = f.obj("accuracy")
        throughput = f.data_of("throughput", None)
        widths = f.obj("widths")
        row = cls(
            name=f.str("name"),
            budget=None if budget == "dense" else Budget.from_json(budget, f"{where}.budget"),
            dense=f.bool("dense"),
            knn=accuracy.float("knn", 0.0, 1.0),
            probe=accuracy.float("probe", 0.0, 1.0, None),
            probe_info=f.data_of("probe", None),
            gmacs=f.float("gmacs", 0.0, 1e9),
            params=f.int("params", 0, 10**13),
            dense_gmacs=f.float("dense_gmacs", 0.0, 1e9),
            dense_params=f.int("dense_params", 0, 10**13),
            resolution=f.int("resolution", 1, 1 << 16),
            widths={k: widths.ints(k, 0, 1 << 24) for k in ("mlp_hidden", "num_heads")},
            throughput=None if throughput is None else Throughput.from_json(throughput, f"{where}.throughput"),
            latency_ms=f.float("latency_ms", 0.0, 1e9, None),
            wall_s=_seconds(f.data_of("wall_s", {}), f"{where}.wall_s"),
        )
        accuracy.done()
        widths.done()
        f.float("flops_fraction", 0.0, 1e3)  # derived; recomputed rather than trusted
        f.float("params_fraction", 0.0, 1e3)
        f.done()
        return row


@dataclass(frozen=True)
class EvalReport:
    """Everything ``snapvit eval`` measured, with the settings, data and versions it was measured with."""

    snapvit_version: str
    target: str
    target_kind: str
    dataset: dict[str, Any]
    resolution: int
    preprocessing: dict[str, Any]
    settings: dict[str, Any]
    results: tuple[EvalRow, ...]
    wall_s: dict[str, float] = field(default_factory=dict)
    source: EvaluatedSource | None = None  # None in reports written before snapvit recorded it
    transform: dict[str, Any] | None = None  # None in older reports: those all used the whole-image resize

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "format_version": REPORT_VERSION,
            "snapvit_version": self.snapvit_version,
            "target": self.target,
            "target_kind": self.target_kind,
            "dataset": self.dataset,
            "resolution": self.resolution,
            "source": None if self.source is None else self.source.to_json(),
            "preprocessing": self.preprocessing,
            "transform": None if self.transform is None else dict(self.transform),
            "settings": self.settings,
            "results": [row.to_json() for row in self.results],
            "speed_ups": [None if s is None else s.to_json() for s in speed_ups(self.results)],
            "wall_s": dict(self.wall_s),
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "eval report") -> EvalReport:
        f = Fields(data, where)
        f.str("format", choices=(REPORT_FORMAT,))
        f.int("format_version", REPORT_VERSION, REPORT_VERSION)
        rows = f.data_of("results")
        if not isinstance(rows, list) or len(rows) > MAX_ROWS:
            raise BundleError(f"{where}.results must be a list of at most {MAX_ROWS} rows")
        report = cls(
            snapvit_version=f.str("snapvit_version"),
            target=f.str("target"),
            target_kind=f.str("target_kind", choices=TARGET_KINDS),
            dataset=f.data_of("dataset"),
            resolution=f.int("resolution", 1, 1 << 16),
            preprocessing=f.data_of("preprocessing"),
            settings=f.data_of("settings"),
            results=tuple(EvalRow.from_json(row, f"{where}.results[{i}]") for i, row in enumerate(rows)),
            wall_s=_seconds(f.data_of("wall_s", {}), f"{where}.wall_s"),
            source=_optional(f, "source", EvaluatedSource.from_json),
            transform=_optional(f, "transform", check_transform),
        )
        f.data_of("speed_ups", None)  # derived from the rows; recomputed rather than trusted
        f.done()
        return report


def read_report(path: str | os.PathLike) -> EvalReport:
    """An :class:`EvalReport` from a ``snapvit eval --json`` file, validated; errors are one line."""
    path = Path(path)
    try:
        with open_regular(path) as file:
            text = file.read(MAX_JSON_CHARS + 1).decode("utf-8")
        return EvalReport.from_json(parse_json(text, str(path)), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    except BundleError as exc:
        raise DataError(f"{path} is not `snapvit eval --json` output: {exc}") from None


def _optional(f: Fields, key: str, read: Any) -> Any:
    """A nested record that reports written before it existed lack (absent or null): ``None``."""
    value = f.data_of(key, None)
    return None if value is None else read(value, f"{f.where}.{key}")


def _seconds(data: Any, where: str) -> dict[str, float]:
    f = Fields(data, where)
    out = {key: f.float(key, 0.0, 1e9) for key in sorted(f.data)}
    f.done()
    return out
