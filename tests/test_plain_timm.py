"""A sliced model loads with timm + safetensors alone (the model card's snippet), and snapvit's own loader gives it
a pretrained_cfg that timm's data helpers read correctly."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from timm.data import resolve_data_config

from snapvit_cli.api import load, load_bundle
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.elastic.sliced import read_config
from snapvit_cli.hub.model_card import PLAIN_TIMM_LOADER, plain_timm_loadable, render_model_card
from snapvit_cli.scoring import score_model
from tests.conftest import SMALL_CONFIGS, make_small_model, small_model_source
from tests.isolated import run_without

# Every timm VisionTransformer layout, plus DINOv3 (Eva) cut with all its heads (MLP only).
VIT_NAMES = sorted(n for n in SMALL_CONFIGS if not n.startswith(("dinov3", "eva")))
CASES = [(name, {"flops": 0.5}) for name in VIT_NAMES] + [("dinov3", {"mlp": 0.4, "heads": 0.0})]


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    """One sliced folder per case, with seeded inputs saved next to it."""
    root = tmp_path_factory.mktemp("plain")
    folders = {}
    for name, budget in CASES:
        model = make_small_model(name)
        bundle = write_bundle(root / f"{name}.safetensors", model, small_model_source(name, model), score_model(model))
        elastic = load_bundle(bundle)
        folder = elastic.save_slice(root / name, elastic.plan(**budget))
        x = torch.randn(3, 3, *model.patch_embed.img_size, generator=torch.Generator().manual_seed(0))
        np.save(folder / "x.npy", x.numpy())
        folders[name] = folder
    return root, folders


def card_snippet(folder) -> str:
    """The plain-timm code of the card rendered for ``folder`` (its first Python block under "Use without")."""
    card = render_model_card(read_config(folder), kind="sliced", repo_id="someone/model")
    section = card.split("## Use without snapvit", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_card_snippet_reproduces_snapvit_load_exactly_without_snapvit(sliced):
    root, folders = sliced
    snippet = card_snippet(next(iter(folders.values())))
    assert PLAIN_TIMM_LOADER in snippet
    loader = snippet.split("\nfrom huggingface_hub import snapshot_download", 1)[0]  # the function, not the download
    code = (
        loader
        + f"""
import numpy as np
for name in {sorted(folders)!r}:
    model = load_sliced(name)
    with torch.no_grad():
        np.save(f"{{name}}/plain.npy", model(torch.from_numpy(np.load(f"{{name}}/x.npy"))).numpy())
    config = json.load(open(f"{{name}}/config.json"))
    data_config = timm.data.resolve_data_config(config["pretrained_cfg"])
    assert data_config["input_size"] == tuple(config["pretrained_cfg"]["input_size"]), data_config
"""
    )
    run_without({"snapvit_cli"}, code, root)
    for name, folder in folders.items():
        model = load(folder)
        with torch.no_grad():
            expected = model(torch.from_numpy(np.load(folder / "x.npy"))).numpy()
        assert np.array_equal(np.load(folder / "plain.npy"), expected), name  # bit for bit


def test_eva_with_pruned_heads_says_plain_timm_cannot_load_it(tmp_path):
    model = make_small_model("dinov3")
    bundle = write_bundle(tmp_path / "b.safetensors", model, small_model_source("dinov3", model), score_model(model))
    elastic = load_bundle(bundle)
    folder = elastic.save_slice(tmp_path / "half", elastic.plan(flops=0.5))
    config = read_config(folder)
    assert not plain_timm_loadable(config)
    card = render_model_card(config, kind="sliced", repo_id="someone/model")
    assert "plain timm cannot rebuild this model" in card and "snapvit export" in card
    assert PLAIN_TIMM_LOADER not in card


@pytest.mark.parametrize("name", ["augreg-classifier", "siglip2"])
def test_loaded_model_has_an_honest_pretrained_cfg(sliced, name):
    _, folders = sliced
    model = load(folders[name])
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == model.num_classes == SMALL_CONFIGS[name][1].get("num_classes", 1000)
    assert not {"url", "hf_hub_id", "file", "tag", "license", "label_names"} & {k for k, v in cfg.items() if v}
    recorded = model.snapvit_config.pretrained_cfg
    data = resolve_data_config(model=model)
    assert data["input_size"] == tuple(recorded["input_size"])
    assert data["mean"] == tuple(recorded["mean"]) and data["std"] == tuple(recorded["std"])
    assert data["crop_pct"] == recorded.get("crop_pct", data["crop_pct"])
    if name == "siglip2":  # the family's correction survives: squash resize, no crop
        assert data["crop_mode"] == "squash" and data["crop_pct"] == 1.0


def test_readme_shows_the_tested_loader():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert PLAIN_TIMM_LOADER in readme
