"""Closed-form GMACs and parameter counts agree with what torch measures on the real (sliced) modules."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from snapvit_cli.adapters import Widths, get_adapter
from snapvit_cli.elastic.surgery import build_model, keep_prefix
from tests.conftest import SMALL_CONFIGS, make_small_model


def measured_macs(model: torch.nn.Module, resolution: int) -> float:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # count q·kᵀ and attn·v (blocks and attention pool) as the matmuls they are
    model.requires_grad_(False)  # FlopCounterMode's module tracker trips over views of trainable parameters
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops() / 2


def test_dense_macs_match_flop_counter(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    cost = adapter.cost_terms()
    measured = measured_macs(model, model.patch_embed.img_size[0])
    assert abs(cost.macs(adapter.widths()) - measured) <= 0.005 * measured
    assert cost.params(adapter.widths()) == sum(p.numel() for p in model.parameters())


def test_sliced_macs_and_params_match(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    dense = adapter.widths()
    widths = Widths(
        tuple(max(1, w // (i + 2)) for i, w in enumerate(dense.mlp)),
        tuple(max(1, h - i) for i, h in enumerate(dense.heads)),
    )
    arch, kwargs = SMALL_CONFIGS[small_name]
    with torch.device("meta"):
        skeleton = timm.create_model(arch, pretrained=False, **kwargs)
    sliced = build_model(skeleton, widths, keep_prefix(model.state_dict(), adapter, widths))
    cost = adapter.cost_terms()
    measured = measured_macs(sliced, model.patch_embed.img_size[0])
    assert abs(cost.macs(widths) - measured) <= 0.005 * measured
    assert cost.params(widths) == sum(p.numel() for p in sliced.parameters())


@pytest.mark.parametrize(
    "arch",
    [
        "vit_small_patch16_224",
        "deit_base_distilled_patch16_224",
        "vit_base_patch14_reg4_dinov2",
        "vit_base_patch16_dinov3",
        "vit_base_patch16_siglip_224",
    ],
)
def test_full_size_macs_at_several_resolutions(arch):
    torch.manual_seed(0)
    kwargs = {"dynamic_img_size": True, "depth": 2}
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    adapter = get_adapter(model)
    patch = model.patch_embed.patch_size[0]
    for resolution in (patch * 8, model.patch_embed.img_size[0]):
        measured = measured_macs(model, resolution)
        closed = adapter.cost_terms(resolution).macs(adapter.widths())
        assert abs(closed - measured) <= 0.005 * measured, (resolution, closed, measured)


def test_vit_b16_matches_method_doc():
    """Method doc §7.3/§7.4: ViT-B/16 without classifier has 85.80 M parameters and about 17.5 GMACs."""
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    adapter = get_adapter(model)
    cost = adapter.cost_terms()
    assert round(cost.params(adapter.widths()) / 1e6, 2) == 85.80
    # the reference's 35.14 GFLOPs counts 2 FLOPs per MAC plus softmax terms; matmuls alone are 17.56 GMACs
    assert 17.4 < cost.gmacs(adapter.widths()) < 17.7
