"""Multi-crop views: shapes, the reference's degenerate legacy mode, determinism and normalisation."""

import itertools

import pytest
import torch
from torchvision.transforms import v2

from snapvit_cli.scoring.crops import MultiCrop, sample_crop_box

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def views(image: torch.Tensor, seed: int, **kwargs) -> torch.Tensor:
    return MultiCrop(224, mean=MEAN, std=STD, **kwargs)(image, torch.Generator().manual_seed(seed))


def test_output_shape_and_dtype(image):
    out = views(image, 0)
    assert out.shape == (12, 3, 224, 224)
    assert out.dtype == torch.float32


def test_legacy_views_are_identical_within_each_group(image):
    out = views(image, 0, mode="legacy")
    assert torch.equal(out[0], out[1])
    assert all(torch.equal(out[2], out[k]) for k in range(3, 12))
    assert not torch.equal(out[0], out[2])


def test_legacy_matches_torchvision_on_stacked_copies(image):
    """The reference applies RandomResizedCrop to stacked copies (one draw per group) from the global RNG."""
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    global_crop = v2.RandomResizedCrop(224, scale=(0.25, 1.0), antialias=True)
    local_crop = v2.RandomResizedCrop(224, scale=(0.05, 0.25), antialias=True)
    for seed in range(3):
        torch.manual_seed(seed)
        expected = torch.cat([global_crop(image.expand(2, -1, -1, -1)), local_crop(image.expand(10, -1, -1, -1))])
        assert torch.equal(views(image, seed, mode="legacy"), reference(expected))


def test_independent_views_are_pairwise_different(image):
    out = views(image, 0)
    for a, b in itertools.combinations(range(12), 2):
        assert not torch.equal(out[a], out[b]), (a, b)


def test_same_seed_same_views_regardless_of_global_rng(image):
    torch.manual_seed(1)
    first = views(image, 7)
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = views(image, 7)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left untouched
    assert not torch.equal(first, views(image, 8))


def test_normalises_with_given_mean_and_std():
    value = 200
    out = views(torch.full((3, 64, 48), value, dtype=torch.uint8), 0)
    expected = (value / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand_as(out), rtol=0, atol=1e-6)


def test_smaller_local_crops_come_as_a_separate_tensor(image):
    crop = MultiCrop(224, mean=MEAN, std=STD, local_size=96)
    global_views, local_views = crop.global_local(image, torch.Generator().manual_seed(0))
    assert global_views.shape == (2, 3, 224, 224)
    assert local_views.shape == (10, 3, 96, 96)
    with pytest.raises(ValueError, match="local_size"):
        crop(image, torch.Generator())


@pytest.mark.parametrize(("height", "width"), [(300, 400), (10, 400), (400, 10)])
def test_crop_parameters_follow_torchvision(height, width):
    """Same algorithm and draw order as torchvision, including the central-crop fallback of thin images."""
    crop = v2.RandomResizedCrop(224, scale=(0.25, 1.0))
    probe = torch.empty(3, height, width)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = crop.make_params([probe])
        box = sample_crop_box(height, width, (0.25, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed))
        assert box == (expected["top"], expected["left"], expected["height"], expected["width"])
