"""Model families: the registry, aliases, preprocessing, refusals, gradient tensors and meta-device materialising."""

from __future__ import annotations

import copy
import json
import re

import pytest
import timm
import torch
from typer.testing import CliRunner

from snapvit_cli.adapters import HEADS, MLP, get_adapter, unit_rows
from snapvit_cli.adapters.base import UnitTensor
from snapvit_cli.adapters.eva import HeadPrunedEvaAttention
from snapvit_cli.data import preprocess
from snapvit_cli.elastic.surgery import build_model, keep_prefix
from snapvit_cli.errors import UnsupportedModelError
from snapvit_cli.models.aliases import ALIASES
from snapvit_cli.models.families import (
    FAMILIES,
    default_model_args,
    family_of,
    supported_models,
    supported_models_markdown,
)
from snapvit_cli.models.loading import load_model, preprocessing_cfg
from tests.conftest import ROOT, SMALL_CONFIGS, image_batch, make_small_model
from tests.masking import mask_suffix

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
HALF = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
# What each family's stored preprocessing must be (from the families' own releases; SigLIP2: open_clip's squash).
EXPECTED_PREPROCESSING = {
    "DINO": {"mean_std": IMAGENET, "interpolation": "bicubic"},
    "DINOv2": {"mean_std": IMAGENET, "interpolation": "bicubic", "size": 518, "crop_pct": 1.0},
    "DINOv3": {"mean_std": IMAGENET, "interpolation": "bicubic", "size": 256, "crop_pct": 1.0},
    "SigLIP2": {"mean_std": HALF, "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "squash"},
    "DeiT": {"mean_std": IMAGENET, "interpolation": "bicubic", "size": 224},
    "DeiT-III": {"mean_std": IMAGENET, "interpolation": "bicubic", "size": 224},
    "AugReg": {"mean_std": HALF, "interpolation": "bicubic", "size": 224},
}


def _meta_model(timm_name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(timm_name, pretrained=False, **kwargs)


# --- registry, aliases, README ---------------------------------------------------------------------------------------
def test_docs_models_table_is_the_generated_one():
    page = (ROOT / "docs" / "models.md").read_text()
    match = re.search(r"<!-- supported-models:start[^>]*-->\n(.*?)<!-- supported-models:end -->", page, re.S)
    assert match, "docs/models.md lacks the supported-models table markers"
    assert match.group(1) == supported_models_markdown()


def test_every_alias_belongs_to_a_family_and_every_family_has_aliases():
    rows = supported_models()
    assert sorted(a for r in rows for a in r.aliases) == sorted(ALIASES)
    assert {r.family for r in rows} == {f.name for f in FAMILIES}
    for name in ("dinov2_vits14", "dinov2_vitg14_reg", "dinov3_vitb16", "siglip2-vit-b16", "deit-vit-b-16"):
        assert name in ALIASES  # torch.hub names and the paper's ids


@pytest.mark.parametrize("row", supported_models(), ids=lambda r: r.timm_name)
def test_every_aliased_model_is_accepted_with_the_listed_layout(row):
    """The real architecture (one block, on the meta device) passes the adapter; the table tells the truth."""
    family = family_of(row.timm_name)
    arch = row.timm_name.split(".")[0]
    model = _meta_model(row.timm_name, depth=1, **default_model_args(arch))
    adapter = get_adapter(model)
    assert adapter.structure()["mlp_type"] == family.mlp_type(row.timm_name)
    cfg = preprocessing_cfg(model)
    expected = EXPECTED_PREPROCESSING[family.name]
    assert (cfg["mean"], cfg["std"]) == expected["mean_std"]
    assert cfg["interpolation"] == expected["interpolation"]
    for key in ("crop_pct", "crop_mode"):
        if key in expected:
            assert cfg[key] == expected[key], key
    if "size" in expected:
        assert cfg["input_size"] == [3, expected["size"], expected["size"]]
    # GMACs default to the resolution the model is preprocessed for (518 for DINOv2)
    assert adapter.cost_terms().resolution == cfg["input_size"][-1]


def test_dinov3_loads_with_cls_pooling():
    model, source = load_model("dinov3_vits16", pretrained=False)
    assert source.model_args["global_pool"] == "token" and model.global_pool == "token"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        cls_after_norm = model.forward_features(x)[:, 0]
        assert torch.equal(get_adapter(model).features(x), cls_after_norm)


def test_hub_models_get_family_defaults_unless_their_config_says_otherwise(monkeypatch):
    import huggingface_hub.constants
    import timm.models

    from snapvit_cli.models.loading import _hub_model_args

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network lookups
    hub_args = {}
    monkeypatch.setattr(timm.models, "load_model_config_from_hf", lambda _id: ({}, "vit_base_patch16_dinov3", hub_args))
    assert _hub_model_args("hf-hub:timm/vit_base_patch16_dinov3.lvd1689m", None) == {"global_pool": "token"}
    hub_args["global_pool"] = "avg"
    assert _hub_model_args("hf-hub:someone/dinov3-avg", None) == {"global_pool": "avg"}


def test_reference_score_model_types_agree_with_the_alias_table():
    from snapvit_cli.reference.scores import MODEL_TYPE_TO_TIMM

    assert {k: ALIASES[k] for k in MODEL_TYPE_TO_TIMM} == MODEL_TYPE_TO_TIMM


def test_preprocessing_squashes_siglip2_and_crops_dino():
    image = torch.zeros(3, 100, 400, dtype=torch.uint8)
    image[:, :, :20] = 255  # a white stripe at the left edge
    siglip = preprocessing_cfg(_meta_model("vit_base_patch16_siglip_224.v2_webli", depth=1))
    assert siglip.get("crop_mode", "squash") == "squash"
    squashed = preprocess(siglip)(image)
    assert squashed.shape == (3, 224, 224)
    assert torch.allclose(squashed[:, :, 0], torch.ones(3, 224)) and squashed[:, :, -1].max() < -0.99
    dino = preprocessing_cfg(_meta_model("vit_small_patch16_224.dino", depth=1))
    cropped = preprocess(dino, resolution=112, crop_pct=dino["crop_pct"])(image)
    assert cropped.shape == (3, 112, 112) and cropped[:, :, 0].max() < 0  # centre crop: the white stripe is gone


def test_models_command_lists_families():
    runner = CliRunner()
    from snapvit_cli.cli.app import app

    text = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "vit_giant_patch14_dinov2.lvd142m" in text.stdout and "packed SwiGLU" in text.stdout
    assert "attention-pool (MAP) head is kept whole" in text.stdout
    data = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    by_name = {m["timm_name"]: m for m in data["models"]}
    assert by_name["vit_base_patch16_dinov3.lvd1689m"]["family"] == "DINOv3"
    assert "dinov2_vitb14" in by_name["vit_base_patch14_dinov2.lvd142m"]["aliases"]


# --- refusals --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "kwargs", "reason"),
    [
        ("resnet18", {}, "not a supported model"),
        ("vit_small_patch16_18x2_224", {"depth": 1}, "ParallelThingsBlock"),
        ("vit_small_patch16_224", {"depth": 1, "scale_attn_norm": True}, "attention output norm"),
        ("vit_small_patch16_224", {"depth": 1, "scale_mlp_norm": True}, "norm over the MLP"),
        ("vit_base_patch16_dinov3", {"depth": 1, "scale_mlp": True}, "norm over the MLP"),
        ("vit_base_patch16_dinov3", {"depth": 1, "scale_attn_inner": True}, "attention output norm"),
        ("vit_base_patch16_dinov3", {"depth": 1, "attn_type": "rope"}, "AttentionRope"),
        ("eva02_tiny_patch14_224", {"depth": 1, "use_post_norm": True}, "EvaBlockPostNorm"),
        ("vit_small_patch16_rope_mixed_224", {"depth": 1}, "mixed RoPE"),
    ],
)
def test_unsupported_models_are_refused_with_the_supported_list(arch, kwargs, reason):
    with pytest.raises(UnsupportedModelError) as info:
        get_adapter(_meta_model(arch, **kwargs))
    message = str(info.value)
    assert reason in message
    assert all(family.name in message for family in FAMILIES)


# --- gradient tensors ------------------------------------------------------------------------------------------------
def _zero_group(tensor: torch.Tensor, spec: UnitTensor, unit: int, group: int | None) -> None:
    """In place: zero ``unit``'s slice of ``tensor`` in one group (or all groups)."""
    axis = spec.axis % tensor.ndim
    view = tensor.view(*tensor.shape[:axis], spec.groups, -1, spec.unit_size, *tensor.shape[axis + 1 :])
    view[(slice(None),) * axis + (slice(None) if group is None else group, unit)] = 0


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model)


@torch.no_grad()
def test_score_tensors_are_the_units_value_and_gate_rows(small_name):
    """Zeroing a unit's gradient-tensor slice removes exactly that unit (with input biases at zero): for heads
    that proves the slice is the value rows (zeroing the query rows instead does not remove the head)."""
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    gen = torch.Generator().manual_seed(0)
    for i, block in enumerate(model.blocks):
        params = dict(block.named_parameters())
        for kind in (MLP, HEADS):
            for spec in adapter.unit_tensors(kind, i):
                if spec.name.endswith("bias"):
                    params[spec.name].zero_()  # a bias would keep a zeroed unit alive
                elif not spec.consumer:  # every unit clearly alive (timm starts SwiGLU gates near zero)
                    params[spec.name].copy_(0.3 * torch.randn(params[spec.name].shape, generator=gen))
    x = image_batch(model)
    block = 1
    for kind in (MLP, HEADS):
        specs = adapter.score_tensors(kind, block)
        assert specs and all(s.name.endswith("weight") and not s.consumer for s in specs)
        unit = adapter.width(kind, block) - 2
        masked, zeroed = _copy(model), _copy(model)
        masked_params = dict(masked.blocks[block].named_parameters())
        for spec in adapter.unit_tensors(kind, block):
            if spec.consumer:  # masking: the unit's output is never read
                _zero_group(masked_params[spec.name].data, spec, unit, None)
        zeroed_params = dict(zeroed.blocks[block].named_parameters())
        for spec in specs:
            _zero_group(zeroed_params[spec.name].data, spec, unit, spec.group)
        assert (zeroed(x) - masked(x)).abs().max() < 1e-5, kind
        assert (zeroed(x) - model(x)).abs().max() > 1e-4, kind  # the unit mattered
        if kind == HEADS and specs[0].groups == 3:
            query = _copy(model)
            _zero_group(dict(query.blocks[block].named_parameters())[specs[0].name].data, specs[0], unit, 0)
            assert (query(x) - masked(x)).abs().max() > 1e-4


def test_gradient_tensor_rows_follow_the_reference_layouts():
    """§3.2 by index: heads = rows 2·H·hd + h·hd + d of qkv; packed SwiGLU = the first half of fc1 (DINOv2's w1,
    silu(x1)·x2); split SwiGLU = fc1_g (DINOv3's w1); standard = fc1 rows."""
    cases = {"dino": "fc1", "dinov2-giant-swiglu": "fc1", "dinov3-swiglu": "fc1_g", "dinov3": "fc1"}
    for name, layer in cases.items():
        model = make_small_model(name)
        adapter = get_adapter(model)
        block = model.blocks[0]
        (spec,) = adapter.score_tensors(MLP, 0)
        weight = getattr(block.mlp, layer).weight
        width = adapter.width(MLP, 0)
        assert spec.name == f"mlp.{layer}.weight"
        assert torch.equal(unit_rows(weight, spec), weight[:width])
        (spec,) = adapter.score_tensors(HEADS, 0)
        qkv = block.attn.qkv.weight
        heads, hd = adapter.width(HEADS, 0), adapter.head_dim
        rows = unit_rows(qkv, spec)
        for h in range(heads):
            start = 2 * heads * hd + h * hd
            assert torch.equal(rows[h], qkv[start : start + hd].reshape(-1))


def test_score_tensors_read_gradients():
    """The scorer's use: gradients of the listed parameters, reduced per unit."""
    model = make_small_model("dinov3-qkvb")
    adapter = get_adapter(model)
    model(image_batch(model)).square().sum().backward()
    for kind in (MLP, HEADS):
        for i, block in enumerate(model.blocks):
            params = dict(block.named_parameters())
            for spec in adapter.score_tensors(kind, i):
                grad = params[spec.name].grad
                scores = unit_rows(grad, spec).square().mean(dim=1)
                assert scores.shape == (adapter.width(kind, i),) and torch.all(scores > 0)


# --- Eva on the meta device ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_sliced_eva_recomputes_rope_and_k_bias():
    model = make_small_model("dinov3-qkvb")
    adapter = get_adapter(model)
    widths = adapter.widths()
    widths = type(widths)(widths.mlp, (4, 2, 1))
    arch, kwargs = SMALL_CONFIGS["dinov3-qkvb"]
    sliced = build_model(_meta_model(arch, **kwargs), widths, keep_prefix(model.state_dict(), adapter, widths))
    assert not any(t.is_meta for t in sliced.buffers())
    assert torch.equal(sliced.rope.periods, model.rope.periods)
    for block, heads in zip(sliced.blocks, widths.heads, strict=True):
        assert type(block.attn) is HeadPrunedEvaAttention
        assert torch.equal(block.attn.k_bias, torch.zeros(heads * adapter.head_dim))
    reference = make_small_model("dinov3-qkvb")
    reference.load_state_dict(mask_suffix(model.state_dict(), adapter, widths))
    x = image_batch(model)
    assert (sliced(x) - reference(x)).abs().max() < 1e-5
