"""Tests for the safe reader of the score files published with the SnapViT reference code."""

from __future__ import annotations

import enum
import hashlib
import json
import os
import pickle
import shlex
import sys
import types
import zipfile
from pathlib import Path

import pytest
import timm
import torch

from snapvit_cli.errors import SnapvitError
from snapvit_cli.reference.scores import (
    MODEL_TYPE_TO_TIMM,
    PUBLISHED_MODEL_TYPES,
    PUBLISHED_SCORE_MODELS,
    ScoreFileError,
    check_matches,
    published_models_markdown,
    read_reference_scores,
    timm_name_for,
)

# file -> (model_type, timm name, L, D, H, head_dim, E, per-block minimum keeps from §14 B)
PUBLISHED_FILES = {
    "imagenet-1k_dino_vitb16.pt": (
        "dino_vitb16",
        "vit_base_patch16_224.dino",
        12,
        3072,
        12,
        64,
        768,
        (153, 2),
    ),
    "imagenet-1k_deit-3-vit-s-16.pt": (
        "deit-3-vit-s-16",
        "deit3_small_patch16_224.fb_in22k_ft_in1k",
        12,
        1536,
        6,
        64,
        384,
        (76, 1),
    ),
}
ENUM_GLOBALS = ["src.models.enums.MLPArchitecture", "src.models.enums.ModelType"]


def published_path(shared_data: Path, file_name: str) -> Path:
    return shared_data / "reference-scores" / file_name


def valid_contents() -> dict:
    """A small score dict laid out like the reference ``ElasticImportanceScores`` (2 blocks, 2 heads)."""
    generator = torch.Generator().manual_seed(0)
    return {
        "mlp_scores": torch.rand(2, 8, generator=generator) * 1e-4,
        "head_scores": torch.rand(2, 2, generator=generator) * 1e-7,
        "model_type": "toy-vit",
        "mlp_architecture": "standard",
        "num_blocks": 2,
        "hidden_dim": 8,
        "embed_dim": 8,
        "num_heads": 2,
        "head_dim": 4,
        "min_hidden_dim_keep_ratio": 0.05,
        "min_head_keep_ratio": 0.2,
        "metadata": {"seed": 42, "ga_mlp_pruning_ratios": (0.15, 0.35), "counts": torch.tensor([3, 4])},
    }


def write_reference_file(path: Path, contents: object, protocol: int = 2) -> Path:
    """``torch.save`` like the reference code: enum fields become ``src.models.enums`` str-Enum members."""
    enums = types.ModuleType("src.models.enums")
    if isinstance(contents, dict):
        contents = dict(contents)
        for key, class_name in (("model_type", "ModelType"), ("mlp_architecture", "MLPArchitecture")):
            if isinstance(contents.get(key), str):
                enum_class = enum.Enum(class_name, {"MEMBER": contents[key]}, type=str, module=enums.__name__)
                setattr(enums, class_name, enum_class)
                contents[key] = enum_class.MEMBER
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "src", types.ModuleType("src"))
        patch.setitem(sys.modules, "src.models", types.ModuleType("src.models"))
        patch.setitem(sys.modules, "src.models.enums", enums)
        torch.save(contents, path, pickle_protocol=protocol)
    return path


class RunsShellCommand:
    """Unpickling this runs ``touch marker``: stands in for a malicious score file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious_file(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    marker = tmp_path / "marker"
    contents = {**valid_contents(), "metadata": {"payload": RunsShellCommand(marker)}}
    path = tmp_path / "importance-scores.pt"
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(contents))
    else:
        write_reference_file(path, contents, protocol=4 if kind == "torch-save-protocol-4" else 2)
    return path, marker


# --- the published files ---


@pytest.mark.parametrize("file_name", PUBLISHED_FILES)
def test_published_file_reads_with_expected_header(shared_data, file_name):
    model_type, timm_name, blocks, hidden, heads, head_dim, embed, min_keeps = PUBLISHED_FILES[file_name]
    path = published_path(shared_data, file_name)
    scores = read_reference_scores(path)

    assert type(scores.model_type) is str and scores.model_type == model_type
    assert type(scores.mlp_architecture) is str and scores.mlp_architecture == "standard"
    assert (scores.num_blocks, scores.hidden_dim, scores.num_heads) == (blocks, hidden, heads)
    assert (scores.head_dim, scores.embed_dim) == (head_dim, embed)
    assert scores.mlp_scores.shape == (blocks, hidden) and scores.mlp_scores.dtype == torch.float64
    assert scores.head_scores.shape == (blocks, heads) and scores.head_scores.dtype == torch.float64
    assert (scores.min_mlp_keep, scores.min_head_keep) == (0.05, 0.2)
    assert (int(hidden * scores.min_mlp_keep), int(heads * scores.min_head_keep)) == min_keeps
    assert scores.file_name == file_name
    assert scores.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert timm_name_for(scores) == timm_name


@pytest.mark.parametrize("file_name", PUBLISHED_FILES)
def test_published_metadata_is_plain_json(shared_data, file_name):
    metadata = read_reference_scores(published_path(shared_data, file_name)).metadata

    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["seed"] == 42 and metadata["pruning_strategy"] == "dino"
    assert metadata["ga_mlp_pruning_ratios"] == [0.15, 0.35, 0.55, 0.65]
    assert metadata["ga_heads_pruning_ratios"] == [0.0, 0.2, 0.4, 0.5]


@pytest.mark.parametrize("file_name", PUBLISHED_FILES)
def test_published_scores_keep_the_exact_float32_values(shared_data, file_name):
    """Compare with the raw float32 storages read straight from the zip, bypassing pickle entirely."""
    _, _, blocks, hidden, heads, *_ = PUBLISHED_FILES[file_name]
    path = published_path(shared_data, file_name)
    scores = read_reference_scores(path)
    with zipfile.ZipFile(path) as archive:
        storages = {name.rsplit("/", 1)[-1]: archive.read(name) for name in archive.namelist() if "/data/" in name}
        assert archive.read(next(n for n in archive.namelist() if n.endswith("/byteorder"))) == b"little"
    stored_mlp = torch.frombuffer(bytearray(storages["0"]), dtype=torch.float32).reshape(blocks, hidden)
    stored_head = torch.frombuffer(bytearray(storages["1"]), dtype=torch.float32).reshape(blocks, heads)

    assert torch.equal(scores.mlp_scores, stored_mlp.double())
    assert torch.equal(scores.head_scores, stored_head.double())
    assert torch.equal(scores.mlp_scores.float().double(), scores.mlp_scores)
    # §3.2: released scores are squared gradients, positive and at most ~3e-4.
    for values in (scores.mlp_scores, scores.head_scores):
        assert values.min() > 0 and values.max() < 1e-3


@pytest.mark.parametrize("file_name", PUBLISHED_FILES)
def test_published_file_matches_its_timm_model(shared_data, file_name):
    scores = read_reference_scores(published_path(shared_data, file_name))
    with torch.device("meta"):
        model = timm.create_model(timm_name_for(scores), pretrained=False)
    block = model.blocks[0]
    shape = dict(
        num_blocks=len(model.blocks),
        hidden_dim=block.mlp.fc1.out_features,
        num_heads=block.attn.num_heads,
        head_dim=block.attn.head_dim,
        embed_dim=model.embed_dim,
    )
    assert tuple(scores.mlp_scores.shape) == (shape["num_blocks"], shape["hidden_dim"])
    assert tuple(scores.head_scores.shape) == (shape["num_blocks"], shape["num_heads"])
    check_matches(scores, **shape, model_name=timm_name_for(scores))  # the timm model accepts the file
    for name in shape:  # and a model differing in any one dimension does not
        with pytest.raises(ScoreFileError):
            check_matches(scores, **{**shape, name: shape[name] + 1}, model_name="other")


def test_mismatched_model_error_names_both_shapes(shared_data):
    scores = read_reference_scores(published_path(shared_data, "imagenet-1k_dino_vitb16.pt"))
    with pytest.raises(ScoreFileError) as caught:
        check_matches(
            scores,
            num_blocks=12,
            hidden_dim=1536,
            num_heads=6,
            head_dim=64,
            embed_dim=384,
            model_name="deit3_small_patch16_224",
        )
    message = str(caught.value)
    assert "imagenet-1k_dino_vitb16.pt" in message and "deit3_small_patch16_224" in message
    assert "[12, 3072]" in message and "[12, 12]" in message
    assert "[12, 1536]" in message and "[12, 6]" in message


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_published_file_is_refused(shared_data, tmp_path, keep):
    data = published_path(shared_data, "imagenet-1k_dino_vitb16.pt").read_bytes()
    path = tmp_path / "imagenet-1k_dino_vitb16.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ScoreFileError, match="truncated|corrupt"):
        read_reference_scores(path)


# --- files written here in the reference layout ---


def test_reference_layout_round_trips_exactly(tmp_path):
    contents = valid_contents()
    path = write_reference_file(tmp_path / "scores.pt", contents)
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == ENUM_GLOBALS

    scores = read_reference_scores(path)

    assert torch.equal(scores.mlp_scores, contents["mlp_scores"].double())
    assert torch.equal(scores.head_scores, contents["head_scores"].double())
    assert type(scores.model_type) is str and scores.model_type == "toy-vit"
    assert type(scores.mlp_architecture) is str and scores.mlp_architecture == "standard"
    assert scores.metadata == {"seed": 42, "ga_mlp_pruning_ratios": [0.15, 0.35], "counts": [3, 4]}
    assert (scores.min_mlp_keep, scores.min_head_keep) == (0.05, 0.2)


def test_swiglu_architecture_is_accepted(tmp_path):
    path = write_reference_file(tmp_path / "scores.pt", {**valid_contents(), "mlp_architecture": "swiglu"})
    assert read_reference_scores(path).mlp_architecture == "swiglu"


@pytest.mark.parametrize("kind", ["torch-save", "torch-save-protocol-4", "raw-pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    path, marker = malicious_file(tmp_path, kind)
    with pytest.raises(ScoreFileError, match="refusing|not a torch.save archive"):
        read_reference_scores(path)
    assert not marker.exists()


def test_malicious_pickle_is_refused_by_the_loader_itself(tmp_path, monkeypatch):
    """The static scan only words the message; the weights_only load must refuse on its own."""
    path, marker = malicious_file(tmp_path, "torch-save")
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", lambda _path: [])
    with pytest.raises(ScoreFileError, match="refusing"):
        read_reference_scores(path)
    assert not marker.exists()


def test_malicious_payload_runs_under_plain_pickle(tmp_path):
    """Control: the payload the refusal tests use really executes when unpickled unsafely."""
    path, marker = malicious_file(tmp_path, "raw-pickle")
    with open(path, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_refusal_names_the_foreign_global(tmp_path):
    path, _ = malicious_file(tmp_path, "torch-save")
    with pytest.raises(ScoreFileError, match=rf"{os.system.__module__}\.system"):
        read_reference_scores(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[: len(data) // 2], "not a torch.save archive, or it is truncated"),
        (lambda data: data[:-10], "not a torch.save archive, or it is truncated"),
        (lambda data: b"", "not a torch.save archive"),
        (lambda data: b"mlp_scores,head_scores\n1,2\n", "not a torch.save archive"),
        (lambda data: data[:200] + bytes(len(data) - 200), "corrupt|not a torch.save archive"),
    ],
)
def test_damaged_file_gives_one_line_error(tmp_path, damage, message):
    data = write_reference_file(tmp_path / "good.pt", valid_contents()).read_bytes()
    path = tmp_path / "scores.pt"
    path.write_bytes(damage(data))
    with pytest.raises(ScoreFileError, match=message) as caught:
        read_reference_scores(path)
    assert isinstance(caught.value, SnapvitError) and "\n" not in str(caught.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ScoreFileError, match="does not exist"):
        read_reference_scores(tmp_path / "absent.pt")


def with_changes(**changes) -> dict:
    contents = valid_contents()
    for key, value in changes.items():
        if value is None:
            del contents[key]
        else:
            contents[key] = value
    return contents


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (with_changes(head_scores=None, metadata=None), "lacks head_scores, metadata"),
        (with_changes(mlp_scores=torch.rand(2, 8).half()), "mlp_scores must be a float32 or float64 tensor"),
        (with_changes(head_scores=torch.ones(2, 2, dtype=torch.int64)), "head_scores must be a float32"),
        (
            with_changes(mlp_scores=[[0.1] * 8] * 2),
            "mlp_scores must be a float32 or float64 tensor, got list",
        ),
        (with_changes(mlp_scores=torch.rand(2, 7)), r"mlp_scores has shape \[2, 7\], expected \[2, 8\]"),
        (with_changes(head_scores=torch.rand(3, 2)), r"head_scores has shape \[3, 2\], expected \[2, 2\]"),
        (with_changes(mlp_scores=torch.full((2, 8), float("nan"))), "NaN or infinite"),
        (with_changes(head_scores=torch.tensor([[1e-7, float("inf")], [0.0, 0.0]])), "NaN or infinite"),
        (with_changes(mlp_scores=-torch.rand(2, 8)), "negative"),
        (with_changes(mlp_architecture="gated-gelu"), "mlp_architecture 'gated-gelu' is not one of"),
        (with_changes(model_type=""), "model_type must be a non-empty string"),
        (with_changes(num_heads=0), "num_heads must be a positive integer"),
        (with_changes(head_dim=4.0), "head_dim must be a positive integer"),
        (with_changes(min_head_keep_ratio=1.5), r"min_head_keep_ratio must be a number in \[0, 1\)"),
        (with_changes(metadata={"crops": {1, 2}}), "metadata.crops holds a set"),
        (with_changes(metadata={"loss": float("nan")}), "metadata.loss is nan"),
        ([1, 2, 3], "holds a list, not a dict"),
    ],
)
def test_inconsistent_contents_are_refused(tmp_path, contents, message):
    path = write_reference_file(tmp_path / "scores.pt", contents)
    with pytest.raises(ScoreFileError, match=message):
        read_reference_scores(path)


def test_check_matches_accepts_same_structure_and_names_head_dim_mismatch(tmp_path):
    scores = read_reference_scores(write_reference_file(tmp_path / "toy.pt", valid_contents()))
    dims = {"num_blocks": 2, "hidden_dim": 8, "num_heads": 2, "head_dim": 4, "embed_dim": 8}
    check_matches(scores, **dims)
    with pytest.raises(ScoreFileError, match=r"toy\.pt has .*head dim 4.* but model toy-wide has .*head dim 8"):
        check_matches(scores, **{**dims, "head_dim": 8}, model_name="toy-wide")


# --- the table of published files ---


def test_every_mapped_timm_name_has_pretrained_weights():
    available = set(timm.list_models(pretrained=True))
    assert sorted(set(MODEL_TYPE_TO_TIMM.values()) - available) == []


def test_published_table_covers_both_prefixes_of_the_ten_models():
    assert len(PUBLISHED_MODEL_TYPES) == 10
    for model_type in PUBLISHED_MODEL_TYPES:
        timm_name = MODEL_TYPE_TO_TIMM[model_type]
        assert PUBLISHED_SCORE_MODELS[f"imagenet-1k_{model_type}.pt"] == timm_name
        assert PUBLISHED_SCORE_MODELS[f"merged_{model_type}.pt"] == timm_name
    assert len(PUBLISHED_SCORE_MODELS) == 20
    assert PUBLISHED_SCORE_MODELS["merged_dinov3_vitb16.pt"] == "vit_base_patch16_dinov3.lvd1689m"
    assert PUBLISHED_SCORE_MODELS["imagenet-1k_siglip2-vit-b16.pt"] == "vit_base_patch16_siglip_224.v2_webli"


def test_published_models_markdown_lists_every_file():
    lines = published_models_markdown().splitlines()
    assert lines[0] == "| file in WalterSimoncini/SnapViT | timm model |"
    assert len(lines) == 2 + 20
    assert "| `scores/merged/deit-3-vit-h-14.pt` | `deit3_huge_patch14_224.fb_in22k_ft_in1k` |" in lines


def test_unknown_model_type_has_no_timm_name(tmp_path):
    scores = read_reference_scores(write_reference_file(tmp_path / "toy.pt", valid_contents()))
    with pytest.raises(ScoreFileError, match="model type 'toy-vit', which has no known timm equivalent"):
        timm_name_for(scores)
