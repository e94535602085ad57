"""One provenance record: for Hub weights (id + revision), a local checkpoint (file name + sha256) and random weights,
the bundle's ``source``, the sliced ``config.json``'s ``base_model``, the loaded model's ``pretrained_cfg`` and the
model card say the same thing, field by field, and nothing that is not true (issue 24)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save, save_file

from snapvit_cli.api import load, load_bundle
from snapvit_cli.elastic.bundle import write_bundle
from snapvit_cli.elastic.records import BundleMetadata
from snapvit_cli.elastic.sliced import read_config
from snapvit_cli.errors import BundleError
from snapvit_cli.fileio import sha256_file
from snapvit_cli.hub.model_card import render_model_card
from snapvit_cli.models.loading import load_model
from snapvit_cli.models.source import ModelSource, Provenance
from snapvit_cli.scoring import score_model
from tests.hub_artifacts import point_client_at, restore_client
from tests.hub_server import FakeHub, Repo, StoredFile

V1 = Path(__file__).parent / "data" / "v1-bundle.safetensors"
HUB_REPO = "tester/tiny-vit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARGS = {"img_size": 32, "depth": 2, "num_classes": 3}
HUB_CONFIG = {
    "architecture": "vit_tiny_patch16_224",
    "num_classes": 3,
    "model_args": {"img_size": 32, "depth": 2},
    "pretrained_cfg": {
        "input_size": [3, 32, 32],
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "crop_pct": 0.9,
        "license": "mit",
    },
}


def _weights(**args) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).state_dict()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, ModelSource, Provenance]]:
    """The model and record ``load_model`` gives for each origin, with the provenance each must carry."""
    root = tmp_path_factory.mktemp("origins")
    out = {}
    checkpoint = root / "finetuned.safetensors"
    save_file(_weights(num_classes=3), str(checkpoint))
    model, source = load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", checkpoint=checkpoint)
    out["checkpoint"] = model, source, Provenance(
        "checkpoint", checkpoint="finetuned.safetensors", checkpoint_sha256=sha256_file(checkpoint)
    )
    model, source = load_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    out["random"] = model, source, Provenance("random")

    mp = pytest.MonkeyPatch()
    with FakeHub() as hub:
        files = {"config.json": json.dumps(HUB_CONFIG).encode(), "model.safetensors": save(_weights(**ARGS))}
        hub.repos[HUB_REPO] = Repo(
            HUB_REPO, False, commits={COMMIT: {k: StoredFile(v, lfs=False) for k, v in files.items()}},
            refs={"main": COMMIT},
        )  # fmt: skip
        try:
            point_client_at(mp, root / "hf-home", hub.url)
            model, source = load_model(f"hf-hub:{HUB_REPO}")
        finally:
            mp.undo()
            restore_client()
    out["hub"] = model, source, Provenance("hub", hf_hub_id=HUB_REPO, revision=COMMIT, license="mit")
    return out


def card_yaml(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("origin", ["hub", "checkpoint", "random"])
def test_bundle_config_pretrained_cfg_and_card_agree(sources, origin, tmp_path):
    model, source, expected = sources[origin]
    assert source.origin == origin and source.provenance == expected

    bundle_path = write_bundle(tmp_path / "b.safetensors", model, source, score_model(model, "magnitude"))
    with safe_open(str(bundle_path), "pt") as f:
        stored = json.loads(f.metadata()["snapvit"])["source"]
    provenance_keys = {"origin", "hf_hub_id", "revision", "license", "checkpoint", "checkpoint_sha256", "pretrained"}
    assert {k: v for k, v in stored.items() if k in provenance_keys} == expected.to_json()
    assert not {"license", "hf_hub_id"} & set(stored["pretrained_cfg"])

    bundle = load_bundle(bundle_path)
    folder = bundle.save_slice(tmp_path / "half", bundle.plan(flops=0.5))
    config = json.loads((folder / "config.json").read_text())
    assert config["base_model"] == {
        "model_id": source.model_id,
        "timm_name": source.timm_name,
        "weights_sha256": source.weights_sha256,
        **expected.to_json(),
    }
    assert not {"license", "hf_hub_id"} & set(config["pretrained_cfg"])

    for loaded in (load(folder), bundle.slice(flops=0.5)):
        cfg = loaded.pretrained_cfg
        assert cfg.get("license") == expected.license and "hf_hub_id" not in cfg and "url" not in cfg

    for record, kind in ((read_config(folder), "sliced"), (bundle.metadata, "bundle")):
        card = render_model_card(record, kind=kind, repo_id="someone/model")
        meta = card_yaml(card)
        assert meta.get("base_model") == expected.hf_hub_id
        assert meta["license"] == (expected.license or "other")
        body = card.split("---\n", 2)[2]
        if origin == "hub":
            assert f"https://huggingface.co/{HUB_REPO}" in body and f"at revision `{COMMIT}`" in body
        else:
            assert "huggingface.co/timm" not in card and "augreg" not in meta.get("base_model", "")
        if origin == "checkpoint":
            assert f"`finetuned.safetensors`, file sha256 `{expected.checkpoint_sha256}`" in body
        if origin == "random":
            assert "Random weights" in body


def test_a_record_cannot_claim_what_its_origin_does_not_have():
    for origin, fields, message in (
        ("checkpoint", {"checkpoint": "a.pth", "hf_hub_id": "timm/x"}, "may not set hf_hub_id"),
        ("checkpoint", {"checkpoint": "a.pth", "license": "mit"}, "may not set license"),
        ("random", {"license": "apache-2.0"}, "may not set license"),
        ("hub", {}, "need their hf_hub_id"),
        ("hub", {"hf_hub_id": "timm/x", "checkpoint": "a.pth"}, "may not set checkpoint"),
        ("checkpoint", {"checkpoint": "/home/alice/a.pth"}, "file name, not a path"),
        ("mystery", {}, "must be one of"),
    ):
        with pytest.raises(BundleError, match=message):
            Provenance(origin, **fields)


def test_old_records_are_read_truthfully_and_written_in_the_new_shape(tmp_path):
    """snapvit <= 0.1 wrote ``pretrained: false`` for random *and* checkpoint weights, and copied timm's Hub id and
    licence into records of weights that did not come from the Hub: such fields are dropped on reading."""
    with safe_open(str(V1), "pt") as f:
        old = json.loads(f.metadata()["snapvit"])
    assert "origin" not in old["source"] and old["source"]["pretrained"] is False
    assert old["source"]["pretrained_cfg"]["hf_hub_id"]  # the random fixture claimed Hub weights
    metadata = BundleMetadata.from_json(old)
    assert metadata.source.provenance == Provenance("random")
    rewritten = metadata.to_json()["source"]
    assert rewritten["origin"] == "random" and "pretrained" not in rewritten
    assert not {"hf_hub_id", "license"} & (set(rewritten) | set(rewritten["pretrained_cfg"]))

    checkpoint = {**old["source"], "checkpoint": "ft.pth", "hf_hub_id": "timm/x", "license": "apache-2.0"}
    source = ModelSource.from_json(checkpoint)
    assert source.provenance == Provenance("checkpoint", checkpoint="ft.pth")
    hub = {**old["source"], "pretrained": True, "hf_hub_id": "timm/x", "license": "apache-2.0", "revision": "main"}
    assert ModelSource.from_json(hub).provenance == Provenance("hub", "timm/x", "main", license="apache-2.0")
    assert load_bundle(V1).source.origin == "random"
    new = {**rewritten, "pretrained": False}
    with pytest.raises(BundleError, match="unknown key pretrained"):
        ModelSource.from_json(new)
    assert re.fullmatch(r"[0-9a-f]{64}", rewritten["weights_sha256"])
