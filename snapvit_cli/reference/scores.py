"""Safe reader for the importance-score files published with the SnapViT reference code.

The reference repository (WalterSimoncini/SnapViT, ``scores/{imagenet-1k,merged}/<model_type>.pt``) ships its
scores as ``torch.save`` archives of a pickled dict whose ``model_type`` and ``mlp_architecture`` values are
instances of its own str-Enums ``src.models.enums.ModelType`` and ``src.models.enums.MLPArchitecture``.
A plain ``torch.load`` either fails on those globals (``weights_only=True``) or runs whatever the pickle asks
for (``weights_only=False``). We keep torch's restricted ``weights_only`` unpickler and allow exactly those
two names, mapped to a function returning the enum's string value, so no code from the file ever runs and no
stub of the reference repository has to be importable.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from snapvit_cli.errors import BundleError, SnapvitError
from snapvit_cli.fileio import NotRegularFileError, open_regular, sha256_stream
from snapvit_cli.models.aliases import ALIASES
from snapvit_cli.schema import MAX_NESTING, check_data


class ScoreFileError(SnapvitError):
    """A published score file is unreadable, unsafe to unpickle, or inconsistent with itself or a model."""


MLP_ARCHITECTURES = ("standard", "swiglu")

# The reference's ``ModelType`` values (§1.1 of docs/method.md) for which scores were published, and all of its values
# that have a timm equivalent. Their timm names (with the pretrained tag holding the weights the reference scored)
# come from the one alias table, ``models.ALIASES``.
PUBLISHED_MODEL_TYPES = (
    "dino_vitb16",
    "deit-vit-b-16",
    "deit-3-vit-s-16",
    "deit-3-vit-b-16",
    "deit-3-vit-l-16",
    "deit-3-vit-h-14",
    "augreg-vit-b-16-in21k-ft-in1k",
    "augreg-vit-l-16-in21k-ft-in1k",
    "siglip2-vit-b16",
    "dinov3_vitb16",
)
REFERENCE_MODEL_TYPES = (*PUBLISHED_MODEL_TYPES, "dino_vits16", "augreg-vit-s-16-in21k-ft-in1k")
MODEL_TYPE_TO_TIMM: dict[str, str] = {model_type: ALIASES[model_type] for model_type in REFERENCE_MODEL_TYPES}
PUBLISHED_PREFIXES = ("imagenet-1k", "merged")

# Published file name (``<scoring data>_<model_type>.pt``, flattened from the repository's folders) -> timm.
PUBLISHED_SCORE_MODELS: dict[str, str] = {
    f"{prefix}_{model_type}.pt": MODEL_TYPE_TO_TIMM[model_type]
    for prefix in PUBLISHED_PREFIXES
    for model_type in PUBLISHED_MODEL_TYPES
}

_REQUIRED_KEYS = (
    "mlp_scores",
    "head_scores",
    "model_type",
    "mlp_architecture",
    "num_blocks",
    "hidden_dim",
    "embed_dim",
    "num_heads",
    "head_dim",
    "min_hidden_dim_keep_ratio",
    "min_head_keep_ratio",
    "metadata",
)

# What torch raises for a zip archive with damaged records or a damaged pickle: RuntimeError, ValueError, EOFError,
# KeyError, OSError, BadZipFile, and from its restricted unpickler also AttributeError, AssertionError, TypeError,
# IndexError... (found by fuzzing, tests/test_fuzz_readers.py): any of them means a corrupt file.
_CORRUPT = Exception


def _enum_value(value: object) -> str:
    """Stand-in for the reference str-Enums: ``ModelType('dino_vitb16')`` unpickles to ``'dino_vitb16'``."""
    if type(value) is not str:
        raise pickle.UnpicklingError(f"enum value must be a string, got {type(value).__name__}")
    return value


_ENUM_GLOBALS = [
    (_enum_value, "src.models.enums.ModelType"),
    (_enum_value, "src.models.enums.MLPArchitecture"),
]


@dataclass(frozen=True, eq=False)
class ReferenceScores:
    """The contents of one published score file, with scores widened losslessly from float32 to float64."""

    mlp_scores: torch.Tensor
    head_scores: torch.Tensor
    model_type: str
    mlp_architecture: str
    num_blocks: int
    hidden_dim: int
    embed_dim: int
    num_heads: int
    head_dim: int
    min_mlp_keep: float
    min_head_keep: float
    metadata: dict[str, Any]
    file_name: str
    sha256: str


def read_reference_scores(path: str | os.PathLike) -> ReferenceScores:
    """Read and validate a published ``importance-scores.pt`` without executing anything from it.

    The file is read through one handle (a FIFO or device is refused before it can block); its zip directory is
    checked before anything is unpickled (stored members only, together no larger than the file), and its metadata
    is walked iteratively under node and depth budgets, so no file makes this hang, recurse or allocate more than
    the file holds.
    """
    path = Path(path)
    try:
        file = open_regular(path)
    except FileNotFoundError:
        raise ScoreFileError(f"score file {path} does not exist") from None
    except NotRegularFileError as exc:  # a FIFO would block forever
        raise ScoreFileError(f"score file {path} is {exc.strerror}") from None
    except OSError as exc:
        raise ScoreFileError(f"score file {path} cannot be read: {exc.strerror or exc}") from None
    with file:
        raw = _unpickle(file, path)
        file.seek(0)
        digest = sha256_stream(file)
    if not isinstance(raw, dict):
        raise ScoreFileError(f"score file {path.name} holds a {type(raw).__name__}, not a dict of scores")
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise ScoreFileError(f"score file {path.name} lacks {', '.join(missing)}")

    def dim(key: str) -> int:
        value = raw[key]
        if type(value) is not int or value <= 0:
            raise ScoreFileError(f"score file {path.name}: {key} must be a positive integer, got {value!r}")
        return value

    num_blocks, hidden_dim, num_heads = dim("num_blocks"), dim("hidden_dim"), dim("num_heads")
    return ReferenceScores(
        mlp_scores=_scores(raw, "mlp_scores", (num_blocks, hidden_dim), path.name),
        head_scores=_scores(raw, "head_scores", (num_blocks, num_heads), path.name),
        model_type=_model_type(raw["model_type"], path.name),
        mlp_architecture=_mlp_architecture(raw["mlp_architecture"], path.name),
        num_blocks=num_blocks,
        hidden_dim=hidden_dim,
        embed_dim=dim("embed_dim"),
        num_heads=num_heads,
        head_dim=dim("head_dim"),
        min_mlp_keep=_ratio(raw, "min_hidden_dim_keep_ratio", path.name),
        min_head_keep=_ratio(raw, "min_head_keep_ratio", path.name),
        metadata=_metadata(raw["metadata"], path.name),
        file_name=path.name,
        sha256=digest,
    )


def _unpickle(file: BinaryIO, path: Path) -> object:
    """Unpickle with torch's ``weights_only`` unpickler: only tensors, plain data and the two enums."""
    with torch.serialization.safe_globals(_ENUM_GLOBALS):
        try:
            if not zipfile.is_zipfile(file):
                raise ScoreFileError(f"score file {path.name} is not a torch.save archive, or it is truncated")
            _check_members(file, path)
            # A static scan first, so that a refusal names what the file asks for.
            file.seek(0)
            foreign = torch.serialization.get_unsafe_globals_in_checkpoint(file)
            if not foreign:
                file.seek(0)
                return torch.load(file, map_location="cpu", weights_only=True)
        except ScoreFileError:
            raise
        except pickle.UnpicklingError as exc:
            raise ScoreFileError(
                f"refusing to load score file {path.name}: its pickle needs more than tensors, plain data "
                f"and the SnapViT enums ({_reason(exc)})"
            ) from exc
        except _CORRUPT as exc:
            raise ScoreFileError(f"score file {path.name} is corrupt: {_reason(exc)}") from exc
    raise ScoreFileError(
        f"refusing to load score file {path.name}: it refers to {', '.join(sorted(foreign))}; "
        "a score file needs only tensors, plain data and the SnapViT enums"
    )


def _check_members(file: BinaryIO, path: Path) -> None:
    """Refuse an archive that could expand beyond its own size when loaded: ``torch.save`` stores every record
    uncompressed, so a compressed member (a 500 MB tensor deflated to 2 MB) or members that together claim more
    bytes than the file has (overlapping entries) are refused before anything is read."""
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    with zipfile.ZipFile(file) as archive:
        members = archive.infolist()
    compressed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise ScoreFileError(
            f"score file {path.name} has compressed members ({', '.join(compressed[:3])}); torch.save stores "
            "records uncompressed, and snapvit does not inflate them"
        )
    claimed = sum(m.file_size for m in members)
    if claimed > size:
        raise ScoreFileError(
            f"score file {path.name}: its members claim {claimed} bytes, more than the file's {size}"
        )


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception message, for a one-line user error."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def _scores(raw: dict, key: str, shape: tuple[int, int], file_name: str) -> torch.Tensor:
    """Validate a stored score matrix and widen it to float64 (exact for the float32 the reference stores)."""
    value = raw[key]
    if not isinstance(value, torch.Tensor) or value.dtype not in (torch.float32, torch.float64):
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise ScoreFileError(f"score file {file_name}: {key} must be a float32 or float64 tensor, got {kind}")
    if tuple(value.shape) != shape:
        raise ScoreFileError(f"score file {file_name}: {key} has shape {list(value.shape)}, expected {list(shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ScoreFileError(f"score file {file_name}: {key} contains NaN or infinite values")
    if bool((value < 0).any()):
        raise ScoreFileError(f"score file {file_name}: {key} contains negative values")
    return value.to(torch.float64).contiguous()


def _model_type(value: object, file_name: str) -> str:
    if type(value) is not str or not value:
        raise ScoreFileError(f"score file {file_name}: model_type must be a non-empty string, got {value!r}")
    return value


def _mlp_architecture(value: object, file_name: str) -> str:
    if type(value) is not str or value not in MLP_ARCHITECTURES:
        raise ScoreFileError(
            f"score file {file_name}: mlp_architecture {value!r} is not one of {', '.join(MLP_ARCHITECTURES)}"
        )
    return value


def _ratio(raw: dict, key: str, file_name: str) -> float:
    value = raw[key]
    if type(value) not in (int, float) or not 0 <= value < 1:
        raise ScoreFileError(f"score file {file_name}: {key} must be a number in [0, 1), got {value!r}")
    return float(value)


# Budgets of the metadata walk: the published files' metadata holds a few dozen values. A pickle can share one
# list many times (2^40 paths through 40 lists of two references each) or nest it 50,000 levels deep in a few KB;
# counting every value visited, repeats included, stops both.
MAX_METADATA_NODES = 100_000


def _metadata(value: object, file_name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScoreFileError(f"score file {file_name}: metadata must be a dict, got {type(value).__name__}")
    data = _to_json(value, file_name, "metadata")
    try:  # what the bundle's reader accepts: depth, sizes, strings
        check_data(data, f"score file {file_name}: metadata")
    except BundleError as exc:
        raise ScoreFileError(str(exc)) from None
    return data


def _to_json(value: Any, file_name: str, where: str) -> Any:
    """Turn unpickled metadata into JSON-ready values (tuples and tensors become lists), iteratively: at most
    :data:`MAX_METADATA_NODES` values (tensor elements included, shared ones counted each time they are reached)
    and :data:`MAX_NESTING` levels, so that neither a shared-reference bomb nor deep nesting can hang or recurse."""
    budget = MAX_METADATA_NODES
    root: list[Any] = [None]
    stack: list[tuple[Any, list | dict, Any, str, int]] = [(value, root, 0, where, 0)]
    while stack:
        item, parent, key, at, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise _too_many(file_name)
        if depth > MAX_NESTING:
            raise ScoreFileError(f"score file {file_name}: {at} nests deeper than {MAX_NESTING} levels")
        if item is None or type(item) in (bool, int, str):
            parent[key] = item
        elif type(item) is float:
            if not math.isfinite(item):
                raise ScoreFileError(f"score file {file_name}: {at} is {item}, which JSON cannot hold")
            parent[key] = item
        elif isinstance(item, torch.Tensor):
            budget -= item.numel()
            if budget < 0:
                raise _too_many(file_name)
            if item.is_floating_point() and not bool(torch.isfinite(item).all()):
                raise ScoreFileError(f"score file {file_name}: {at} contains NaN or infinity, which JSON cannot hold")
            parent[key] = item.tolist()
        elif isinstance(item, (list, tuple)):
            if len(item) > budget:
                raise _too_many(file_name)
            out: list[Any] = [None] * len(item)
            parent[key] = out
            stack.extend((child, out, i, f"{at}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, dict):
            if not all(type(k) is str for k in item):
                raise ScoreFileError(f"score file {file_name}: {at} has non-string keys")
            if len(item) > budget:
                raise _too_many(file_name)
            mapping: dict[str, Any] = dict.fromkeys(item)
            parent[key] = mapping
            stack.extend((child, mapping, k, f"{at}.{k}", depth + 1) for k, child in item.items())
        else:
            raise ScoreFileError(
                f"score file {file_name}: {at} holds a {type(item).__name__}, which is not plain data"
            )
    return root[0]


def _too_many(file_name: str) -> ScoreFileError:
    return ScoreFileError(
        f"score file {file_name}: metadata holds more than {MAX_METADATA_NODES} values; refusing to read it"
    )


def check_matches(
    scores: ReferenceScores,
    *,
    num_blocks: int,
    hidden_dim: int,
    num_heads: int,
    head_dim: int,
    embed_dim: int,
    model_name: str = "the model",
) -> None:
    """Refuse to apply a score file to a model whose prunable structure is not the one it was made for."""
    ours = (scores.num_blocks, scores.hidden_dim, scores.num_heads, scores.head_dim, scores.embed_dim)
    theirs = (num_blocks, hidden_dim, num_heads, head_dim, embed_dim)
    if ours != theirs:
        raise ScoreFileError(
            f"score file {scores.file_name} has {_shapes(*ours)}, but model {model_name} has {_shapes(*theirs)}"
        )


def _shapes(num_blocks: int, hidden_dim: int, num_heads: int, head_dim: int, embed_dim: int) -> str:
    return (
        f"MLP scores [{num_blocks}, {hidden_dim}] and head scores [{num_blocks}, {num_heads}] "
        f"(head dim {head_dim}, embed dim {embed_dim})"
    )


def timm_name_for(scores: ReferenceScores) -> str:
    """The timm model (with pretrained tag) a score file belongs to, per its own ``model_type`` field."""
    try:
        return MODEL_TYPE_TO_TIMM[scores.model_type]
    except KeyError:
        raise ScoreFileError(
            f"score file {scores.file_name} is for model type {scores.model_type!r}, which has no known timm "
            f"equivalent (known: {', '.join(MODEL_TYPE_TO_TIMM)})"
        ) from None


def published_models_markdown() -> str:
    """Markdown table of the published score files (their path in the reference repository) and their timm models."""
    rows = ["| file in WalterSimoncini/SnapViT | timm model |", "|---|---|"]
    for prefix in PUBLISHED_PREFIXES:
        for model_type in PUBLISHED_MODEL_TYPES:
            rows.append(f"| `scores/{prefix}/{model_type}.pt` | `{MODEL_TYPE_TO_TIMM[model_type]}` |")
    return "\n".join(rows) + "\n"
