"""The typed persisted records: one budget label, round trips, and what the strict readers refuse."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from snapvit_cli.elastic.records import Budget, BundleMetadata, SlicedConfig
from snapvit_cli.errors import BundleError
from snapvit_cli.models.source import MODEL_ARGS, ModelSource, check_model_args
from snapvit_cli.schema import MAX_NESTING, parse_json
from tests.conftest import SMALL_CONFIGS, make_small_model, small_model_source


@pytest.mark.parametrize(
    ("budget", "label"),
    [
        (Budget("flops", target=0.5, head_offset=0.15), "flops 0.5"),
        (Budget("params", target=0.7, head_offset=0.0), "params 0.7"),
        (Budget("ratios", mlp=0.35, heads=0.2), "mlp 0.35 heads 0.2"),
        (Budget("ratios", mlp=0.0, heads=0.0), "mlp 0 heads 0"),
    ],
)
def test_one_label_and_a_round_trip(budget, label):
    assert budget.label() == label
    assert Budget.from_json(json.loads(json.dumps(budget.to_json()))) == budget


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "ratios", "mlp": 1.0, "heads": 0.0}, r"budget: removed fractions must lie in \[0, 1\)"),
        ({"kind": "flops", "target": 0.0}, r"budget.target must lie in \(0, 1\], got 0.0"),
        ({"kind": "flops", "target": 0.5, "head_offset": 2}, r"budget.head_offset must lie in \[0, 1\], got 2.0"),
        ({"kind": "flops", "target": "0.5"}, "budget.target must be a number, not a string"),
        ({"kind": "energy", "target": 0.5}, "budget.kind must be one of .*, got 'energy'"),
        ({"kind": "flops", "target": 0.5, "extra": 1}, "budget has unknown key extra"),
        (["flops", 0.5], "budget must be a JSON object, not a list"),
    ],
)
def test_bad_budgets_are_refused(data, message):
    with pytest.raises(BundleError, match=f"^{message}$"):
        Budget.from_json(data)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_every_family_small_config_is_an_allowed_source(name):
    """What the loader records for every supported layout passes the reader's allow-list unchanged."""
    model = make_small_model(name)
    source = small_model_source(name, model)
    assert ModelSource.from_json(json.loads(json.dumps(source.to_json()))) == source


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"device": "cuda"}, "may not set device"),
        ({"checkpoint_path": "/etc/passwd"}, "may not set checkpoint_path"),
        ({"pretrained": True}, "may not set pretrained"),
        ({"pretrained_cfg_overlay": {"file": "x"}}, "may not set pretrained_cfg_overlay"),
        ({"depth": 129}, "depth must lie in [1, 128]"),
        ({"embed_dim": 16385}, "embed_dim must lie in [1, 16384]"),
        ({"depth": 2.0}, "depth must be an integer"),
        ({"mlp_ratio": 0}, "mlp_ratio must lie in (0, 64]"),
        ({"img_size": [64]}, "img_size must be a list of 2 integers"),
        ({"global_pool": "exec"}, "global_pool must be one of"),
        ({"embed_dim": 30, "num_heads": 4}, "not a multiple of num_heads"),
    ],
)
def test_model_args_outside_the_allow_list_are_refused(args, message):
    with pytest.raises(BundleError) as info:
        check_model_args("vit_small_patch16_224", args, "source.model_args")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_eva_arguments_are_allowed_only_for_eva():
    assert check_model_args("vit_base_patch16_dinov3", {"qkv_fused": False}, "a") == {"qkv_fused": False}
    with pytest.raises(BundleError, match="may not set qkv_fused"):
        check_model_args("vit_small_patch16_224", {"qkv_fused": False}, "a")
    assert set(MODEL_ARGS) == {"timm.models.vision_transformer", "timm.models.deit", "timm.models.eva"}


@pytest.mark.parametrize("architecture", ["resnet18", "convnext_tiny", "no_such_model", "vit_small_patch16_224 "])
def test_architectures_no_family_knows_are_refused(architecture):
    with pytest.raises(BundleError, match="not an architecture of a supported family"):
        check_model_args(architecture, {}, "source.model_args")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, f"metadata nests deeper than {MAX_NESTING} levels"),
        ("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), f"metadata nests deeper than {MAX_NESTING} levels"),
        ('{"a": NaN}', "metadata is not valid JSON (NaN is not a number snapvit accepts)"),
        ("[1e999]", "metadata is not valid JSON (1e999 overflows a float)"),
    ],
)
def test_hostile_json_is_one_line_never_a_recursion_error(text, message):
    with pytest.raises(BundleError) as info:
        parse_json(text, "metadata")
    assert str(info.value) == message


def test_records_refuse_unknown_keys_and_accept_what_the_writer_wrote(tmp_path):
    from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
    from snapvit_cli.scoring import score_model

    model = make_small_model("dino")
    scores = score_model(model, "magnitude")
    path = write_bundle(tmp_path / "b.safetensors", model, small_model_source("dino", model), scores)
    bundle = ElasticBundle.open(path)
    data = bundle.metadata.to_json()
    assert BundleMetadata.from_json(data) == bundle.metadata
    config = bundle.save_slice(tmp_path / "s", bundle.plan(mlp=0.5, heads=0.25))
    written = json.loads((config / "config.json").read_text())
    assert SlicedConfig.from_json(written).to_json() == written
    with pytest.raises(BundleError, match="unknown key evil"):
        BundleMetadata.from_json({**data, "evil": 1})
    with pytest.raises(BundleError, match="unknown key evil"):
        SlicedConfig.from_json({**written, "evil": 1})


def test_base_model_provenance_is_checked_and_older_configs_still_load(tmp_path):
    """config.json's base_model carries an explicit origin (random weights here: no Hub id, no licence), validated;
    a config written before it (``pretrained``, no checkpoint hash) loads as Hub weights."""
    from snapvit_cli.elastic.bundle import ElasticBundle, write_bundle
    from snapvit_cli.scoring import score_model

    model = make_small_model("dino")
    source = replace(small_model_source("dino", model), pretrained=False)
    path = write_bundle(tmp_path / "b.safetensors", model, source, score_model(model, "magnitude"))
    bundle = ElasticBundle.open(path)
    written = json.loads((bundle.save_slice(tmp_path / "s", bundle.plan(flops=0.5)) / "config.json").read_text())
    assert written["base_model"]["origin"] == "random" and "pretrained" not in written["base_model"]
    assert not {"hf_hub_id", "license", "checkpoint", "checkpoint_sha256"} & set(written["base_model"])
    config = SlicedConfig.from_json(written)
    assert config.source.pretrained is False  # a field-like property, as BundleMetadata.source is a field
    assert config.source.architecture == bundle.metadata.source.architecture == config.architecture

    older = copy.deepcopy(written)
    del older["base_model"]["origin"]
    older["base_model"].update(pretrained=True, hf_hub_id="timm/x", license="mit", revision=None)
    config = SlicedConfig.from_json(older)
    assert config.base_model["origin"] == "hub" and config.base_model["hf_hub_id"] == "timm/x"

    for key, value, message in (
        ("checkpoint_sha256", "abc", "not a hex sha256"),
        ("checkpoint_sha256", 7, "must be a string"),
        ("origin", "yes", "must be one of"),
        ("pretrained", True, "unknown key pretrained"),
        ("hf_hub_id", "timm/x", "random weights may not set hf_hub_id"),
    ):
        bad = copy.deepcopy(written)
        bad["base_model"][key] = value
        with pytest.raises(BundleError, match=message):
            SlicedConfig.from_json(bad)


def test_eval_report_source_and_transform_are_checked_and_older_reports_still_load():
    from snapvit_cli.evaluation.report import EvalReport, EvaluatedSource

    transform = {
        "name": "timm",
        "description": "timm eval transform",
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    report = {
        "format": "snapvit-eval",
        "format_version": 1,
        "snapvit_version": "0.1.0",
        "target": "b.safetensors",
        "target_kind": "bundle",
        "dataset": {},
        "resolution": 224,
        "source": {"kind": "sliced", "sha256": "a" * 64, "bundle_sha256": "b" * 64},
        "preprocessing": {},
        "transform": transform,
        "settings": {},
        "results": [],
        "wall_s": {},
    }
    record = EvalReport.from_json(report)
    assert record.source == EvaluatedSource("sliced", sha256="a" * 64, bundle_sha256="b" * 64)
    assert record.transform == transform and record.to_json() == {**report, "speed_ups": []}  # derived, recomputed
    older = {k: v for k, v in report.items() if k not in ("source", "transform")}
    assert EvalReport.from_json(older).source is None and EvalReport.from_json(older).transform is None
    for change, message in (
        ({"source": {"kind": "sliced", "sha256": "z" * 64}}, "not a hex sha256"),
        ({"source": {"kind": "file"}}, "must be one of"),
        ({"source": {"kind": "bundle", "path": "/etc"}}, "unknown key path"),
        ({"transform": {**transform, "name": "other"}}, "must be one of"),
        ({"transform": {**transform, "crop_pct": -1}}, "must lie in"),
        ({"transform": {**transform, "code": "x"}}, "unknown key code"),
    ):
        with pytest.raises(BundleError, match=message):
            EvalReport.from_json({**report, **change})
