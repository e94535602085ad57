"""A sliced model loads with timm + safetensors alone (the model card's snippet): exactly as snapvit loads it, with
every layer sized as its weights, refusing hostile config.json files; snapvit's own loader gives it a pretrained_cfg
that timm's data helpers read correctly."""

from __future__ import annotations

import json
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

# Every timm VisionTransformer layout (Eva/DINOv3 is loaded with snapvit or exported instead).
VIT_NAMES = sorted(n for n in SMALL_CONFIGS if not n.startswith(("dinov3", "eva")))
CASES = [(name, {"flops": 0.5}) for name in VIT_NAMES]


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    """One sliced folder per case, with seeded inputs saved next to it."""
    root = tmp_path_factory.mktemp("plain")
    folders = {}
    for name, budget in CASES:
        model = make_small_model(name)
        scores = score_model(model, "magnitude")
        bundle = write_bundle(root / f"{name}.safetensors", model, small_model_source(name, model), scores)
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


def test_eva_says_plain_timm_cannot_load_it(tmp_path):
    model = make_small_model("dinov3")
    scores = score_model(model, "magnitude")
    bundle = write_bundle(tmp_path / "b.safetensors", model, small_model_source("dinov3", model), scores)
    elastic = load_bundle(bundle)
    for budget in ({"flops": 0.5}, {"mlp": 0.4, "heads": 0.0}):
        folder = elastic.save_slice(tmp_path / f"cut{len(budget)}", elastic.plan(**budget))
        config = read_config(folder)
        assert not plain_timm_loadable(config)
        card = render_model_card(config, kind="sliced", repo_id="someone/model")
        assert "plain timm cannot rebuild this model" in card and "snapvit export" in card
        assert PLAIN_TIMM_LOADER not in card


def test_plain_loader_sizes_every_layer_as_its_weights_and_quantizes(sliced):
    """Issue 24: after loading, in/out features and head counts are those of the weights (not the dense model's),
    so torch's dynamic quantization builds correctly sized layers that give the float model's outputs."""
    root, folders = sliced
    namespace: dict = {}
    exec(PLAIN_TIMM_LOADER, namespace)
    for name in ("augreg-classifier", "dinov2-giant-swiglu", "siglip2"):
        model, reference = namespace["load_sliced"](str(folders[name])), load(folders[name])
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert linears
        for layer_name, layer in linears.items():
            assert (layer.out_features, layer.in_features) == tuple(layer.weight.shape), (name, layer_name)
        block = model.blocks[0]
        assert block.mlp.fc1.out_features == block.mlp.fc1.weight.shape[0] < 4 * block.mlp.fc1.in_features
        assert block.attn.num_heads == reference.blocks[0].attn.num_heads
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        fc1 = quantized.blocks[0].mlp.fc1
        assert (fc1.out_features, fc1.in_features) == tuple(fc1.weight().shape) == tuple(block.mlp.fc1.weight.shape)
        x = torch.from_numpy(np.load(folders[name] / "x.npy"))
        with torch.no_grad():
            got, expected = quantized(x), reference(x)
        assert got.shape == expected.shape and torch.isfinite(got).all()
        assert (got - expected).abs().max() <= 0.2 * expected.abs().max() + 1e-3


def _hostile(config: dict, change: str) -> dict:
    """``config`` as a stranger may have edited it (the inputs `snapvit load` refuses, issue 23 item 16)."""
    config = json.loads(json.dumps(config))
    args = config["model_args"]
    if change == "depth 1e5":
        args["depth"] = 100_000
    elif change == "embed_dim 16384":
        args.update(embed_dim=16384, num_heads=16)
    elif change == "checkpoint_path":
        args["checkpoint_path"] = "/etc/passwd"
    elif change == "pretrained_cfg_overlay":
        args["pretrained_cfg_overlay"] = {"file": "/etc/passwd"}
    elif change == "a 7B architecture":
        config["architecture"] = "vit_7b_patch16_dinov3"
    elif change == "not a ViT":
        config["architecture"] = "resnet50"
    elif change == "img_size 10^6":
        args["img_size"] = 1_000_000
    elif change == "mlp_ratio 1e9":
        args["mlp_ratio"] = 1e9
    elif change == "a dict argument":
        args["global_pool"] = {"__class__": "os.system"}
    elif change == "heads that lie":
        config["widths"]["num_heads"] = [h + 1 for h in config["widths"]["num_heads"]]
    return config


HOSTILE = ("depth 1e5", "embed_dim 16384", "checkpoint_path", "pretrained_cfg_overlay", "a 7B architecture",
           "not a ViT", "img_size 10^6", "mlp_ratio 1e9", "a dict argument", "heads that lie")  # fmt: skip


def test_plain_loader_refuses_hostile_configs_quickly_and_without_memory(sliced, tmp_path):
    """Each config.json that `snapvit_cli.load` refuses is refused by the plain loader too: an exception before
    timm allocates anything the file does not hold (well under a second and 200 MB each), run without snapvit."""
    import shutil

    from snapvit_cli.api import load as snapvit_load
    from snapvit_cli.errors import SnapvitError

    _, folders = sliced
    source = folders["augreg-classifier"]
    config = json.loads((source / "config.json").read_text())
    for change in HOSTILE:
        folder = tmp_path / change.replace(" ", "_")
        folder.mkdir()
        shutil.copy(source / "model.safetensors", folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(_hostile(config, change)))
        with pytest.raises(SnapvitError):  # snapvit's own loader refuses the same file
            snapvit_load(folder)
    code = (
        PLAIN_TIMM_LOADER
        + f"""
import resource, time
torch.zeros(1)  # torch's own start-up memory is not counted
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for change in {list(HOSTILE)!r}:
    start = time.perf_counter()
    try:
        load_sliced(change.replace(" ", "_"))
    except (ValueError, RuntimeError, TypeError) as exc:
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(f"{{change}}|{{time.perf_counter() - start:.3f}}|{{grew:.0f}}|{{str(exc).splitlines()[0]}}")
    else:
        print(f"{{change}}|loaded")
"""
    )
    lines = run_without({"snapvit_cli"}, code, tmp_path).strip().splitlines()
    assert len(lines) == len(HOSTILE), lines
    for line in lines:
        change, seconds, grew_mb, message = line.split("|", 3)
        assert seconds != "loaded", change
        assert float(seconds) < 1.0 and float(grew_mb) < 200, line


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


def test_docs_show_the_tested_loader():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "using-the-result.md").read_text()
    assert PLAIN_TIMM_LOADER in page
