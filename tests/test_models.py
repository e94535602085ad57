"""Model loading: aliases, local checkpoints, and clear errors when a model cannot be had."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from snapvit_cli.errors import ModelLoadError
from snapvit_cli.models.aliases import ALIASES, resolve_name
from snapvit_cli.models.loading import build_architecture, load_model


def test_every_alias_names_a_timm_model_with_weights():
    pretrained = set(timm.list_models(pretrained=True))
    missing = {alias: name for alias, name in ALIASES.items() if name not in pretrained}
    assert not missing


def test_resolve_name_passthrough():
    assert resolve_name("dinov2_vitb14") == "vit_base_patch14_dinov2.lvd142m"
    assert resolve_name("vit_base_patch16_224.dino") == "vit_base_patch16_224.dino"
    assert resolve_name("hf-hub:org/repo") == "hf-hub:org/repo"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_loads_without_download(tmp_path, suffix, monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    else:
        torch.save({"model": model.state_dict()}, path)  # a training-checkpoint wrapper is unwrapped
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded, source = load_model("deit_tiny", checkpoint=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert source.timm_name == "deit_tiny_patch16_224.fb_in1k" and source.origin == "checkpoint"
    assert source.hf_hub_id is None and source.license is None  # timm's Hub id is not where these came from


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="has 2 blocks; deit_tiny_patch16_224.fb_in1k expects 12"):
        load_model("deit_tiny", checkpoint=path)


def test_checkpoint_infers_classifier_width(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    loaded, source = load_model("vit_tiny_patch16_224", checkpoint=path)
    assert loaded.num_classes == 7 and source.model_args == {"num_classes": 7}
    assert source.checkpoint == "w.safetensors" and len(source.checkpoint_sha256) == 64
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    rebuilt = build_architecture(source, device="meta")
    assert rebuilt.head.out_features == 7


def test_pickled_code_in_checkpoint_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    with pytest.raises(ModelLoadError, match="cannot read checkpoint"):
        load_model("vit_tiny_patch16_224", checkpoint=path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_model():
    with pytest.raises(ModelLoadError, match="unknown model 'dinov9_vitz'"):
        load_model("dinov9_vitz")


def test_offline_hub_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"dino_vitb16|vit_base_patch16_224\.dino") as info:
        load_model("dino_vitb16")
    assert "--checkpoint" in str(info.value)


def test_unresolvable_hub_fails_fast(monkeypatch):
    import time

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="--checkpoint"):
        load_model("deit_tiny")
    assert time.perf_counter() - start < 10  # no minute of retries


def test_demo_model_is_deterministic():
    a, source = load_model("demo")
    b, _ = load_model("demo")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert source.pretrained is False and source.model_args["img_size"] == 64
