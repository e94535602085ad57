"""``snapvit info``: what an artifact holds, without Python: model and origin, widths, budget and cost, scoring
settings, whether correction statistics are stored, and hashes.

Bundles and sliced folders are read through the same validating readers as everywhere else; ONNX files through
``onnx`` without their external data, and ``.pt2`` archives as zip files (nothing in them is unpickled).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from snapvit_cli.errors import SnapvitError
from snapvit_cli.fileio import sha256_file

#: FLOPs fractions whose cost ``info`` shows for a bundle.
EXAMPLE_BUDGETS = (0.9, 0.75, 0.5)
#: Scoring settings worth a line; the bundle keeps every setting.
SCORING_KEYS = ("samples", "seed", "loss", "score", "crops", "preset", "ga_evals", "ga_flops", "ga_pairs", "device")


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of a bundle, a sliced folder (or its files), an ``.onnx`` or a ``.pt2`` file."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return _onnx(Path(path))
    if suffix == ".pt2":
        return _pt2(Path(path))
    from snapvit_cli.elastic.artifacts import resolve_artifact

    artifact = resolve_artifact(path)
    return _bundle(artifact.path) if artifact.kind == "bundle" else _sliced(artifact.path)


def _origin(source: dict[str, Any]) -> str:
    provenance = _provenance(source)
    if provenance.origin == "checkpoint":
        return f"checkpoint {provenance.checkpoint} (sha256 {provenance.checkpoint_sha256})"
    if provenance.origin == "random":
        return "random weights (not pretrained)"
    if provenance.origin == "hub":
        at = f" at revision {provenance.revision}" if provenance.revision else ""
        return f"pretrained weights from {provenance.hf_hub_id}{at}"
    return "unknown (the record does not say)"


def _provenance(source: dict[str, Any]):
    """The record's :class:`~snapvit_cli.models.source.Provenance` (explicit ``origin``, or the older shape)."""
    from snapvit_cli.models.source import Provenance
    from snapvit_cli.schema import Fields

    return Provenance.read(Fields(dict(source), "source"))


def _model(source: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": source.get("model_id"),
        "timm_name": source.get("timm_name"),
        "origin": _origin(source),
        "license": _provenance(source).license,
        "weights_sha256": source.get("weights_sha256"),
    }


def _scoring(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    picked = {key: settings[key] for key in SCORING_KEYS if settings.get(key) is not None}
    if "ga_flops" in picked:  # the pairs are what the fractions resolved to: the fractions say it
        picked.pop("ga_pairs", None)
    if data:
        picked["data"] = data.get("name") or data.get("source")
    search = settings.get("xnes")
    if isinstance(search, dict):
        picked["search"] = {k: search.get(k) for k in ("updates", "initial_fitness", "best_fitness")}
    return {"method": method, **picked}


def _bundle(path: Path) -> dict[str, Any]:
    from snapvit_cli.elastic.bundle import ElasticBundle

    bundle = ElasticBundle.open(path)
    meta = bundle.metadata
    structure = meta.structure
    budgets = []
    for fraction in EXAMPLE_BUDGETS:
        plan = bundle.plan(flops=fraction)
        budgets.append(
            {
                "budget": plan.budget.label(),
                "gmacs": round(plan.gmacs, 4),
                "params": plan.params,
                "flops_fraction": round(plan.flops_fraction, 4),
                "params_fraction": round(plan.params_fraction, 4),
            }
        )
    stats = meta.correction_stats
    dense = bundle.plan(flops=1.0)
    return {
        "path": str(path),
        "kind": "bundle",
        "model": _model(meta.source.to_json()),
        "widths": {
            "blocks": structure.get("num_blocks"),
            "embed_dim": structure.get("embed_dim"),
            "mlp_hidden": structure.get("mlp_hidden"),
            "num_heads": structure.get("num_heads"),
        },
        "min_keep": dict(meta.min_keep),
        "dense": {"resolution": dense.resolution, "gmacs": round(dense.dense_gmacs, 4), "params": dense.dense_params},
        "budgets": budgets,
        "scoring": _scoring(meta.scoring.method, meta.scoring.settings),
        "correction_statistics": None if stats is None else {"images": stats.images, "heldout": stats.heldout_images},
        "snapvit_version": meta.snapvit_version,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _sliced(folder: Path) -> dict[str, Any]:
    from snapvit_cli.elastic.artifacts import CONFIG_NAME, WEIGHTS_NAME
    from snapvit_cli.elastic.records import SlicedConfig

    config_path = folder / CONFIG_NAME
    try:
        config = SlicedConfig.from_json(json.loads(config_path.read_text()), str(config_path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapvitError(f"{config_path} is not readable JSON: {exc}") from None
    data = config.to_json()
    weights = folder / WEIGHTS_NAME
    correction = data.get("correction")
    timed = {}  # a budget in measured time: the latency profile it was resolved with (docs/latency.md)
    if config.budget.latency is not None:
        basis = config.budget.latency
        timed = {"latency_profile": {"measured_on": basis.describe(), "profile_sha256": basis.profile_sha256,
                                     "predicted_ms": basis.predicted_ms, "dense_ms": basis.dense_ms}}  # fmt: skip
    return {
        "path": str(folder),
        "kind": "sliced",
        "model": _model(data.get("base_model", {})),
        "widths": dict(config.widths),
        "budget": config.budget.label(),
        **timed,
        "cost": {
            "resolution": config.cost.resolution,
            "gmacs": round(config.cost.gmacs, 4),
            "params": config.cost.params,
            "flops_fraction": round(config.cost.gmacs / config.cost.dense_gmacs, 4),
            "params_fraction": round(config.cost.params / config.cost.dense_params, 4),
        },
        "scoring": _scoring(config.scoring.method, config.scoring.settings),
        "correction": None if not correction else {k: correction.get(k) for k in ("statistics", "images", "tokens")},
        "snapvit_version": config.snapvit_version,
        "bundle_sha256": data.get("bundle_sha256"),
        "bytes": weights.stat().st_size if weights.is_file() else None,
        "sha256": sha256_file(weights) if weights.is_file() else None,
    }


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise SnapvitError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")


def _onnx(path: Path) -> dict[str, Any]:
    _require_file(path)
    try:
        import onnx
    except ImportError:
        raise SnapvitError("reading .onnx files needs onnx: pip install onnx (the 'export' extra)") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx reports a bad file with several exception types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SnapvitError(f"{path} is not a readable ONNX file: {reason}") from None

    def shape(value) -> list:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_param or d.dim_value for d in dims]

    params = 0
    for init in model.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        params += count
    return {
        "path": str(path),
        "kind": "onnx",
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": {v.name: shape(v) for v in model.graph.input},
        "outputs": {v.name: shape(v) for v in model.graph.output},
        "weights": {"tensors": len(model.graph.initializer), "values": params},  # as exported: constants folded
        **_exported(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _pt2(path: Path) -> dict[str, Any]:
    _require_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise SnapvitError(f"{path} is not a readable .pt2 archive: {exc}") from None
    weights = [e for e in entries if "/data/weights/weight_" in e.filename]
    return {
        "path": str(path),
        "kind": "pt2",
        "weights": {"tensors": len(weights), "bytes": sum(e.file_size for e in weights)},
        **_exported(path),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _exported(path: Path) -> dict[str, Any]:
    """What snapvit recorded in an exported file (model, budget, widths, cost, preprocessing, bundle hash), or
    ``{"snapvit_metadata": None}`` for a file exported elsewhere or before snapvit recorded it."""
    from snapvit_cli.elastic.records import Budget
    from snapvit_cli.errors import BundleError
    from snapvit_cli.export_metadata import read_export_metadata

    try:
        record = read_export_metadata(path)
    except BundleError:
        return {"snapvit_metadata": None}
    if "source" not in record:  # a model snapvit did not cut: its input and output only
        return {"snapvit_metadata": {"input": record.get("input"), "output": record.get("output")}}
    cost = record.get("cost") or {}
    return {
        "model": _model(record["source"]),
        "widths": record.get("widths"),
        "budget": Budget.from_json(record["budget"], "budget").label() if isinstance(record.get("budget"), dict)
        else record.get("budget"),
        "cost": {k: cost.get(k) for k in ("resolution", "gmacs", "params", "flops_fraction", "params_fraction")},
        "preprocessing": record.get("preprocessing"),
        "output_meaning": (record.get("output") or {}).get("meaning"),
        "bundle_sha256": record.get("bundle_sha256"),
        "snapvit_version": record.get("snapvit_version"),
    }
