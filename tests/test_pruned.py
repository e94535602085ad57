"""Search candidates evaluated on physically sliced models: same fitness as masking, no weight copied needlessly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from snapvit_cli.adapters import HEADS, MLP, get_adapter
from snapvit_cli.data.arrays import ArrayReader
from snapvit_cli.data.imageset import ImageSet
from snapvit_cli.scoring.calibration import input_config, preprocessed
from snapvit_cli.scoring.pruned import pruned_model
from snapvit_cli.scoring.search import FeatureFitness, masked, removed_units
from snapvit_cli.scoring.settings import ScoreSettings
from tests.conftest import image_batch, make_small_model


def _images(n: int = 6) -> ImageSet:
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (n, 3, 40, 40), dtype=torch.uint8, generator=gen)
    return ImageSet(ArrayReader(pixels), n, source="random-5", split="train", name="random")


def _raw(model, seed: int = 0) -> dict[str, torch.Tensor]:
    widths = get_adapter(model).widths()
    gen = torch.Generator().manual_seed(seed)
    return {
        kind: torch.rand(len(widths.of(kind)), widths.of(kind)[0], dtype=torch.float64, generator=gen)
        for kind in (MLP, HEADS)
    }


def test_sliced_and_masked_fitness_agree(small_name):
    """The acceptance check of issue 16: the same candidates give the same fitness either way, on every family."""
    model = make_small_model(small_name)
    adapter = get_adapter(model)
    data = _images()
    raw = _raw(model)
    fitness = {}
    for mode in ("sliced", "masked"):
        settings = ScoreSettings(data=data, ga_batch_size=4, pca_components=8, ga_evaluation=mode)
        images = preprocessed(data, input_config(model, settings))
        fitness[mode] = FeatureFitness(model, adapter, images, raw, settings, torch.device("cpu"))
    dim = adapter.num_blocks * (1 + adapter.widths().heads[0])
    rng = np.random.default_rng(0)
    for theta in (np.ones(dim), rng.uniform(0.0, 2.0, dim), np.where(rng.random(dim) < 0.3, 0.0, 1.0)):
        sliced, masked_value = fitness["sliced"](theta), fitness["masked"](theta)
        assert sliced > 1e-4  # the candidates do change the features
        assert sliced == pytest.approx(masked_value, abs=1e-5)


@torch.no_grad()
def test_pruned_model_shares_what_it_keeps_whole():
    model = make_small_model("deit3-layerscale")
    adapter = get_adapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = _raw(model, seed=3)
    removed = removed_units(scores, (0.55, 0.0), {"mlp": 0.05, "heads": 0.2})  # MLP units only
    pruned = pruned_model(model, adapter, removed)
    dense_state, pruned_state = model.state_dict(), pruned.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.norm1.weight", "pos_embed"):
        assert pruned_state[key].data_ptr() == dense_state[key].data_ptr()  # no copy
    assert pruned_state["blocks.0.mlp.fc1.weight"].shape[0] == 96 - len(removed[MLP][0])
    x = image_batch(model)
    with masked(model, adapter, [removed]):
        want = adapter.features(x)
    assert torch.allclose(get_adapter(pruned).features(x), want, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the dense model is untouched
    assert not any(p.requires_grad for p in pruned.parameters())
