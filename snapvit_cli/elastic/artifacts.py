"""What a path or ``hf-hub:`` id names: the one place that tells an elastic bundle from a sliced model.

``snapvit_cli.load``, ``load_bundle``, ``snapvit slice``, ``eval`` and ``push`` all call :func:`resolve_artifact`, so
they accept the same spellings and give the same error for the same mistake. A local artifact is recognised by
what it holds (the ``kind`` that snapvit's safetensors header declares), never by its name alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from snapvit_cli.errors import BundleError, SnapvitError

ArtifactKind = Literal["bundle", "sliced"]

BUNDLE_KIND = "elastic-bundle"  # the "kind" in a bundle's header metadata
SLICED_KIND = "sliced-model"  # the "kind" in a sliced model's config.json and weights header
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SLICED_FILES = (WEIGHTS_NAME, CONFIG_NAME)  # everything a sliced folder holds: what --force may replace
HF_PREFIX = "hf-hub:"  # as snapvit_cli.hub_client spells it; that module (huggingface_hub) is imported only for one
HEADER_KEY = "snapvit"  # the safetensors ``__metadata__`` key holding snapvit's JSON
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".pt", ".pth")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own bound on the JSON header


@dataclass(frozen=True)
class Artifact:
    """A resolved artifact: a bundle file or a sliced-model folder, local (downloaded for ``hf-hub:`` ids)."""

    kind: ArtifactKind
    path: Path  # the bundle file, or the sliced model's folder
    spec: str  # what the user gave

    @property
    def name(self) -> str:
        """A short display name: the ``hf-hub:`` id, or the file / folder name without snapvit's suffixes."""
        if is_hf_id(self.spec):
            return self.spec
        return self.path.name.removesuffix(".safetensors").removesuffix(".bundle")


def resolve_artifact(spec: str | os.PathLike, *, revision: str | None = None) -> Artifact:
    """Resolve ``spec`` — a bundle file, a sliced-model folder (or its ``config.json`` / ``model.safetensors``), or
    ``hf-hub:OWNER/NAME[@REV]`` of either — into an :class:`Artifact`; a one-line :class:`BundleError` otherwise.

    ``revision`` selects a Hub revision and is refused for local paths.
    """
    if is_hf_id(spec):
        from snapvit_cli.hub_client import resolve_hub_artifact

        kind, path = resolve_hub_artifact(str(spec), revision=revision)
        return Artifact(kind, path, str(spec))
    if revision is not None:
        raise SnapvitError(f"a revision only applies to hf-hub: ids, not to the local path {spec}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise BundleError(f"{path} is a directory but not a sliced model folder (no {CONFIG_NAME} in it)")
        return Artifact("sliced", path, str(spec))
    if not path.exists():
        raise BundleError(f"{path} does not exist")
    if not path.is_file():
        raise BundleError(f"{path} is not a regular file")
    if path.name == CONFIG_NAME:
        return Artifact("sliced", path.parent, str(spec))
    kind = safetensors_kind(path)
    if kind == BUNDLE_KIND:
        return Artifact("bundle", path, str(spec))
    if kind == SLICED_KIND:
        return Artifact("sliced", path.parent, str(spec))
    raise BundleError(f"{path} is neither an elastic bundle nor a sliced model written by snapvit")


def is_hf_id(spec: object) -> bool:
    """Whether ``spec`` names a Hub repository, without importing huggingface_hub (local refusals stay instant)."""
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a file or folder rather than a model name (for commands that take either)."""
    path = Path(spec).expanduser()
    return is_hf_id(spec) or path.exists() or path.suffix in _MODEL_FILE_SUFFIXES or "/" in spec or "\\" in spec


def safetensors_kind(path: Path) -> str | None:
    """The ``kind`` a snapvit safetensors header declares, or None for another safetensors file.

    Reads only the header, in plain Python (no torch: a wrong file is refused at once), and never more than the
    file holds; a file that is not safetensors at all is a one-line :class:`BundleError`.
    """
    from snapvit_cli.fileio import NotRegularFileError, open_regular

    try:
        f = open_regular(path)  # a FIFO or device is refused before it can block
    except NotRegularFileError as exc:
        raise BundleError(f"{path} is {exc.strerror}") from None
    except OSError as exc:
        raise BundleError(f"cannot open {path}: {exc.strerror or exc}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        length = int.from_bytes(f.read(8), "little") if size >= 8 else 0
        not_safetensors = BundleError(f"{path} is neither an elastic bundle nor a sliced model: not a safetensors file")
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise not_safetensors
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError):
            raise not_safetensors from None
    if not isinstance(header, dict):
        raise not_safetensors
    offsets = [entry.get("data_offsets") for entry in header.values() if isinstance(entry, dict)]
    ends = [o[1] for o in offsets if isinstance(o, list) and len(o) == 2 and isinstance(o[1], int)]
    described = 8 + length + max(ends, default=0)
    if described != size:  # safetensors' own rule: the tensors' bytes cover the rest of the file exactly
        raise BundleError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): it holds {size} bytes, its header "
            f"describes {described}"
        )
    metadata = header.get("__metadata__")
    try:
        record = json.loads(metadata.get(HEADER_KEY, "{}")) if isinstance(metadata, dict) else {}
    except (TypeError, ValueError, RecursionError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) else None


def require_kind(artifact: Artifact, kind: ArtifactKind) -> Artifact:
    """``artifact`` if it is a ``kind``; otherwise a one-line error that says what it is instead."""
    if artifact.kind != kind:
        what = {"bundle": "an elastic bundle", "sliced": "a sliced model"}
        raise BundleError(f"{artifact.spec} is {what[artifact.kind]}, not {what[kind]}")
    return artifact
