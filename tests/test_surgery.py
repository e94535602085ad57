"""Permutation, slicing and masking keep or remove exactly what they should, for every supported layout."""

from __future__ import annotations

import torch

from snapvit_cli.adapters import HEADS, MLP, Widths, get_adapter
from snapvit_cli.surgery import build_model, keep_prefix, mask_suffix, permute
from tests.conftest import SMALL_CONFIGS, image_batch, make_small_model


def _skeleton(name: str) -> torch.nn.Module:
    import timm

    arch, kwargs = SMALL_CONFIGS[name]
    with torch.device("meta"):
        return timm.create_model(arch, pretrained=False, **kwargs).eval()


def _random_orders(adapter, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = adapter.widths()
    return {
        kind: [torch.randperm(dense.of(kind)[i], generator=gen) for i in range(adapter.num_blocks)]
        for kind in (MLP, HEADS)
    }


def _random_widths(adapter, seed=0) -> Widths:
    gen = torch.Generator().manual_seed(seed)
    dense = adapter.widths()
    return Widths(
        tuple(int(torch.randint(1, w + 1, (1,), generator=gen)) for w in dense.mlp),
        tuple(int(torch.randint(1, h + 1, (1,), generator=gen)) for h in dense.heads),
    )


@torch.no_grad()
def test_permutation_keeps_outputs(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    x = image_batch(model)
    reference = model(x)
    permuted = permute(model.state_dict(), adapter, _random_orders(adapter))
    changed = [k for k in permuted if not torch.equal(permuted[k], model.state_dict()[k])]
    assert any("fc1" in k for k in changed) and any("qkv" in k for k in changed)  # the permutation did something
    model.load_state_dict(permuted)
    assert (model(x) - reference).abs().max() < 1e-5


@torch.no_grad()
def test_zero_sparsity_slice_equals_dense(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    x = image_batch(model)
    state = keep_prefix(model.state_dict(), adapter, adapter.widths())
    sliced = build_model(_skeleton(small_name), adapter.widths(), state)
    assert torch.equal(sliced(x), model(x))


@torch.no_grad()
def test_slice_equals_mask(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    x = image_batch(model)
    widths = _random_widths(adapter, seed=3)
    assert widths != adapter.widths()
    sliced = build_model(_skeleton(small_name), widths, keep_prefix(model.state_dict(), adapter, widths))
    model.load_state_dict(mask_suffix(model.state_dict(), adapter, widths))
    masked_out, sliced_out = model(x), sliced(x)
    assert (sliced_out - masked_out).abs().max() < 1e-5
    # and removing units really changed the function
    assert (sliced_out - make_small_model(small_name)(x)).abs().max() > 1e-3


def test_sliced_modules_are_consistent(small_name):
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    widths = _random_widths(adapter, seed=5)
    sliced = build_model(_skeleton(small_name), widths, keep_prefix(model.state_dict(), adapter, widths))
    for block, mlp, heads in zip(sliced.blocks, widths.mlp, widths.heads, strict=True):
        assert block.mlp.fc1.out_features == mlp == block.mlp.fc1.weight.shape[0]
        assert block.mlp.fc2.in_features == mlp == block.mlp.fc2.weight.shape[1]
        assert block.attn.num_heads == heads
        assert block.attn.qkv.out_features == 3 * heads * block.attn.head_dim == block.attn.qkv.weight.shape[0]
        assert block.attn.proj.in_features == heads * block.attn.head_dim == block.attn.proj.weight.shape[1]
    assert get_adapter(sliced).widths() == widths


def test_score_tensors_select_value_rows_and_fc1():
    from snapvit_cli.adapters.base import unit_view

    model = make_small_model("dino")
    adapter = get_adapter(model)
    block = model.blocks[1]
    heads, hd, dim = block.attn.num_heads, block.attn.head_dim, model.embed_dim
    (value_spec,) = adapter.score_tensors(HEADS, 1)
    values = unit_view(block.attn.qkv.weight, value_spec)
    assert values.shape == (1, heads, hd, dim)
    # head h's value rows are rows 2·H·hd + h·hd ... + hd of qkv
    h = heads - 1
    expected = block.attn.qkv.weight[2 * heads * hd + h * hd : 2 * heads * hd + (h + 1) * hd]
    assert torch.equal(values[0, h], expected)
    (fc1_spec,) = adapter.score_tensors(MLP, 1)
    assert torch.equal(unit_view(block.mlp.fc1.weight, fc1_spec)[0, 5, 0], block.mlp.fc1.weight[5])
