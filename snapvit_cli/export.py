"""Deployable files from a sliced (or dense) model: ONNX for onnxruntime and friends, ``.pt2`` for ``torch.export``.

Both are written through ``torch.export``'s graph capture: the ONNX file by the dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``, opset :data:`ONNX_OPSET`), because the TorchScript exporter cannot trace
timm's Eva attention (DINOv3) while the dynamo one handles every supported family. The batch axis is dynamic; the
image size is fixed to the model's (ViT position embeddings are). Every file is checked before it is put in place:
it is loaded back (onnxruntime / ``torch.export.load``) and run at two batch sizes against the PyTorch model, and
a difference above the tolerance leaves no file behind.

Every file carries its :mod:`snapvit_cli.export_metadata` record (preprocessing, budget, widths, provenance, bundle
hash; :func:`~snapvit_cli.export_metadata.read_export_metadata` reads it back), names its output ``features`` or
``logits``, and holds no Python stack traces (they name files on the exporting machine).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from snapvit_cli.errors import SnapvitError
from snapvit_cli.export_metadata import (
    INPUT_NAME,
    METADATA_KEY,
    PT2_EXTRA,
    export_metadata,
    metadata_text,
    strip_onnx_stack_traces,
)
from snapvit_cli.fileio import atomic_path, check_output

Format = Literal["onnx", "pt2"]
FORMATS: tuple[str, ...] = ("onnx", "pt2")
ONNX_OPSET = 18
CHECK_BATCHES = (1, 7)  # the batch sizes every written file is run at
DEFAULT_TOLERANCE = 1e-4  # max |exported - PyTorch| allowed in float32
ONNX_MAX_BYTES = 2**31 - 1  # protobuf's limit for a single-file ONNX model
EXPORT_EXTRA_HINT = "pip install onnx onnxruntime onnxscript (the 'export' extra of snapvit-cli)"


class ExportError(SnapvitError):
    """A model could not be exported, or the written file does not reproduce the model."""


@dataclass(frozen=True)
class ExportResult:
    """What was written and how well the file reproduces the PyTorch model."""

    path: str
    format: str
    input_shape: list[int]  # [batch, 3, H, W] with batch dynamic
    opset: int | None
    bytes: int
    export_s: float
    check_s: float
    max_abs_diff: float
    checked_batches: list[int]
    tolerance: float
    output_name: str  # "features" or "logits"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def input_size(model: nn.Module) -> tuple[int, int]:
    """The (H, W) the model was built for: its patch embedding's image size (fixed by the position embeddings)."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        cfg_size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if not cfg_size:
            raise ExportError("cannot tell the model's input size (no patch_embed.img_size, no pretrained_cfg)")
        size = cfg_size[-2:]
    return int(size[0]), int(size[1])


def require_onnx() -> None:
    """Fail with one line when the ``export`` extra is missing, before any slow work."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: {EXPORT_EXTRA_HINT}")


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: Format,
    *,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Write ``model`` (float32, CPU, eval mode) as ``fmt`` to ``path``, verified at batch sizes 1 and 7.

    The file is written next to ``path`` under a temporary name, loaded back and compared with ``model`` on seeded
    random images; only a file within ``tolerance`` is renamed onto ``path``. A model with a ``snapvit_config`` (a
    sliced model) records it in the file's metadata.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    path = check_output(path, force)
    model = model.float().cpu().eval()
    height, width = input_size(model)
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if not torch.isfinite(model(example)).all():  # before the slow export: no file could be checked against it
            raise ExportError("the PyTorch model's output is not finite (NaN or infinity); nothing was written")
    config = getattr(model, "snapvit_config", None)
    record = export_metadata(config, height, width, int(getattr(model, "num_classes", 0) or 0))
    with atomic_path(path, force=force) as tmp:
        start = time.perf_counter()
        write = _write_onnx if fmt == "onnx" else _write_pt2
        opset = write(model, example, tmp, record)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        diff = _check(fmt, tmp, model, height, width, seed)
        check_s = time.perf_counter() - start
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"the exported {fmt} file differs from the PyTorch model by {diff:.3g} (tolerance {tolerance:g}); "
                "nothing was written"
            )
        size = tmp.stat().st_size
    return ExportResult(
        path=str(path),
        format=fmt,
        input_shape=[-1, 3, height, width],
        opset=opset,
        bytes=size,
        export_s=export_s,
        check_s=check_s,
        max_abs_diff=diff,
        checked_batches=list(CHECK_BATCHES),
        tolerance=tolerance,
        output_name=record["output"]["name"],
    )


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=4096)


def _exported_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    try:
        with torch.no_grad():
            return torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    except Exception as exc:  # noqa: BLE001 - graph capture fails in many ways; the first line says which
        raise ExportError(f"torch.export cannot capture this model: {_first_line(exc)}") from None


def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    program = _exported_program(model, example)
    for module in program.graph_module.modules():  # stack traces name files on this machine
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)
    # Through a file object: given a path, torch names the archive's inner folder after the (temporary) file name,
    # and the bytes would differ from run to run. Into memory first: torch's archive writer aborts the process
    # (std::terminate) when the disk fills under it, where a plain write raises OSError, reported in one line.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={PT2_EXTRA: metadata_text(record)})
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any]) -> int:
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if weights >= ONNX_MAX_BYTES:
        raise ExportError(
            f"the model's weights take {weights / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit; use --format pt2"
        )
    # The exporter reports its progress with print(); keep it off stdout (where --json goes).
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), _quiet_loggers("onnxscript", "torch.onnx"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: _batch_dim()},),  # the model itself, not a program: keeps the axis name "batch"
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[record["output"]["name"]],
                external_data=False,
                optimize=True,
                verify=False,
            )
    except OSError:  # the disk (full, no permission): atomic_path reports it, with what was written
        raise
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"ONNX export failed: {_first_line(exc)}") from None
    _label_onnx(path, record)
    return ONNX_OPSET


def _label_onnx(path: Path, record: dict[str, Any]) -> None:
    """Add the metadata record to the written ONNX file and drop the exporter's stack traces, in place."""
    import onnx

    proto = onnx.load(str(path))
    strip_onnx_stack_traces(proto)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata_text(record)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence the exporter's informational logging ("Skipping constant folding ...") for the duration."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check(fmt: str, path: Path, model: nn.Module, height: int, width: int, seed: int) -> float:
    """Largest |file - model| over seeded random batches of every size in :data:`CHECK_BATCHES`."""
    run = _onnx_runner(path) if fmt == "onnx" else _pt2_runner(path)
    worst = 0.0
    for i, batch in enumerate(CHECK_BATCHES):
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + 1 + i))
        with torch.no_grad():
            expected = model(x)
        got = run(x)
        if got.shape != expected.shape:
            raise ExportError(
                f"the exported file gives shape {list(got.shape)} at batch {batch}, the model {list(expected.shape)}"
            )
        for who, output in (("the PyTorch model", expected), ("the exported file", got)):
            if not torch.isfinite(output).all():
                raise ExportError(
                    f"{who}'s output is not finite (NaN or infinity) at batch {batch}, so the file cannot be "
                    "checked against the model; nothing was written"
                )
        diff = float((got - expected).abs().max())
        if not math.isfinite(diff):  # NaN compares false with everything: max(worst, nan) would keep worst
            raise ExportError(f"the difference at batch {batch} is not finite; nothing was written")
        worst = max(worst, diff)
    return worst


def _onnx_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


def _pt2_runner(path: Path):
    with open(path, "rb") as f:
        module = torch.export.load(f).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
