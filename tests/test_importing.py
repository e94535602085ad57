"""Importing the published SnapViT score files: bundle contents, the paper's selection at its ratios, the CLI.

Selection depends on the scores only, so the real files are imported onto random-init weights of the matching timm
architecture (no download). Each real bundle is built once per module.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snapvit_cli.api import load
from snapvit_cli.cli.app import app
from snapvit_cli.elastic.bundle import load_bundle
from snapvit_cli.errors import UnsupportedModelError
from snapvit_cli.models.loading import build_architecture, load_model
from snapvit_cli.reference.importing import import_reference_scores, write_imported_bundle
from snapvit_cli.reference.scores import ScoreFileError, published_models_markdown, read_reference_scores
from tests.conftest import ROOT, SHARED_DATA
from tests.test_reference_scores import malicious_file, valid_contents, write_reference_file

# The paper's grid of (MLP ratio, head ratio), docs/method.md §4.1.
PAIRS = [(0.15, 0.0), (0.25, 0.1), (0.35, 0.2), (0.45, 0.3), (0.55, 0.4), (0.65, 0.5)]
DINO_B = "imagenet-1k_dino_vitb16.pt"
DEIT3_S = "imagenet-1k_deit-3-vit-s-16.pt"
# file -> timm model, totals kept at the six pairs (§14 C: MLP, heads), per-block floors (§14 B: MLP, heads).
PUBLISHED = {
    DINO_B: (
        "vit_base_patch16_224.dino",
        [31335, 27648, 23962, 20276, 16589, 12903],
        [144, 130, 116, 101, 87, 72],
        (153, 2),
    ),
    DEIT3_S: (
        "deit3_small_patch16_224.fb_in22k_ft_in1k",
        [15668, 13824, 11981, 10138, 8295, 6452],
        [72, 65, 58, 51, 44, 36],
        (76, 1),
    ),
}

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def published_file(file_name: str) -> Path:
    path = SHARED_DATA / "reference-scores" / file_name
    if not path.is_file():
        pytest.skip(f"published score file not available at {path}")
    return path


def reference_keep_counts(scores: torch.Tensor, ratio: float, min_keep: float) -> list[int]:
    """The reference's elastic-slicing rule (§4.3, ``ElasticViT._compute_global_keep_counts``), written anew.

    Sort each block descending, protect its first ⌊width·min_keep⌋ units with the largest finite float, flatten,
    take the N-th smallest value as threshold τ (N = ⌊blocks·width·ratio⌋) and keep every unit above τ.
    """
    blocks, width = scores.shape
    removed = math.floor(blocks * width * ratio)
    if removed == 0:
        return [width] * blocks
    ranked = torch.sort(scores, dim=1, descending=True).values
    ranked[:, : math.floor(width * min_keep)] = torch.finfo(ranked.dtype).max
    threshold = torch.sort(ranked.flatten()).values[removed - 1]
    return (ranked > threshold).sum(dim=1).tolist()


@pytest.fixture(scope="module", params=list(PUBLISHED))
def imported(request, tmp_path_factory):
    """(file path, bundle path) for each published file, imported once onto random-init weights."""
    path = published_file(request.param)
    result = import_reference_scores(path, pretrained=False)
    bundle = write_imported_bundle(result, tmp_path_factory.mktemp("import") / "bundle.safetensors")
    return path, bundle


def test_bundle_selects_what_the_reference_rule_selects(imported):
    path, bundle_path = imported
    timm_name, mlp_totals, head_totals, (mlp_floor, head_floor) = PUBLISHED[path.name]
    raw = read_reference_scores(path)  # float32 values of the file, widened losslessly (tested in the reader)
    bundle = load_bundle(bundle_path)
    assert bundle.source.timm_name == timm_name

    for (r_m, r_h), mlp_total, head_total in zip(PAIRS, mlp_totals, head_totals, strict=True):
        widths = bundle.plan(mlp=r_m, heads=r_h).widths
        assert list(widths.mlp) == reference_keep_counts(raw.mlp_scores.float(), r_m, 0.05), (r_m, r_h)
        assert list(widths.heads) == reference_keep_counts(raw.head_scores.float(), r_h, 0.2), (r_m, r_h)
        assert (sum(widths.mlp), sum(widths.heads)) == (mlp_total, head_total)
        assert min(widths.mlp) >= mlp_floor and min(widths.heads) >= head_floor


def test_deit3_small_block_3_keeps_244_neurons_at_the_first_ratio():
    """§4.1: the per-block outcome is very uneven; DeiT-III-S block 3 keeps 244/1536 at r_m = 0.15."""
    raw = read_reference_scores(published_file(DEIT3_S))
    assert reference_keep_counts(raw.mlp_scores.float(), 0.15, 0.05)[3] == 244


def test_bundle_records_the_file_and_its_scores(imported):
    path, bundle_path = imported
    raw = read_reference_scores(path)
    bundle = load_bundle(bundle_path)
    scoring = bundle.metadata.scoring

    assert scoring.method == "imported"
    assert scoring.settings["provenance"] == {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "model_type": raw.model_type,
        "mlp_architecture": "standard",
        "min_hidden_dim_keep_ratio": 0.05,
        "min_head_keep_ratio": 0.2,
    }
    assert {k: v for k, v in scoring.settings.items() if k != "provenance"} == raw.metadata
    assert bundle.metadata.min_keep == {"mlp": 0.05, "heads": 0.2}
    assert torch.equal(bundle.read_tensor("scores.mlp"), raw.mlp_scores)
    assert torch.equal(bundle.read_tensor("scores.heads"), raw.head_scores)


# --- refusals that need no published file ---


def write_small_file(tmp_path: Path, **changes) -> Path:
    """A score file shaped for timm's vit_tiny_patch16_224 (12 blocks, MLP 768, 3 heads of 64, embed 192)."""
    generator = torch.Generator().manual_seed(0)
    contents = {
        **valid_contents(),
        "mlp_scores": torch.rand(12, 768, generator=generator),
        "head_scores": torch.rand(12, 3, generator=generator),
        "model_type": "deit-3-vit-s-16",
        "num_blocks": 12,
        "hidden_dim": 768,
        "embed_dim": 192,
        "num_heads": 3,
        "head_dim": 64,
        **changes,
    }
    return write_reference_file(tmp_path / "scores.pt", contents)


def test_unknown_model_type_without_model_is_refused_before_loading(tmp_path):
    path = write_reference_file(tmp_path / "toy.pt", valid_contents())
    with pytest.raises(ScoreFileError, match="'toy-vit', which has no known timm equivalent"):
        import_reference_scores(path, pretrained=False)


def test_dinov3_family_imports_through_the_eva_adapter(tmp_path):
    generator = torch.Generator().manual_seed(1)
    shapes = {
        "mlp_scores": torch.rand(12, 1536, generator=generator),
        "head_scores": torch.rand(12, 6, generator=generator),
    }
    path = write_small_file(tmp_path, model_type="dinov3_vitb16", hidden_dim=1536, embed_dim=384, num_heads=6, **shapes)
    imported = import_reference_scores(path, "vit_small_patch16_dinov3", pretrained=False)
    assert type(imported.model).__name__ == "Eva"
    assert torch.equal(imported.scores.mlp, shapes["mlp_scores"].double())


def test_swiglu_scores_do_not_fit_a_standard_mlp(tmp_path):
    path = write_small_file(tmp_path, mlp_architecture="swiglu")
    message = "scores a swiglu MLP, but model vit_tiny_patch16_224 has a standard MLP"
    with pytest.raises(UnsupportedModelError, match=message):
        import_reference_scores(path, "vit_tiny_patch16_224", pretrained=False)


def test_tagged_model_without_classifier_rebuilds_with_the_same_shapes():
    """The `.dino` tag sets num_classes=0; a bundle rebuilds from the untagged architecture, which must match."""
    model, source = load_model("vit_small_patch16_224.dino", pretrained=False)
    skeleton = build_architecture(source, device="meta")
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# --- the command line ---


def test_cli_import_then_slice_gives_the_reference_widths(tmp_path):
    path = published_file(DEIT3_S)
    bundle = tmp_path / "deit3.safetensors"
    result = run("import-scores", path, "--no-pretrained", "-o", bundle, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]
    assert report["path"] == str(bundle) and report["model"] == "deit3_small_patch16_224.fb_in22k_ft_in1k"
    assert report["scores_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "warning" not in result.stderr

    out = tmp_path / "sliced"
    result = run("slice", bundle, "--mlp", "0.35", "--heads", "0.2", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    widths = json.loads(result.stdout)["results"][0]["widths"]
    raw = read_reference_scores(path)
    assert widths["mlp_hidden"] == reference_keep_counts(raw.mlp_scores.float(), 0.35, 0.05)
    assert widths["num_heads"] == reference_keep_counts(raw.head_scores.float(), 0.2, 0.2)
    model = load(out)
    assert [b.mlp.fc1.out_features for b in model.blocks] == widths["mlp_hidden"]
    assert [b.attn.num_heads for b in model.blocks] == widths["num_heads"]
    config = json.loads((out / "config.json").read_text())
    assert config["scoring"]["settings"]["provenance"]["file"] == DEIT3_S


def test_cli_warns_when_the_file_was_scored_on_another_model(tmp_path):
    path = write_small_file(tmp_path)
    result = run("import-scores", path, "--model", "vit_tiny_patch16_224", "--no-pretrained", "-o", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "was scored on deit3_small_patch16_224.fb_in22k_ft_in1k, not vit_tiny_patch16_224" in result.stderr
    assert load_bundle(tmp_path / "b").metadata.scoring.settings["provenance"]["file"] == "scores.pt"


def not_progress(stderr: str) -> list[str]:
    """The lines of ``stderr`` other than the CLI's timestamped progress lines (stderr is not a terminal here)."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]


@pytest.mark.parametrize("kind", ["torch-save", "raw-pickle"])
def test_cli_refuses_a_malicious_pickle_and_runs_nothing(tmp_path, kind):
    path, marker = malicious_file(tmp_path, kind)
    out = tmp_path / "bundle.safetensors"
    result = run("import-scores", path, "--model", "vit_tiny_patch16_224", "--no-pretrained", "-o", out)
    assert result.exit_code == 1
    assert "refusing to load score file" in result.stderr or "not a torch.save archive" in result.stderr
    assert len(not_progress(result.stderr)) == 1 and "Traceback" not in result.output
    assert not marker.exists() and not out.exists()


def test_cli_refuses_a_file_for_another_shape_naming_both(tmp_path):
    out = tmp_path / "bundle.safetensors"
    result = run("import-scores", published_file(DINO_B), "--model", "deit3_small", "--no-pretrained", "-o", out)
    assert result.exit_code == 1
    message = result.stderr
    assert len(not_progress(message)) == 1 and "Traceback" not in result.output
    assert "MLP scores [12, 3072] and head scores [12, 12]" in message  # the file
    assert "MLP scores [12, 1536] and head scores [12, 6]" in message  # the model
    assert not out.exists() and not list(tmp_path.iterdir())


def test_docs_list_the_published_files_exactly():
    assert published_models_markdown() in (ROOT / "docs" / "published-scores.md").read_text()
