"""Model cards: Hub metadata, the body tables, and tolerance of partial inputs.

``ModelCard.validate()`` POSTs the card to ``{HF_ENDPOINT}/api/validate-yaml`` (exercised against the loopback
Hub in test_push_cli.py); here the metadata is checked locally, by parsing the card back with ``huggingface_hub``
and comparing the fields with what the Hub expects (a listed license identifier, or ``other`` +
``license_name``; a task id; a list of tags).
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from snapvit_cli.elastic.records import BundleMetadata, SlicedConfig
from snapvit_cli.errors import BundleError
from snapvit_cli.evaluation.report import EvalReport
from snapvit_cli.hub.model_card import HUB_LICENSES
from snapvit_cli.hub.model_card import render_model_card as render_record


def render_model_card(config: dict, *, kind: str, eval_results: dict | None = None, **kwargs) -> str:
    """The card for a record given as its JSON (validated by the record, as every reader does)."""
    record = SlicedConfig.from_json(config) if kind == "sliced" else BundleMetadata.from_json(config)
    report = None if eval_results is None else EvalReport.from_json(eval_results)
    return render_record(record, kind=kind, eval_results=report, **kwargs)


BASE_MODEL = {
    "model_id": "dino_vitb16",
    "timm_name": "vit_base_patch16_224.dino",
    "hf_hub_id": "timm/vit_base_patch16_224.dino",
    "revision": None,
    "weights_sha256": "a" * 64,
    "license": "apache-2.0",
    "checkpoint": None,
    "checkpoint_sha256": None,
    "pretrained": True,
}
PRETRAINED_CFG = {
    "input_size": [3, 224, 224],
    "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "crop_pct": 0.9,
    "crop_mode": "center",
    "license": "apache-2.0",
    "hf_hub_id": "timm/vit_base_patch16_224.dino",
}
STRUCTURE = {
    "family": "vit",
    "num_blocks": 3,
    "embed_dim": 768,
    "num_heads": 12,
    "head_dim": 64,
    "mlp_hidden": 3072,
    "mlp_type": "standard",
    "num_prefix_tokens": 1,
    "patch_size": [16, 16],
    "img_size": [224, 224],
    "num_classes": 0,
    "global_pool": "token",
    "attention_pool": False,
}
SCORING = {"method": "magnitude", "settings": {"norm": "l2", "blocks": [0, 1]}, "timings_s": {"total": 1.5}}
MIN_KEEP = {"mlp": 0.05, "heads": 0.2}

# A sliced model's config.json and a bundle's metadata, as written (SlicedConfig / BundleMetadata validate them).
SLICED = {
    "snapvit_format_version": 1,
    "kind": "sliced-model",
    "architecture": "vit_base_patch16_224",
    "model_args": {},
    "pretrained_cfg": PRETRAINED_CFG,
    "base_model": BASE_MODEL,
    "structure": STRUCTURE,
    "widths": {"mlp_hidden": [3072, 2000, 153], "num_heads": [12, 7, 2]},
    "head_dim": 64,
    "budget": {"kind": "flops", "target": 0.5, "head_offset": 0.15, "mlp_ratio": 0.41, "head_ratio": 0.26},
    "cost": {
        "resolution": 224,
        "gmacs": 8.7,
        "params": 43_000_000,
        "dense_gmacs": 17.5,
        "dense_params": 85_800_000,
        "flops_fraction": 8.7 / 17.5,
        "params_fraction": 43 / 85.8,
    },
    "min_keep": MIN_KEEP,
    "scoring": SCORING,
    "bundle_sha256": "b" * 64,
    "snapvit_version": "0.1.0",
}

BUNDLE = {
    "format_version": 1,
    "kind": "elastic-bundle",
    "snapvit_version": "0.1.0",
    "source": {
        "model_id": "dino_vitb16",
        "timm_name": "vit_base_patch16_224.dino",
        "architecture": "vit_base_patch16_224",
        "model_args": {},
        "pretrained_cfg": PRETRAINED_CFG,
        "weights_sha256": "a" * 64,
        "pretrained": True,
        "hf_hub_id": "timm/vit_base_patch16_224.dino",
        "revision": None,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "license": "apache-2.0",
        "extra": {},
    },
    "structure": {**STRUCTURE, "num_blocks": 12},
    "min_keep": MIN_KEEP,
    "scoring": SCORING,
    "extras": [],
}


def plan_json(budget: dict, mlp_ratio: float, head_ratio: float, gmacs: float, params: int) -> dict:
    """A ``SlicePlan.to_json()`` of a 12-block ViT-B/16 (widths are not used by the card)."""
    return {
        "widths": {"mlp_hidden": [3072] * 12, "num_heads": [12] * 12},
        "budget": budget,
        "mlp_removed": round(mlp_ratio * 36864),
        "heads_removed": round(head_ratio * 144),
        "mlp_ratio": mlp_ratio,
        "head_ratio": head_ratio,
        "resolution": 224,
        "gmacs": gmacs,
        "params": params,
        "dense_gmacs": 17.56,
        "dense_params": 85_798_656,
        "flops_fraction": gmacs / 17.56,
        "params_fraction": params / 85_798_656,
    }


EXAMPLES = [
    plan_json({"kind": "ratios", "mlp": 0.0, "heads": 0.0}, 0.0, 0.0, 17.56, 85_798_656),
    plan_json({"kind": "flops", "target": 0.75, "head_offset": 0.15}, 0.3, 0.15, 13.17, 64_350_000),
    plan_json({"kind": "flops", "target": 0.5, "head_offset": 0.15}, 0.6, 0.45, 8.78, 42_900_000),
]


def eval_row(name: str, budget, knn: float, probe: float | None = None, speed: dict | None = None) -> dict:
    """One row of `snapvit eval --json` (a 3-block ViT-B/16; widths are not used by the card)."""
    return {
        "name": name,
        "budget": budget,
        "dense": budget == "dense",
        "accuracy": {"knn": knn, "probe": probe},
        "probe": None if probe is None else {"best_epoch": 3, "val_accuracy": 0.8},
        "gmacs": 17.5 if budget == "dense" else 8.7,
        "params": 85_800_000 if budget == "dense" else 43_000_000,
        "flops_fraction": 1.0,
        "params_fraction": 1.0,
        "dense_gmacs": 17.5,
        "dense_params": 85_800_000,
        "resolution": 224,
        "widths": {"mlp_hidden": [3072] * 3, "num_heads": [12] * 3},
        "throughput": speed,
        "latency_ms": None if speed is None else 3.2,
        "wall_s": {"knn": 0.1},
    }


SPEED = {"images_per_s": 1234.5, "batch_size": 64, "device": "cuda", "dtype": "float16", "threads": 8, "warmup": 2,
         "repeats": 5}  # fmt: skip
EVAL = {
    "format": "snapvit-eval",
    "format_version": 1,
    "snapvit_version": "0.1.0",
    "target": "b.safetensors",
    "target_kind": "bundle",
    "dataset": {"train": {"n": 10}, "test": {"n": 5}},
    "resolution": 224,
    "preprocessing": {},
    "settings": {"k": 20},
    "results": [
        eval_row("dense", "dense", 0.761, 0.782, SPEED),
        eval_row("half", {"kind": "flops", "target": 0.5, "head_offset": 0.15}, 0.713),
        eval_row("ratios", {"kind": "ratios", "mlp": 0.35, "heads": 0.2}, 0.7),
    ],
    "wall_s": {"total": 1.0},
}


def metadata_of(text: str) -> dict:
    """The YAML block as the Hub reads it (same regex), parsed with a safe loader."""
    match = REGEX_YAML_BLOCK.search(text)
    assert match is not None, "card has no YAML metadata block"
    return yaml.safe_load(match.group(2))


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_sliced_card_metadata_is_what_the_hub_expects():
    text = render_model_card(SLICED, kind="sliced", repo_id="me/vitb-half")
    assert metadata_of(text) == {
        "base_model": "timm/vit_base_patch16_224.dino",
        "library_name": "snapvit",
        "license": "apache-2.0",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["vision", "pruning", "snapvit", "timm", "elastic"],
    }
    card = ModelCard(text)  # huggingface_hub's own parser accepts it
    assert card.data.base_model == "timm/vit_base_patch16_224.dino"
    assert str(card) == text  # already in the canonical form huggingface_hub writes


def test_classifier_gets_the_classification_task():
    config = copy.deepcopy(SLICED)
    config["structure"]["num_classes"] = 1000
    assert metadata_of(render_model_card(config, kind="sliced", repo_id="me/x"))["pipeline_tag"] == (
        "image-classification"
    )
    bundle = copy.deepcopy(BUNDLE)
    bundle["structure"]["num_classes"] = 10
    assert metadata_of(render_model_card(bundle, kind="bundle", repo_id="me/x"))["pipeline_tag"] == (
        "image-classification"
    )


@pytest.mark.parametrize(
    ("license_id", "expected"),
    [
        ("Apache-2.0", {"license": "apache-2.0"}),
        ("cc-by-nc-4.0", {"license": "cc-by-nc-4.0"}),
        (
            "DINOv2 License",
            {
                "license": "other",
                "license_name": "dinov2-license",
                "license_link": "https://huggingface.co/timm/vit_base_patch16_224.dino",
            },
        ),
        (None, {"license": "other", "license_link": "https://huggingface.co/timm/vit_base_patch16_224.dino"}),
    ],
)
def test_license_follows_the_base_model(license_id, expected):
    config = copy.deepcopy(SLICED)
    config["base_model"]["license"] = license_id
    meta = metadata_of(render_model_card(config, kind="sliced", repo_id="me/x"))
    assert {k: meta[k] for k in meta if k.startswith("license")} == expected
    assert meta["license"] in HUB_LICENSES
    assert re.fullmatch(r"[a-z0-9.-]+", meta.get("license_name", "ok"))


def test_no_base_model_without_a_hub_id():
    config = copy.deepcopy(SLICED)
    config["base_model"] = {"model_id": "dinov3_vitb16", "hf_hub_id": None, "license": None}
    meta = metadata_of(render_model_card(config, kind="sliced", repo_id="me/x"))
    assert "base_model" not in meta and "license_link" not in meta
    assert meta["license"] == "other"


def test_base_model_id_drops_prefix_and_revision():
    config = copy.deepcopy(SLICED)
    config["base_model"]["hf_hub_id"] = "hf-hub:timm/vit_base_patch16_224.dino@abc123"
    assert metadata_of(render_model_card(config, kind="sliced", repo_id="me/x"))["base_model"] == (
        "timm/vit_base_patch16_224.dino"
    )


def test_sliced_body_tables():
    text = render_model_card(SLICED, kind="sliced", repo_id="me/vitb-half")
    widths = table_rows(text, "| Block |")
    assert widths == [
        ["0", "3072", "12"],
        ["1", "2000", "7"],
        ["2", "153", "2"],
        ["**Total**", "**5225**", "**21**"],
    ]
    assert "the dense model has 3072 MLP hidden units and 12 heads of dimension 64 in each block" in text
    cost = table_rows(text, "| | This model |")
    assert cost == [["GMACs", "8.7", "17.5", "49.7%"], ["Parameters", "43 M", "85.8 M", "50.1%"]]
    assert "GMACs at 224×224 input" in text
    assert "- **Budget:** `flops 0.5` (head offset 0.15)" in text
    # mlp_ratio / head_ratio are the fractions *removed*
    assert "removed 41.0% of the MLP neurons and 26.0% of the attention heads" in text
    assert "method `magnitude`" in text and "| `norm` | l2 |" in text and "| `blocks` | [0, 1] |" in text
    assert "5.0% of the MLP neurons and 20.0% of the attention heads" in text
    assert f"sha256 `{'b' * 64}` by snapvit 0.1.0" in text
    assert 'model = snapvit_cli.load("hf-hub:me/vitb-half")' in text
    assert "## Evaluation" not in text


def test_ratio_budget_is_shown_with_the_one_label():
    config = copy.deepcopy(SLICED)
    config["budget"] = {"kind": "ratios", "mlp": 0.35, "heads": 0.2, "mlp_ratio": 0.35, "head_ratio": 0.2}
    text = render_model_card(config, kind="sliced", repo_id="me/x")
    assert "- **Budget:** `mlp 0.35 heads 0.2`; removed 35.0% of the MLP neurons and 20.0%" in text


def test_usage_names_the_pushed_revision():
    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", revision="v1")
    assert 'snapvit_cli.load("hf-hub:me/x@v1")' in text
    assert 'snapvit_cli.load("hf-hub:me/x")' in render_model_card(
        SLICED, kind="sliced", repo_id="me/x", revision="main"
    )


def test_eval_table_labels_every_budget_and_dashes_what_was_not_measured():
    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=EVAL)
    assert table_rows(text, "| Model |") == [
        ["dense (dense reference)", "dense", "76.10%", "78.20%", "17.5", "85.8", "1234.5", "3.2"],
        ["half", "flops 0.5", "71.30% (dense 76.10%, 93.7% retained)", "—", "8.7", "43", "—", "—"],
        ["ratios", "mlp 0.35 heads 0.2", "70.00% (dense 76.10%, 92.0% retained)", "—", "8.7", "43", "—", "—"],
    ]
    assert "batch_size 64, device cuda, dtype float16" in text


def test_every_reported_number_has_its_dense_reference_and_the_index_names_the_repo():
    """Issue 24: model-index name = repo id, values rounded, a dense reference beside each number, a real (hf:) or
    clearly custom data set type."""
    report = copy.deepcopy(EVAL)
    report["settings"]["k"] = 5
    report["results"][1]["accuracy"]["knn"] = 0.71299999952316284  # float32 noise
    report["dataset"]["test"] = {"n": 5, "name": "pets", "kind": "npz", "split": "test"}
    meta = metadata_of(render_model_card(SLICED, kind="sliced", repo_id="me/vitb-half", eval_results=report))
    index = meta["model-index"]
    assert [entry["name"] for entry in index] == ["me/vitb-half"]
    first = index[0]["results"][0]
    assert first["dataset"]["type"] == "custom:pets" and "not on the Hub" in first["dataset"]["name"]
    assert [(m["name"], m["value"]) for m in first["metrics"]] == [  # the pruned rows; the dense one beside them
        ("kNN top-1 (k=5), flops 0.5; dense reference 0.7610, 93.7% retained", 0.713),
        ("kNN top-1 (k=5), mlp 0.35 heads 0.2; dense reference 0.7610, 92.0% retained", 0.7),
    ]
    report["dataset"]["test"] = {"n": 5, "name": "cifar10", "source": "hf:uoft-cs/cifar10:plain_text"}
    meta = metadata_of(render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=report))
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["type"] == "uoft-cs/cifar10" and dataset["config"] == "plain_text"
    without = {**report, "results": report["results"][1:]}  # a sliced model evaluated alone
    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=without)
    assert "No dense reference was evaluated" in text and "--reference BUNDLE" in text


@pytest.mark.parametrize("kind", ["sliced", "bundle"])
def test_first_sentence_reads_well(kind):
    text = render_model_card(SLICED if kind == "sliced" else BUNDLE, kind=kind, repo_id="me/x")
    sentence = next(line for line in text.splitlines() if line.startswith("This repository holds"))
    assert "pruned a" not in sentence and " a a " not in sentence
    if kind == "sliced":
        assert sentence.startswith(
            "This repository holds a version of [`vit_base_patch16_224.dino`]"
            "(https://huggingface.co/timm/vit_base_patch16_224.dino) pruned with SnapViT"
        )


def test_settings_table_is_whole_and_readable():
    config = copy.deepcopy(SLICED)
    config["scoring"]["settings"] = {
        "ga_sample_fraction": 1 / 3,
        "data": {"kind": "npz", "name": "a-long-calibration-set-name-" * 5, "n": 16, "identity": {"sha256": "c" * 64}},
    }
    details = render_model_card(config, kind="sliced", repo_id="me/x").split("<details>", 1)[1]
    assert "| `ga_sample_fraction` | 0.333333 |" in details and "0.3333333333333333" not in details
    assert "a-long-calibration-set-name-" * 5 in details and "c" * 64 in details and "..." not in details


def test_usage_shows_the_transform_that_produced_the_numbers():
    """The default report transform is the whole-image resize; the card's snippet builds exactly it."""
    import torch

    from snapvit_cli.data.transforms import preprocess

    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=EVAL)
    code = text.split("## Use with snapvit", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    snippet = code.split("# The preprocessing behind", 1)[1].split("\n", 1)[1]
    assert "T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC" in snippet
    namespace: dict = {}
    exec(snippet, namespace)
    image = torch.randint(0, 256, (3, 97, 131), dtype=torch.uint8)
    expected = preprocess(SLICED["pretrained_cfg"])(image)
    assert torch.allclose(namespace["transform"](image), expected, atol=1e-6)
    crop = {"name": "timm", "description": "timm eval transform", "input_size": [3, 224, 224], "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_mode": "center"}  # fmt: skip
    timm_report = {**EVAL, "transform": crop}
    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=timm_report)
    assert "timm.data.create_transform(input_size=(3, 224, 224), interpolation='bicubic'" in text
    assert "crop_pct=0.9" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("mit-typo",), "is not a Hub licence identifier (did you mean mit"),
        (("other",), "needs --license-name"),
        (("other", "my-licence"), "needs --license-link"),
        (("other", "my-licence", "ftp://x"), "needs --license-link"),
        (("mit", "my-licence"), "go with --license other only"),
    ],
)
def test_license_is_validated_against_the_hub_identifiers(args, message):
    from snapvit_cli.hub.model_card import check_license

    with pytest.raises(ValueError, match=re.escape(message)):
        check_license(*args)
    assert check_license("Apache-2.0") == "apache-2.0"
    assert check_license("other", "my-licence", "https://example.org/licence") == "other"


@pytest.mark.parametrize("eval_results", [None, {**EVAL, "results": []}])
def test_no_eval_section_without_results(eval_results):
    text = render_model_card(SLICED, kind="sliced", repo_id="me/x", eval_results=eval_results)
    assert "## Evaluation" not in text


def test_bundle_card():
    text = render_model_card(BUNDLE, kind="bundle", repo_id="me/vitb-elastic", examples=EXAMPLES)
    meta = metadata_of(text)
    assert meta["base_model"] == "timm/vit_base_patch16_224.dino"
    assert meta["pipeline_tag"] == "image-feature-extraction"
    assert 'bundle = snapvit_cli.load_bundle("hf-hub:me/vitb-elastic")' in text
    assert "model = bundle.slice(flops=0.5)" in text
    assert "snapvit slice hf-hub:me/vitb-elastic --flops 0.5 -o out" in text
    assert "12 blocks, embedding dimension 768, 12 heads of dimension 64 and 3072 MLP hidden units per block" in text
    assert "method `magnitude`" in text and "5.0% of the MLP neurons and 20.0% of the attention heads" in text
    assert table_rows(text, "| Budget |") == [
        ["dense", "17.56", "85.8", "0.0%", "0.0%"],
        ["flops 0.75", "13.17", "64.35", "30.0%", "15.0%"],
        ["flops 0.5", "8.78", "42.9", "60.0%", "45.0%"],
    ]
    assert "GMACs at 224×224 input" in text
    assert "| Block |" not in text


def test_bundle_card_without_examples_has_no_table():
    assert "| Budget |" not in render_model_card(BUNDLE, kind="bundle", repo_id="me/x")


def test_plan_examples_carry_the_budget_record(tmp_path):
    """The examples' budgets are what ``SlicePlan.to_json`` writes, read back by the one Budget record."""
    from snapvit_cli.elastic.bundle import ElasticBundle
    from snapvit_cli.elastic.records import Budget
    from tests.hub_artifacts import build_artifacts

    bundle_path, _ = build_artifacts(tmp_path)
    bundle = ElasticBundle.open(bundle_path)
    for plan in (bundle.plan(flops=0.5), bundle.plan(mlp=0.0, heads=0.0)):
        real_plan = plan.to_json()
        assert Budget.from_json(real_plan["budget"]) == plan.budget
        example = next(e for e in EXAMPLES if e["budget"]["kind"] == real_plan["budget"]["kind"])
        assert set(example) == set(real_plan) and set(example["budget"]) == set(real_plan["budget"])


@pytest.mark.parametrize("kind", ["sliced", "bundle"])
def test_citation_and_method_description(kind):
    text = render_model_card(SLICED if kind == "sliced" else BUNDLE, kind=kind, repo_id="me/x")
    bibtex = text.split("```bibtex\n", 1)[1].split("```", 1)[0]
    assert "Elastic ViTs from Pretrained Models without Retraining" in bibtex
    assert "Simoncini, Walter" in bibtex and "eprint        = {2510.17700}" in bibtex
    assert "https://arxiv.org/abs/2510.17700" in text


def test_incomplete_config_is_refused_before_rendering():
    with pytest.raises(BundleError, match="config.json lacks"):
        render_model_card({"kind": "sliced-model", "snapvit_format_version": 1}, kind="sliced", repo_id="me/x")


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        render_record(SlicedConfig.from_json(SLICED), kind="model", repo_id="me/x")
    with pytest.raises(ValueError, match="kind"):
        render_record(SlicedConfig.from_json(SLICED), kind="bundle", repo_id="me/x")


def test_long_scoring_settings_are_collapsed_not_inline():
    config = copy.deepcopy(SLICED)
    config["scoring"]["settings"] = {"ga_pairs": [[0.15 + i / 100, i / 100] for i in range(60)], "samples": 1000}
    text = render_model_card(config, kind="sliced", repo_id="me/x")
    details = text.split("<details>", 1)[1].split("</details>", 1)[0]
    assert "| `samples` | 1000 |" in details and "| `ga_pairs` | [[0.15, 0], [0.16, 0.01]" in details
    assert "[0.74, 0.59]]" in details and "..." not in details  # whole, not cut
    assert "ga_pairs" not in text.split("<details>", 1)[0]  # the bullet list only names the method


def test_install_line_comes_from_the_package_metadata(monkeypatch):
    from importlib import metadata

    from snapvit_cli.hub import model_card

    class Meta:
        def __init__(self, urls):
            self.urls = urls

        def get_all(self, key):
            return self.urls if key == "Project-URL" else None

    monkeypatch.setattr(metadata, "metadata", lambda name: Meta(None))
    assert model_card.install_hint() == ""
    card = render_model_card(SLICED, kind="sliced", repo_id="me/x")
    assert "pip install -e ." in card and "pip install snapvit" not in card
    monkeypatch.setattr(metadata, "metadata", lambda name: Meta(["Source, https://example.org/snapvit.git"]))
    assert model_card.install_hint() == 'pip install "snapvit-cli @ git+https://example.org/snapvit.git"'
    assert 'pip install "snapvit-cli @ git+https://example.org/snapvit.git"' in render_model_card(
        SLICED, kind="sliced", repo_id="me/x"
    )


def test_bundle_card_says_when_correction_statistics_travel_with_it():
    from dataclasses import replace

    from snapvit_cli.elastic.records import BundleMetadata, CorrectionStats

    plain = render_model_card(BUNDLE, kind="bundle", repo_id="me/x")
    assert "Correction statistics" not in plain
    metadata = BundleMetadata.from_json(BUNDLE)
    stats = CorrectionStats(
        images=750, heldout_images=250, holdout=4, tokens=197, readout="cls", prefix=1, data={"source": "cifar10.npz"}
    )
    text = render_model_card(replace(metadata, correction_stats=stats).to_json(), kind="bundle", repo_id="me/x")
    assert "**Correction statistics:** stored (750 images of `cifar10.npz`, 250 more held back)" in text
