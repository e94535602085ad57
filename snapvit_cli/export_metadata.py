"""What an exported file says about itself: whoever holds only the ``.onnx`` or ``.pt2`` can feed it correctly and
knows what it is, without snapvit and without the folder it came from.

The record (:func:`export_metadata`) holds the input (name, layout, size), the output (``features`` or ``logits``),
the preprocessing (mean, std, interpolation, size, and the resize that snapvit's reported numbers used), the
budget, per-block widths and cost, the source model's provenance and the elastic bundle's sha256. It is stored as
JSON under the key :data:`METADATA_KEY`: an ONNX ``metadata_props`` entry (onnxruntime:
``session.get_modelmeta().custom_metadata_map["snapvit"]``), and the extra file :data:`PT2_EXTRA` of a ``.pt2``
archive (``torch.export.load(f, extra_files={"snapvit.json": ""})``). :func:`read_export_metadata` reads either back.
It never holds a local path.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from snapvit_cli._version import __version__
from snapvit_cli.errors import BundleError
from snapvit_cli.schema import parse_json, sorted_json

EXPORT_FORMAT = "snapvit-export"
EXPORT_FORMAT_VERSION = 1
METADATA_KEY = "snapvit"
PT2_EXTRA = "snapvit.json"
INPUT_NAME = "pixel_values"
MAX_METADATA_BYTES = 1 << 20  # a record is a few kB; never read more than this from a file
# The resize behind every number snapvit reports (eval's default transform, the method's kNN protocol).
RESIZE = "whole image resized to input_size (no crop), RGB scaled to [0, 1], then (x - mean) / std"


def output_name(num_classes: int) -> str:
    """The exported output's name: ``logits`` for a model with a classifier, else ``features`` (pooled)."""
    return "logits" if num_classes > 0 else "features"


def export_metadata(config: Any, height: int, width: int, num_classes: int) -> dict[str, Any]:
    """The record an exported file carries; ``config`` is the sliced model's ``SlicedConfig`` (read by attribute:
    this rank sits below the format's), or ``None`` for a model snapvit did not cut, which then records only its
    input and output."""
    output = output_name(num_classes)
    record: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "snapvit_version": __version__,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "shape": ["batch", 3, height, width]},
        "output": {
            "name": output,
            "shape": ["batch", num_classes] if num_classes > 0 else ["batch", "embed_dim"],
            "meaning": "class logits" if output == "logits" else "pooled image features (the backbone's output)",
        },
    }
    if config is None:
        return record
    pre = config.pretrained_cfg
    record["preprocessing"] = {
        "input_size": [3, height, width],
        "mean": pre.get("mean"),
        "std": pre.get("std"),
        "interpolation": pre.get("interpolation"),
        "resize": RESIZE,
        **{f"timm_{k}": pre[k] for k in ("crop_pct", "crop_mode") if k in pre},
    }
    record.update(
        architecture=config.architecture,
        budget=config.budget.to_json(),
        removed={"mlp": config.mlp_ratio, "heads": config.head_ratio},
        widths={k: list(v) for k, v in config.widths.items()},
        cost=config.cost.to_json(),
        source=dict(config.base_model),
        bundle_sha256=config.bundle_sha256,
    )
    return record


def metadata_text(record: dict[str, Any]) -> str:
    """The stored form: canonical JSON (the same record always gives the same bytes)."""
    return sorted_json(record)


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The record an exported ``.onnx`` or ``.pt2`` carries (``snapvit info`` shows it); a one-line
    :class:`BundleError` for a file that has none or is not one of these formats."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} is not a file")
    text = _pt2_text(path) if zipfile.is_zipfile(path) else _onnx_text(path)
    record = parse_json(text, f"{path.name}'s snapvit metadata")
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise BundleError(f"{path} carries no snapvit export metadata")
    return record


def _pt2_text(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if i.filename.endswith(f"/extra/{PT2_EXTRA}")]
        if not members:
            raise BundleError(f"{path} carries no snapvit export metadata (no extra file {PT2_EXTRA})")
        if members[0].file_size > MAX_METADATA_BYTES:
            raise BundleError(f"{path}: its {PT2_EXTRA} is {members[0].file_size} bytes; at most {MAX_METADATA_BYTES}")
        with archive.open(members[0]) as f:
            return f.read(MAX_METADATA_BYTES + 1).decode("utf-8", errors="replace")


def _onnx_text(path: Path) -> str:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except ImportError:
        raise BundleError("reading ONNX metadata needs the onnx package (the 'export' extra)") from None
    except Exception as exc:  # noqa: BLE001 - protobuf reports a bad file in several ways
        raise BundleError(f"{path} is neither a .pt2 archive nor a readable ONNX file ({type(exc).__name__})") from None
    values = [p.value for p in model.metadata_props if p.key == METADATA_KEY]
    if not values:
        raise BundleError(f"{path} carries no snapvit export metadata")
    if len(values[0]) > MAX_METADATA_BYTES:
        raise BundleError(f"{path}: its snapvit metadata is over {MAX_METADATA_BYTES} characters")
    return values[0]


def strip_onnx_stack_traces(model) -> None:
    """Remove the exporter's per-node Python stack traces: they name files on the exporting machine (its home
    folder, its Python installation) and say nothing the graph needs."""
    graphs = [model.graph, *[f for f in model.functions]]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            keep = [p for p in node.metadata_props if "stack_trace" not in p.key]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
            node.doc_string = ""
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
