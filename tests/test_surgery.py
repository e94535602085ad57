"""Permutation, slicing and masking keep or remove exactly what they should, for every supported layout."""

from __future__ import annotations

import torch

from snapvit_cli.adapters import HEADS, MLP, Widths, get_adapter
from snapvit_cli.elastic.surgery import build_model, keep_prefix, permute
from tests.conftest import SMALL_CONFIGS, image_batch, make_small_model
from tests.masking import mask_suffix


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
    changed = {k for k in permuted if not torch.equal(permuted[k], model.state_dict()[k])}
    for kind in (MLP, HEADS):  # the permutation moved every unit tensor
        assert {f"blocks.0.{spec.name}" for spec in adapter.unit_tensors(kind, 0)} <= changed
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
    sliced_adapter = get_adapter(sliced)
    assert sliced_adapter.widths() == widths
    for i, block in enumerate(sliced.blocks):
        params = dict(block.named_parameters())
        for kind in (MLP, HEADS):
            for spec in sliced_adapter.unit_tensors(kind, i):
                expected = spec.groups * widths.of(kind)[i] * spec.unit_size
                assert params[spec.name].shape[spec.axis] == expected, (spec.name, i)
        assert block.attn.num_heads == widths.heads[i]
    for name, module in sliced.named_modules():  # nn.Linear sizes follow the sliced weights
        if isinstance(module, torch.nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features), name
